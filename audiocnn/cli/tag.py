"""`audiocnn tag`: tag whole songs with a pretrained model or any trained checkpoint.

Parsing and printing only; the work is :func:`audiocnn.tagging.tag_command`, its options
one :class:`audiocnn.tagging.options.TagOptions` (checked there, once; errors name the
library's arguments, which :func:`audiocnn.cli.common.flags` shows as these flags). torch
and the model are imported inside the command so that ``audiocnn --help`` stays fast.
"""

from __future__ import annotations

import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from audiocnn.cli import common
from audiocnn.cli.app import app
from audiocnn.constants import DEFAULT_MODEL, Aggregate, Framing
from audiocnn.datasets.manifest import readable_label
from audiocnn.errors import UsageError

DEFAULT_TABLE_TOP_K = 5


class Backend(str, Enum):
    auto = "auto"
    torch = "torch"
    onnxruntime = "onnxruntime"


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


def _progress(message: str) -> None:
    # Plain write, not rich: file names may contain [brackets] that rich reads as markup;
    # control characters in them are escaped so one message stays one line.
    sys.stderr.write(common.printable(message) + "\n")
    sys.stderr.flush()


def _table(result, top_k: int) -> str:
    kind = (
        "softmax probabilities (single-label: they sum to 1 per window)"
        if result.activation == "softmax"
        else "sigmoid scores (multi-label: independent per tag)"
    )
    note = ", zero-padded: shorter than one window" if result.padded else ""
    head = (
        f"{common.printable(result.path)}  [{result.duration:.1f} s, {result.num_windows} window"
        f"{'s' if result.num_windows != 1 else ''} of {result.window_seconds:.2f} s{note}; "
        f"{result.aggregate} of {kind}; model {common.printable(result.model)}]"
    )
    tags = [(common.printable(readable_label(t)), s) for t, s in result.tags[:top_k]]
    width = max([len(t) for t, _ in tags] + [3])
    lines = [head, f"  {'#':>2}  {'tag':<{width}}  score"]
    for i, (t, s) in enumerate(tags, 1):
        lines.append(f"  {i:>2}  {t:<{width}}  {s:.3f}")
    predicted = ", ".join(common.printable(readable_label(t)) for t in result.predicted) or "(none)"
    lines.append(f"  predicted: {predicted}  [{result.decision}]")
    return "\n".join(lines) + "\n"


# The options of `audiocnn tag`, declared once each.
Paths = Annotated[
    Optional[list[str]],
    typer.Argument(help="Audio files, folders (searched recursively) or globs.", show_default=False),
]
ModelName = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Pretrained model name (see `audiocnn pretrained list`), a .safetensors checkpoint or a run folder "
        "of `audiocnn train`.",
    ),
]
TopK = Annotated[
    Optional[int],
    typer.Option(
        "--top-k", "-k", show_default=False, help="Tags to show per file [default: 5 for table, all for json]."
    ),
]
Format = Annotated[
    OutputFormat,
    typer.Option(
        "--format",
        "-f",
        help="table, json (one object per line per file) or csv (one row per file, one column per label).",
    ),
]
Window = Annotated[
    Optional[float],
    typer.Option(
        "--window",
        show_default=False,
        help="Window length in seconds [default: the model's input length].",
    ),
]
Hop = Annotated[
    Optional[float],
    typer.Option(
        "--hop",
        show_default=False,
        help="Hop between windows in seconds [default: the window, no overlap].",
    ),
]
AggregateOpt = Annotated[
    Aggregate, typer.Option("--aggregate", help="How window scores combine per song: mean or max.")
]
TaggramDir = Annotated[
    Optional[Path],
    typer.Option(
        "--taggram",
        show_default=False,
        help="Write per-window scores (.npy, .csv) and a taggram image (.png) per file here.",
    ),
]
EmbeddingsDir = Annotated[
    Optional[Path],
    typer.Option(
        "--embeddings", show_default=False, help="Write penultimate features per window (.npy) per file here."
    ),
]
AttentionDir = Annotated[
    Optional[Path],
    typer.Option(
        "--attention",
        show_default=False,
        help="Self-attention models (cnnsa): write per window which time steps the tag decision attended to "
        "(.npy, windows x steps) and a PNG of it under the taggram, per file, here.",
    ),
]
Device = Annotated[str, typer.Option("--device", help="auto (cuda, then mps, then cpu), cpu, cuda or mps.")]
BatchSize = Annotated[
    Optional[int],
    typer.Option("--batch-size", show_default=False, help="Windows per forward pass [default: 1 on CPU, 32 on GPU]."),
]
FramingOpt = Annotated[
    Framing,
    typer.Option(
        "--framing",
        help="song: cut the whole-song log-mel into patches (mel models, musicnn's way); "
        "window: run the front-end per window; auto: song where possible.",
    ),
]
Chunks = Annotated[
    Optional[int],
    typer.Option(
        "--chunks",
        show_default=False,
        help="Score N windows spread evenly over each file (the papers' protocol, "
        "= `evaluate --eval-chunks N`) instead of consecutive windows.",
    ),
]
Tail = Annotated[
    str,
    typer.Option(
        "--tail",
        help="end: after the last full window one more ends at the end of the file, so every second counts; "
        "drop: a tail shorter than a window is not scored (musicnn's way).",
    ),
]
Threshold = Annotated[
    Optional[float],
    typer.Option(
        "--threshold",
        show_default=False,
        help="Predict every tag scoring at least this (multi-label) [default: the checkpoint's per-tag "
        "thresholds, 0.5 where it has none].",
    ),
]

