"""``tag --attention DIR``: which time steps a self-attention model's decision attended to.

For a model with a Transformer back-end over time (``cnnsa``), each scored window yields
the attention rollout from its [CLS] position to each time step of the window
(:func:`audiocnn.models.attention.attention_rollout`): ``T`` weights summing to 1, step
``j`` covering the ``j``-th of ``T`` equal parts of the window. Per tagged file this writes

- ``<stem>.attention.npy``: ``(windows, T)`` float32, row ``i`` for the window starting at
  ``window_starts[i]`` (the rows of the taggram);
- ``<stem>.attention.png``: the taggram, and under it on the same time axis the attention
  of every window.

The maps are recorded while the tagger scores (no second pass), so they come from the very
forward passes that produced the scores. They need the torch backend and one file after
the other (not ``--output`` or ``-j`` above 1, where batches mix files).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from audiocnn.errors import ModelError, UsageError
from audiocnn.fileio import atomic_write_bytes, atomic_write_npy, ensure_writable_dir
from audiocnn.models.attention import recording_attention
from audiocnn.tagging.outputs import draw_taggram
from audiocnn.tagging.tagger import TagResult


class AttentionTap:
    """The attention rows recorded since the last :meth:`take`."""

    def __init__(self, sink: list) -> None:
        self.sink = sink

    def take(self) -> np.ndarray:
        rows = [t.float().cpu().numpy() for t in self.sink]
        self.sink.clear()
        return np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, 0), np.float32)


def check_attention_run(backend: str, jobs: int, output: str | os.PathLike | None, folder: str | os.PathLike) -> None:
    """The run options ``--attention`` cannot go with, and its folder, before the model loads."""
    if backend != "torch":
        raise UsageError("attention maps (--attention) need the torch backend: leave out --backend onnxruntime")
    if output is not None or int(jobs) > 1:
        raise UsageError("attention maps (--attention) are written one file after the other: leave out --output and -j")
    ensure_writable_dir(folder, "attention_dir")


@contextlib.contextmanager
def attention_tap(model) -> Iterator[AttentionTap]:
    """Record the attention of every forward pass of ``model`` while inside."""
    try:
        with recording_attention(model) as sink:
            yield AttentionTap(sink)
    except ModelError as exc:
        raise UsageError(f"--attention: {exc.message}", hint="tag with a cnnsa checkpoint") from None


def write_attention(result: TagResult, weights: np.ndarray, out_dir: str | os.PathLike, stem: str) -> list[Path]:
    """``<stem>.attention.npy`` and ``.png`` (see the module docstring)."""
    if result.taggram is None or weights.shape[0] != result.taggram.shape[0]:
        raise UsageError(f"{result.path}: {weights.shape[0]} attention rows for {result.num_windows} windows")
    out = Path(out_dir)
    npy, png = out / f"{stem}.attention.npy", out / f"{stem}.attention.png"
    atomic_write_npy(npy, weights)
    atomic_write_bytes(png, _attention_png(result, weights))
    return [npy, png]


def _attention_png(result: TagResult, weights: np.ndarray) -> bytes:
    import matplotlib  # deferred: matplotlib, only when an image is asked for

    matplotlib.use("Agg")
    from matplotlib.figure import Figure  # deferred: as above

    n_labels = result.taggram.shape[1]
    fig = Figure(figsize=(10, min(max(4.5, 0.18 * n_labels + 3.0), 32.0)))
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
