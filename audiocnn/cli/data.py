"""Dataset commands: datasets, prepare, verify, info (parsing and printing only)."""

from __future__ import annotations

import sys
import textwrap
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from audiocnn import pipeline
from audiocnn.cli import common
from audiocnn.cli.app import app
from audiocnn.constants import TASKS
from audiocnn.datasets import dataset_info, datasets_overview, verify_dataset
from audiocnn.datasets.info import excluded_summary
from audiocnn.datasets.manifest import readable_label
from audiocnn.splits import small_split_notes

#: ``prepare --features``: which feature stores to extract after preparing
Features = Enum("Features", [(k, k) for k in pipeline.FEATURE_CHOICES], type=str)
#: ``prepare --task``
Task = Enum("Task", [(t, t) for t in TASKS], type=str)
#: The flags of the library arguments whose flag is not ``--`` and their name with dashes.
LABELS_HELP = "folder: CSV with path,labels[,split]; labels ';'-separated. Looked for here, then in --source."
PREPARE_FLAGS = {"labels_file": "--labels", "dataset_name": "--name", "jobs": "-j"}


@app.command("datasets")
def datasets(
    fmt: common.TableOrJson = typer.Option(common.TableOrJson.table, "--format", help="table or json."),
) -> None:
    """List known datasets and whether they are prepared under --data-dir."""
    rows = datasets_overview(common.state.data_dir)
    if fmt is common.TableOrJson.json:
        common.print_json(rows)
        return
    out = common.out_console()
    out.print(f"datasets (data dir: {Path(common.state.data_dir).absolute()})", highlight=False)
    # plain columns that fit 80 characters (a pipe, a narrow terminal): no box, nothing cut
    table = Table(box=None, padding=(0, 1), pad_edge=False, show_edge=False)
    for col in ("name", "task", "classes", "download", "prepared"):
        table.add_column(col, no_wrap=True, justify="right" if col == "classes" else "left")
    for r in rows:
        disk = f" ({r['size_on_disk_human']})" if r["size_on_disk_human"] else ""
        table.add_row(
            r["name"],
            r["task"].replace("single/multi-label", "single/multi"),
            "-" if r["classes"] is None else str(r["classes"]),
            r["download_size"] or "-",
            ("yes" if r["prepared"] else "no") + disk,
        )
    out.print(table)
    # One entry per family of datasets (the FMA subsets share theirs): license, then citation.
    cited: dict[str, list[str]] = {}
    for r in rows:
        if r.get("citation"):
            cited.setdefault(f"license: {r['license_short']}. {r['citation']}", []).append(r["name"])
    if cited:
        out.print("licenses and citations:", highlight=False)
        for text, names in cited.items():
            wrapped = textwrap.fill(
                f"{', '.join(names)}: {text}",
                width=max(40, out.width),
                initial_indent="  ",
                subsequent_indent="    ",
                break_on_hyphens=False,
                break_long_words=False,
            )
            out.print(wrapped, highlight=False, markup=False)