Output = Annotated[
    Optional[Path],
    typer.Option(
        "--output",
        "-o",
        show_default=False,
        help="Append one record per file to this results file (.jsonl or .csv, by suffix) as each file "
        "finishes; run again to resume: files already in it (same size, modification time, model and "
        "options) are skipped.",
    ),
]
Jobs = Annotated[
    int,
    typer.Option(
        "--jobs",
        "-j",
        help="Worker processes that decode and resample while the model runs; on a CPU also how many "
        "batches run at once, each on its share of the threads (1: decode in this process, one batch at a time).",
    ),
]
BackendOpt = Annotated[
    Backend,
    typer.Option(
        "--backend",
        help="auto: ONNX Runtime on a machine without a GPU when onnxruntime is installed (no torch loaded; "
        "the model is exported once into the cache folder), else torch; torch; or onnxruntime (CPU). "
        "--embeddings and --attention need torch.",
    ),
]
Force = Annotated[bool, typer.Option("--force", help="With --output: tag again files the results file already holds.")]
ShardOpt = Annotated[
    Optional[str],
    typer.Option(
        "--shard",
        show_default=False,
        help="With --output: tag only share K (from 0) of N of the files, into its own part file next to the "
        "output (a job array's task; under torchrun RANK/WORLD_SIZE pick it); the last to finish merges the parts.",
    ),
]
Merge = Annotated[
    Optional[Path],
    typer.Option(
        "--merge", show_default=False, help="Merge the part files of --shard runs into this results file, and stop."
    ),
]


