"""`audiocnn tag`: tag whole songs with a pretrained model or any trained checkpoint.

Parsing and printing only; the work is :class:`audiocnn.inference.Tagger`. torch and the
model are imported inside the command so that ``audiocnn --help`` stays fast.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from audiocnn.cli import common
from audiocnn.cli.main import app
from audiocnn.errors import AudiocnnError, UsageError

FORMATS = ("table", "json", "csv")
DEFAULT_TABLE_TOP_K = 5


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
    tags = [(common.printable(t), s) for t, s in result.tags[:top_k]]
    width = max([len(t) for t, _ in tags] + [3])
    lines = [head, f"  {'#':>2}  {'tag':<{width}}  score"]
    for i, (t, s) in enumerate(tags, 1):
        lines.append(f"  {i:>2}  {t:<{width}}  {s:.3f}")
    return "\n".join(lines) + "\n"


@app.command("tag")
def tag(
    paths: List[str] = typer.Argument(..., help="Audio files, folders (searched recursively) or globs.", show_default=False),
    model: str = typer.Option(
        "musicnn-mtt", "--model", "-m", help="Pretrained model name (see `audiocnn pretrained list`) or a .safetensors checkpoint."
    ),
    top_k: Optional[int] = typer.Option(
        None, "--top-k", "-k", help="Tags to show per file [default: 5 for table, all for json].", show_default=False
    ),
    fmt: str = typer.Option("table", "--format", "-f", help="table, json (one object per line per file) or csv (one row per file, one column per label)."),
    window: Optional[float] = typer.Option(None, "--window", help="Window length in seconds [default: the model's input length].", show_default=False),
    hop: Optional[float] = typer.Option(None, "--hop", help="Hop between windows in seconds [default: the window, no overlap].", show_default=False),
    aggregate: str = typer.Option("mean", "--aggregate", help="How window scores combine per song: mean or max."),
    taggram_dir: Optional[Path] = typer.Option(
        None, "--taggram", help="Write per-window scores (.npy, .csv) and a taggram image (.png) per file here.", show_default=False
    ),
    embeddings_dir: Optional[Path] = typer.Option(
        None, "--embeddings", help="Write penultimate features per window (.npy) per file here.", show_default=False
    ),
    device: str = typer.Option("auto", "--device", help="auto (cuda, then mps, then cpu), cpu, cuda or mps."),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", help="Windows per forward pass [default: 1 on CPU, 32 on GPU].", show_default=False
    ),
    framing: str = typer.Option(
        "auto", "--framing", help="song: cut the whole-song log-mel into patches (mel models, musicnn's way); window: run the front-end per window; auto: song where possible."
    ),
    chunks: Optional[int] = typer.Option(
        None, "--chunks", help="Score N windows spread evenly over each file (the papers' protocol, = `evaluate --eval-chunks N`) instead of consecutive windows.", show_default=False
    ),
) -> None:
    """Tag whole songs: top tags per file, optionally the taggram over time and embeddings."""
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if top_k is not None and top_k < 1:
        raise UsageError(f"--top-k must be >= 1, got {top_k}")
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    for opt, folder in (("--taggram", taggram_dir), ("--embeddings", embeddings_dir)):
        if folder is not None:  # before the model loads: fail in a second, not after it
            common.writable_dir(opt, folder)
    t0 = time.perf_counter()
    from audiocnn import inference  # torch: only once there is work to do

    files, problems = inference.expand_audio_paths(paths)
    for line in problems:
        _progress(f"error: {line}")
    if not files:
        raise UsageError("nothing to tag: none of the given paths is an audio file or holds one")

    tagger = inference.Tagger(model, device=device, batch_size=batch_size, data_dir=common.state.data_dir)
    # Validate window/hop/aggregate once, before the first file.
    tagger.plan(window, hop, framing)
    if aggregate not in inference.AGGREGATES:
        raise UsageError(f"--aggregate must be one of {', '.join(inference.AGGREGATES)}, got {aggregate!r}")
    _progress(f"model {tagger.name} ({tagger.task}, {len(tagger.labels)} labels) loaded in "
              f"{time.perf_counter() - t0:.1f} s; tagging {len(files)} file{'s' if len(files) != 1 else ''}")

    failed = len(problems)
    used_stems: set[str] = set()
    header_done = False
    for i, (path, res) in enumerate(
        tagger.tag_files(
            files,
            window=window,
            hop=hop,
            aggregate=aggregate,
            top_k=top_k if fmt != "table" else (top_k or DEFAULT_TABLE_TOP_K),
            return_taggram=taggram_dir is not None,
            return_embeddings=embeddings_dir is not None,
            framing=framing,
            chunks=chunks,
        ),
        1,
    ):
        if isinstance(res, AudiocnnError):
            failed += 1
            _progress(f"error: {res}")
            continue
        extra: dict[str, str] = {}
        if taggram_dir is not None or embeddings_dir is not None:
            stem = inference.output_stem(path, used_stems)
            if taggram_dir is not None:
                written = inference.write_taggram(res, taggram_dir, stem)
                extra["taggram"] = str(written[0])
            if embeddings_dir is not None:
                extra["embeddings"] = str(inference.write_embeddings(res, embeddings_dir, stem))
        if fmt == "json":
            import json

            sys.stdout.write(json.dumps({**res.to_dict(), **extra}, ensure_ascii=False) + "\n")
        elif fmt == "csv":
            if not header_done:
                sys.stdout.write(inference.results_csv_header(res.labels) + "\n")
                header_done = True
            sys.stdout.write(inference.result_csv_row(res) + "\n")
        else:
            sys.stdout.write(_table(res, top_k or DEFAULT_TABLE_TOP_K) + "\n")
        sys.stdout.flush()
        _progress(f"[{i}/{len(files)}] {path}: {res.num_windows} windows, {res.duration:.1f} s")
    _progress(_summary(len(files) + len(problems), failed, time.perf_counter() - t0))
    if failed:
        raise typer.Exit(1)


def _summary(total: int, failed: int, seconds: float) -> str:
    """``tagged N of TOTAL files``: missing and undecodable inputs count in the total, so
    tagged + failed is always the total."""
    return (f"tagged {total - failed} of {total} file{'s' if total != 1 else ''} in {seconds:.1f} s"
            + (f"; {failed} failed" if failed else ""))
