"""What ``tag`` writes: result lines (JSON, CSV) on a stream, and per-window files (the
taggram as ``.npy``, ``.csv`` and a PNG image; embeddings as ``.npy``) named by
:func:`output_stem`. Files are written atomically."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

from audiocnn.errors import UsageError
from audiocnn.fileio import atomic_write_bytes, atomic_write_npy
from audiocnn.tagging.tagger import TagResult

RESULT_FORMATS = ("json", "csv")


def output_stem(path: Path, used: set[str]) -> str:
    """A file-name stem for ``path``'s outputs, unique within one run."""
    base = path.stem or "audio"
    stem, n = base, 1
    while stem in used:
        n += 1
        stem = f"{base}-{n}"
    used.add(stem)
    return stem


def write_taggram(result: TagResult, out_dir: str | os.PathLike, stem: str, *, image: bool = True) -> list[Path]:
    """Per-window scores as ``<stem>.taggram.npy`` and ``.csv`` plus a PNG image."""
    if result.taggram is None:
        raise UsageError("write_taggram needs a result made with return_taggram=True")
    out = Path(out_dir)
    tg = result.taggram
    written = []
    npy = out / f"{stem}.taggram.npy"
    atomic_write_npy(npy, tg)
    written.append(npy)
    lines = [",".join(["start_s", "end_s", *(_csv_field(x) for x in result.labels)])]
    for i, row in enumerate(tg):
        start = float(result.window_starts[i])
        cells = [f"{start:.3f}", f"{start + result.window_seconds:.3f}", *(f"{v:.6f}" for v in row)]
        lines.append(",".join(cells))
    csv_path = out / f"{stem}.taggram.csv"
    atomic_write_bytes(csv_path, ("\n".join(lines) + "\n").encode())
    written.append(csv_path)
    if image:
        png = out / f"{stem}.taggram.png"
        atomic_write_bytes(png, _taggram_png(result))
        written.append(png)
    return written


def _taggram_png(result: TagResult) -> bytes:
    import matplotlib  # deferred: matplotlib, only when a taggram image is asked for

    matplotlib.use("Agg")
    from matplotlib.figure import Figure  # deferred: as above

    height = min(max(3.0, 0.18 * result.taggram.shape[1] + 1.5), 30.0)
    fig = Figure(figsize=(10, height))
    draw_taggram(fig, fig.add_subplot(1, 1, 1), result)
    fig.tight_layout()
    bio = io.BytesIO()
    fig.savefig(bio, format="png", dpi=100)
    return bio.getvalue()


def draw_taggram(fig, ax, result: TagResult) -> None:
    """The taggram (labels over time, scores as colour) on a matplotlib axis of ``fig``."""
    tg = result.taggram
    n_labels = tg.shape[1]
    end = float(result.window_starts[-1]) + result.window_seconds if len(tg) else 0.0
    im = ax.imshow(
        tg.T,
        aspect="auto",
        origin="lower",
        interpolation="nearest",
        cmap="viridis",
        vmin=0.0,
        vmax=1.0,
        extent=(0.0, end, -0.5, n_labels - 0.5),
    )
    if n_labels <= 100:
        ax.set_yticks(range(n_labels))
        ax.set_yticklabels(result.labels, fontsize=6 if n_labels > 30 else 8)
    ax.set_xlabel("time (s)")
    ax.set_title(f"{Path(result.path).name} - {result.model} ({result.activation} scores)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01)


def write_embeddings(result: TagResult, out_dir: str | os.PathLike, stem: str) -> Path:
    """Penultimate features per window as ``<stem>.embeddings.npy`` (windows x D)."""
    if result.embeddings is None:
        raise UsageError("write_embeddings needs a result made with return_embeddings=True")
    path = Path(out_dir) / f"{stem}.embeddings.npy"
    atomic_write_npy(path, result.embeddings)
    return path


def _csv_field(text: str) -> str:
    if any(ch in text for ch in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def results_csv_header(labels: Sequence[str]) -> str:
    """``path,duration,windows,predicted`` then one score column per label; ``predicted``
    holds the decided tags joined by ``;``."""
    return ",".join(["path", "duration", "windows", "predicted", *(_csv_field(x) for x in labels)])


def result_csv_row(result: TagResult) -> str:
    cells = [_csv_field(result.path), f"{result.duration:.3f}", str(result.num_windows)]
    cells.append(_csv_field(";".join(result.predicted)))
    cells += [f"{float(v):.6f}" for v in result.scores]
    return ",".join(cells)


class ResultWriter:
    """Results as machine-readable lines on ``stream``, one per song as it is tagged:
    ``json`` (one object per line with its ``predicted`` tags, plus the paths of files
    written for it) or ``csv`` (a header before the first row, a ``predicted`` column, one
    score column per label)."""

    def __init__(self, stream: TextIO, fmt: str) -> None:
        if fmt not in RESULT_FORMATS:
            raise UsageError(f"fmt must be one of {', '.join(RESULT_FORMATS)}, got {fmt!r}")
        self.stream, self.fmt = stream, fmt
        self._header_done = False

    def write(self, result: TagResult, files: Mapping[str, str | os.PathLike] | None = None) -> None:
        if self.fmt == "json":
            extra = {k: str(v) for k, v in (files or {}).items()}
            self.stream.write(json.dumps({**result.to_dict(), **extra}, ensure_ascii=False) + "\n")
            return
        if not self._header_done:
            self.stream.write(results_csv_header(result.labels) + "\n")
            self._header_done = True
        self.stream.write(result_csv_row(result) + "\n")