@app.command("tag")
def tag(
    paths: Paths = None,
    model: ModelName = DEFAULT_MODEL,
    top_k: TopK = None,
    fmt: Format = OutputFormat.table,
    window: Window = None,
    hop: Hop = None,
    aggregate: AggregateOpt = Aggregate.mean,
    taggram_dir: TaggramDir = None,
    embeddings_dir: EmbeddingsDir = None,
    attention_dir: AttentionDir = None,
    device: Device = "auto",
    batch_size: BatchSize = None,
    framing: FramingOpt = Framing.auto,
    chunks: Chunks = None,
    threshold: Threshold = None,
    tail: Tail = "end",
    output: Output = None,
    jobs: Jobs = 1,
    force: Force = False,
    backend: BackendOpt = Backend.auto,
    shard: ShardOpt = None,
    merge: Merge = None,
) -> None:
    """Tag whole songs: top tags per file, optionally the taggram over time and embeddings.

    With --output, tag a whole library into one resumable results file."""
    if merge is not None:
        return _merge(merge, paths)
    picked = _checked_run(paths, output, fmt, shard)
    outputs = {"taggram": taggram_dir, "embeddings": embeddings_dir, "attention": attention_dir}
    outputs = {kind: folder for kind, folder in outputs.items() if folder is not None}
    for kind, folder in outputs.items():  # before the model loads: fail in a second, not after it
        common.writable_dir(f"--{kind}", folder)
    started = time.perf_counter()
    from audiocnn.tagging import ResultWriter, TagOptions, tag_command  # deferred: torch, only once there is work to do
    from audiocnn.tagging.command import usable_jobs  # deferred: as above

    table_k = DEFAULT_TABLE_TOP_K if top_k is None else top_k
    writer = None if fmt is OutputFormat.table else ResultWriter(sys.stdout, fmt.value)
    with common.flags():
        options = TagOptions(
            window=window,
            hop=hop,
            aggregate=aggregate.value,
            top_k=table_k if writer is None and output is None else top_k,
            framing=framing.value,
            chunks=chunks,
            threshold=threshold,
            tail=tail,
        )
        if jobs >= 1 and usable_jobs(jobs) < jobs:
            _progress(
                f"--jobs {jobs}: using {usable_jobs(jobs)}, the CPU cores this process may use "
                "(more decoders only take turns)"
            )
            jobs = usable_jobs(jobs)
        summary = tag_command(
            paths,
            options,
            model=model,
            device=device,
            batch_size=batch_size,
            backend=backend.value,
            outputs=outputs,
            output=output,
            force=force,
            jobs=jobs,
            on_result=None if output is not None else _shower(writer, fmt, table_k),
            report=_progress,
            started=started,
            show_progress=output is not None and sys.stderr.isatty(),
            shard=picked,
        )
    if summary.skipped:
        _progress(f"--force tags the {summary.skipped} skipped file{'s' if summary.skipped != 1 else ''} again")
    if summary.failed:
        raise typer.Exit(1)


def _checked_run(paths: list[str] | None, output: Path | None, fmt: OutputFormat, text: str | None):
    """The run's options checked before the model loads; returns the shard: --shard K/N, or
    torchrun's RANK of WORLD_SIZE, or None for one process."""
    from audiocnn.shards import parse_shard, shard_from_env  # deferred: only for a library run

    if not paths:
        raise typer.BadParameter("give the audio files, folders or globs to tag", param_hint="'PATHS...'")
    if output is not None and fmt is not OutputFormat.table:
        raise UsageError(
            f"--format {fmt.value} prints to stdout; with --output the suffix of {output} picks the format"
        )
    shard = parse_shard(text) if text is not None else shard_from_env()
    if shard is not None and output is None:
        how = f"--shard {text}" if text is not None else f"torchrun ({shard.count} processes)"
        raise UsageError(f"{how}: each process writes a part of a results file, so it needs --output FILE.jsonl")
    return shard


def _merge(output: Path, paths: list[str]) -> None:
    """tag --merge FILE: the part files next to FILE merged into it."""
    if paths:
        raise UsageError(f"--merge {output} merges part files only: drop the paths to tag ({paths[0]}, ...)")
    from audiocnn.tagging.parts import find_parts, merge_parts  # deferred: torch

    parts = find_parts(output)
    if not parts:
        raise UsageError(f"--merge {output}: no part files next to it ({output.stem}.part-K-of-N{output.suffix})")
    merge_parts(output, parts, _progress)


def _shower(writer, fmt: OutputFormat, table_k: int):
    """What prints each tagged file: a table, or a JSON / CSV line."""
    if fmt is OutputFormat.csv and hasattr(sys.stdout, "reconfigure"):
        # a file name that is not UTF-8 goes out as its own bytes, as in a .csv results file
        sys.stdout.reconfigure(errors="surrogateescape")

    def show(outcome) -> None:
        if writer is None:
            sys.stdout.write(_table(outcome.result, table_k) + "\n")
        else:
            writer.write(outcome.result, outcome.files)
        sys.stdout.flush()

    return show
