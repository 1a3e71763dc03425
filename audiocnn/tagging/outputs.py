"""What ``tag`` writes: result lines (JSON, CSV) on a stream, and per-window files (the
taggram as ``.npy``, ``.csv`` and a PNG image; embeddings as ``.npy``; the attention over
time steps of a self-attention model as ``.npy`` and a PNG under the taggram) named by
:func:`output_stem`. Files are written atomically.

Beside a song's per-window files, ``<stem>.source.json`` records the song they belong to
(``{"source": "/abs/path/song.mp3"}``); a later run never writes over the files of
another song with the same name, it picks the next free stem (``song-2``) instead."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

import numpy as np

from audiocnn.errors import UsageError
from audiocnn.fileio import atomic_write_bytes, atomic_write_npy, json_text
from audiocnn.tagging.song import TagResult

RESULT_FORMATS = ("json", "csv")


SOURCE_SUFFIX = ".source.json"
_OUTPUT_SUFFIXES = (
    ".taggram.npy",
    ".taggram.csv",
    ".taggram.png",
    ".embeddings.npy",
    ".attention.npy",
    ".attention.png",
    SOURCE_SUFFIX,
)


def _stem_is_free(folder: Path, stem: str, source: str) -> bool:
    """No file of another song is named ``stem`` in ``folder``."""
    try:
        return json.loads((folder / f"{stem}{SOURCE_SUFFIX}").read_bytes()).get("source") == source
    except FileNotFoundError:  # files without a source record: whose they are is unknown
        return not any((folder / f"{stem}{suffix}").exists() for suffix in _OUTPUT_SUFFIXES)
    except (OSError, ValueError, AttributeError):
        return False


def output_stem(path: Path, used: set[str], folders: Sequence[str | os.PathLike] = ()) -> str:
    """A file-name stem for ``path``'s outputs, unique within one run and, in each of
    ``folders``, not one that another song's files already have; it is claimed there by
    writing ``<stem>.source.json``."""
    source = os.path.abspath(path)
    base = path.stem or "audio"
    stem, n = base, 1
    while stem in used or not all(_stem_is_free(Path(f), stem, source) for f in folders):
        n += 1
        stem = f"{base}-{n}"
    used.add(stem)
    for folder in folders:
        atomic_write_bytes(Path(folder) / f"{stem}{SOURCE_SUFFIX}", (json_text({"source": source}) + "\n").encode())
    return stem


def write_taggram(result: TagResult, out_dir: str | os.PathLike, stem: str, *, image: bool = True) -> list[Path]:
    """Per-window scores as ``<stem>.taggram.npy`` and ``.csv`` plus a PNG image."""
    if result.taggram is None:
        raise UsageError("write_taggram needs a result made with taggram=True")
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
    name = os.fsencode(Path(result.path).name).decode("utf-8", "replace")  # a name may not be UTF-8
    ax.set_title(f"{name} - {result.model} ({result.activation} scores)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01)


def write_embeddings(result: TagResult, out_dir: str | os.PathLike, stem: str) -> Path:
    """Penultimate features per window as ``<stem>.embeddings.npy`` (windows x D)."""
    if result.embeddings is None:
        raise UsageError("write_embeddings needs a result made with embeddings=True")
    path = Path(out_dir) / f"{stem}.embeddings.npy"
    atomic_write_npy(path, result.embeddings)
    return path


def write_attention(result: TagResult, out_dir: str | os.PathLike, stem: str) -> list[Path]:
    """The attention over time steps of every window (a self-attention model's rollout
    from its [CLS] position, ``(windows, T)`` float32, each row summing to 1; step ``j``
    covers the ``j``-th of ``T`` equal parts of the window) as ``<stem>.attention.npy``, and
    ``.attention.png``: the taggram, and under it on the same time axis every window's
    attention."""
    if result.attention is None or result.taggram is None:
        raise UsageError("write_attention needs a result made with attention=True")
    out = Path(out_dir)
    npy, png = out / f"{stem}.attention.npy", out / f"{stem}.attention.png"
    atomic_write_npy(npy, result.attention)
    atomic_write_bytes(png, _attention_png(result))
    return [npy, png]


def _attention_png(result: TagResult) -> bytes:
    import matplotlib  # deferred: matplotlib, only when an image is asked for

    matplotlib.use("Agg")
    from matplotlib.figure import Figure  # deferred: as above

    weights = result.attention
    fig = Figure(figsize=(10, min(max(4.5, 0.18 * result.taggram.shape[1] + 3.0), 32.0)))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    draw_taggram(fig, top, result)
    top.set_xlabel("")
    steps = weights.shape[1]
    for start, row in zip(result.window_starts, weights):
        t = float(start) + (np.arange(steps) + 0.5) * result.window_seconds / steps
        bottom.fill_between(t, row, step="mid", alpha=0.6, color="tab:red", lw=0)
    bottom.set_ylim(bottom=0)
    bottom.set_ylabel("attention", fontsize=8)
    bottom.set_xlabel("time (s)")
    bottom.set_title(f"attention of the tag decision over each window's {steps} time steps", fontsize=8)
    fig.colorbar(top.images[0], ax=bottom, fraction=0.03, pad=0.01).ax.set_visible(False)  # align with the taggram
    fig.tight_layout()
    bio = io.BytesIO()
    fig.savefig(bio, format="png", dpi=100)
    return bio.getvalue()


#: The per-window files a run writes, by the :class:`audiocnn.tagging.options.TagOptions`
#: field that asks for them: ``(result, folder, stem) -> the file to report``.
PER_WINDOW_WRITERS: dict[str, Callable[[TagResult, str | os.PathLike, str], Path]] = {
    "taggram": lambda result, folder, stem: write_taggram(result, folder, stem)[0],
    "embeddings": write_embeddings,
    "attention": lambda result, folder, stem: write_attention(result, folder, stem)[0],
}


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
            raise UsageError(f"fmt must be one of {', '.join(RESULT_FORMATS)}, got {fmt!r}", arguments=("fmt",))
        self.stream, self.fmt = stream, fmt
        self._header_done = False

    def write(self, result: TagResult, files: Mapping[str, str | os.PathLike] | None = None) -> None:
        if self.fmt == "json":
            extra = {k: str(v) for k, v in (files or {}).items()}
            self.stream.write(json_text({**result.to_dict(), **extra}) + "\n")
            return
        if not self._header_done:
            self.stream.write(results_csv_header(result.labels) + "\n")
            self._header_done = True
        self.stream.write(result_csv_row(result) + "\n")