@app.command("prepare")
def prepare(
    dataset: str = typer.Argument(..., help="Dataset name (see `audiocnn datasets`)."),
    source: Optional[list[str]] = typer.Option(
        None,
        "--source",
        help="Local archive, folder holding the archives (or, for `folder` and `msd`, your audio), or a mirror "
        "base URL. Repeatable.",
    ),
    split_scheme: Optional[str] = typer.Option(
        None,
        "--split-scheme",
        help="e.g. fault-filtered|random (gtzan), standard|all-clips (mtat), split-0..split-4 (mtg-jamendo*), "
        "won2020|choi2017 (msd).",
    ),
    task: Optional[Task] = typer.Option(None, "--task", help="single-label or multi-label (fma, folder)."),
    labels: Optional[str] = typer.Option(None, "--labels", help=LABELS_HELP),
    name: Optional[str] = typer.Option(
        None, "--name", help="folder: name of the prepared dataset (folder under --data-dir)."
    ),
    skip_checksum: bool = typer.Option(
        False, "--skip-checksum", help="Use files whose checksum does not match (warns)."
    ),
    jobs: Optional[int] = typer.Option(
        None, "-j", "--jobs", help="Parallel processes for checking clips (default: all CPUs)."
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Extract and rebuild the manifest even if already prepared; folder: replace a --name prepared from "
        "another --source.",
    ),
    features: Features = typer.Option(
        Features.none, "--features", help="Also extract features: waveform, mel, both or none."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of random/stratified splits."),
    max_clips: Optional[int] = typer.Option(
        None,
        "--max-clips",
        help="Fetch only what N clips need, keeping the official splits (zips: chosen members by HTTP Range; "
        "mtg-jamendo: the fewest tars). Run again without it to complete the dataset.",
    ),
    variant: Optional[str] = typer.Option(
        None, "--variant", help="Published form of the audio: audio (default) or audio-low (mtg-jamendo)."
    ),
    download_missing: bool = typer.Option(
        False,
        "--download-missing",
        help="Download the files a local --source lacks (else naming them is an error).",
    ),
    fmt: common.TableOrJson = typer.Option(
        common.TableOrJson.table, "--format", help="table or json (the `info` object)."
    ),
) -> None:
    """Download (or take from --source), verify, extract a dataset and write its manifest."""
    with common.flags(**PREPARE_FLAGS):
        manifest = pipeline.prepare(
            dataset,
            common.state.data_dir,
            progress=sys.stderr.isatty(),
            source=source or None,
            split_scheme=split_scheme,
            skip_checksum=skip_checksum,
            jobs=jobs,
            force=force,
            task=task.value if task is not None else None,
            labels_file=labels,
            dataset_name=name,
            features=features.value,
            seed=seed,
            max_clips=max_clips,
            variant=variant,
            download_missing=download_missing,
        )
    _warn_small_splits(manifest)
    if fmt is common.TableOrJson.json:
        common.print_json(manifest.info())
        return
    _print_info(manifest.info(), short=True)


def _warn_small_splits(manifest) -> None:
    """Say when a validation or test split is too small to trust, and what to do."""
    for note in small_split_notes(manifest.clips, manifest.labels):
        common.log(f"warning: {manifest.name}: {note}; use a larger split (--split-scheme) or cross-validation")


@app.command("verify")
def verify(
    dataset: str = typer.Argument(..., help="A prepared dataset (name under --data-dir)."),
    full: bool = typer.Option(False, "--full", help="Decode every clip and compare frame counts (slow)."),
    jobs: Optional[int] = typer.Option(None, "-j", "--jobs", help="Parallel processes (default: all CPUs)."),
    fmt: common.TableOrJson = typer.Option(common.TableOrJson.table, "--format", help="table or json."),
) -> None:
    """Re-check every file of a prepared dataset; report missing and corrupt files. Exit 1 if any."""
    with common.flags(jobs="-j"):
        report = verify_dataset(common.state.data_dir, dataset, jobs=jobs, full=full, progress=sys.stderr.isatty())
    if fmt is common.TableOrJson.json:
        common.print_json(report.to_dict())
    else:
        out = common.out_console()
        out.print(
            f"{dataset}: checked {report.checked} clips ({'full decode' if full else 'size + header'})", highlight=False
        )
        out.print(f"missing: {len(report.missing)}", highlight=False)
        for m in report.missing:
            out.print(f"  {m['id']}  {m['path']}", highlight=False)
        out.print(f"corrupt: {len(report.corrupt)}", highlight=False)
        for c in report.corrupt:
            out.print(f"  {c['id']}  {c['path']}: {c['reason']}", highlight=False)
        out.print("ok" if report.ok else "FAILED", highlight=False)
    if not report.ok:
        common.log(f"{dataset}: {len(report.missing)} missing and {len(report.corrupt)} corrupt files; {report.fix}")
        raise typer.Exit(code=1)


@app.command("info")
def info(
    dataset: str = typer.Argument(..., help="A prepared dataset (name under --data-dir)."),
    fmt: common.TableOrJson = typer.Option(common.TableOrJson.table, "--format", help="table or json."),
) -> None:
    """Show task, labels, clip counts per split and excluded clips of a prepared dataset."""
    data = dataset_info(common.state.data_dir, dataset)
    if fmt is common.TableOrJson.json:
        common.print_json(data)
        return
    _print_info(data, short=False)


def _print_info(data: dict, *, short: bool) -> None:
    out = common.out_console()
    splits = data["splits"]
    total = sum(splits.values())
    out.print(f"name:     {data['name']}", highlight=False)
    out.print(f"task:     {data['task']}", highlight=False)
    out.print(f"labels:   {len(data['labels'])}: {', '.join(map(readable_label, data['labels']))}", highlight=False)
    out.print(
        f"clips:    {total} (train {splits.get('train', 0)}, valid {splits.get('valid', 0)}, "
        f"test {splits.get('test', 0)})",
        highlight=False,
    )
    partial = data.get("partial")
    if partial:
        listed = partial.get("listed", {})
        of = ", ".join(f"{s} {partial['clips'].get(s, 0)} of {listed.get(s, '?')}" for s in ("train", "valid", "test"))
        out.print(
            f"partial:  --max-clips {partial['max_clips']}: {of}; run prepare again without --max-clips to complete it",
            highlight=False,
        )
    excluded = data["excluded"]
    out.print(f"excluded: {len(excluded)}", highlight=False)
    for reason, n in excluded_summary(excluded):
        out.print(f"  {n:6d}  {reason}", highlight=False)
    if not short:
        shown = excluded[:20]
        for e in shown:
            out.print(f"  {e['id']}: {e['reason']}", highlight=False)
        if len(excluded) > len(shown):
            out.print(f"  ... {len(excluded) - len(shown)} more (--format json lists all)", highlight=False)
        _print_label_counts(data["label_counts"])


def _print_label_counts(counts: dict[str, dict[str, int]]) -> None:
    """Clips per label and split: whether a split can tell a class apart at all."""
    table = Table(box=None, padding=(0, 1), pad_edge=False, show_edge=False)
    table.add_column("clips per label", no_wrap=True)
    for split in ("train", "valid", "test"):
        table.add_column(split, justify="right", no_wrap=True)
    for label, n in counts.items():
        table.add_row(common.printable(readable_label(label)), *(str(n.get(s, 0)) for s in ("train", "valid", "test")))
    common.out_console().print(table)
