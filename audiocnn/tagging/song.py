"""One song being scored: how it is cut into windows, and the state it keeps while its
blocks stream in (:class:`Song`), whether it is tagged alone or in a library run.

Memory does not grow with the song's length: a song holds at most one incoming block, the
samples or frames of one unfinished window, and its small per-window score rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from audiocnn.features.configs import even_chunk_starts
from audiocnn.features.streaming import FrameStream


@dataclass(frozen=True)
class WindowPlan:
    """How one song is cut: units are frames (song framing) or samples (window framing)."""

    framing: str
    size: int
    hop: int
    unit_seconds: float
    min_samples: int  # a song shorter than this is zero-padded to it

    @property
    def window_seconds(self) -> float:
        return self.size * self.unit_seconds

    @property
    def hop_seconds(self) -> float:
        return self.hop * self.unit_seconds


@dataclass
class TagResult:
    """Tags of one song: aggregated scores, and optionally the per-window detail."""

    path: str
    model: str  # what the user named: pretrained name or checkpoint path
    architecture: str  # registry name of the network
    task: str  # single-label | multi-label
    activation: str  # softmax | sigmoid
    labels: list[str]
    scores: np.ndarray  # (num_labels,) aggregated, in label order
    tags: list[tuple[str, float]]  # (label, score), best first; top_k of them when asked
    duration: float  # seconds of audio in the file
    sample_rate: int
    num_windows: int
    window_seconds: float
    hop_seconds: float
    aggregate: str
    framing: str  # song | window
    padded: bool  # the song was shorter than one window and was zero-padded
    window_starts: np.ndarray  # (num_windows,) seconds
    taggram: np.ndarray | None = None  # (num_windows, num_labels) when asked
    embeddings: np.ndarray | None = None  # (num_windows, D) when asked
    attention: np.ndarray | None = None  # (num_windows, time steps) when asked (self-attention models)
    predicted: list[str] = field(default_factory=list)  # decided tags, best score first
    decision: str = ""  # how they were decided (arg-max, per-tag thresholds, one threshold)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no per-window arrays)."""
        return {
            "path": self.path,
            "model": self.model,
            "architecture": self.architecture,
            "task": self.task,
            "activation": self.activation,
            "tags": [{"tag": t, "score": round(float(s), 6)} for t, s in self.tags],
            "predicted": list(self.predicted),
            "duration": round(self.duration, 3),
            "windows": self.num_windows,
            "window_seconds": round(self.window_seconds, 4),
            "hop_seconds": round(self.hop_seconds, 4),
            "aggregate": self.aggregate,
            "padded": self.padded,
        }


@dataclass
class StreamStats:
    """Peaks of the last run of a tagger (one song or a library): what bounds its memory."""

    blocks: int = 0
    max_block_samples: int = 0
    max_buffered: int = 0  # samples or frames a song held for unfinished windows
    max_batch: int = 0  # windows stacked at once
    max_songs_in_flight: int = 0
    max_songs_per_batch: int = 0


def window_starts(length: int, size: int, hop: int, tail: str = "end") -> list[int]:
    """Starts of the windows :class:`Windower` cuts from ``length`` frames or samples
    (at least ``size``): every ``hop``, and with ``tail="end"`` one more ending at the end
    when the last full window does not."""
    starts = list(range(0, int(length) - int(size) + 1, int(hop)))
    if tail == "end" and starts and starts[-1] + size < length:
        starts.append(int(length) - int(size))
    return starts


class Windower:
    """Cuts a stream (time on the last axis) into windows ``size`` long every ``hop``
    (:func:`window_starts`): with ``tail="end"`` the last window ends at the end of the
    stream, overlapping the one before; with ``"drop"`` a tail shorter than a window after
    the last full window is not scored (as musicnn does).

    Keeps only what an unfinished window (or, with ``"end"``, the last one) still needs,
    so memory is bounded by one incoming chunk plus one window.
    """

    def __init__(self, size: int, hop: int, tail: str = "end") -> None:
        self.size, self.hop = int(size), int(hop)
        self.keep_tail = tail == "end"
        self.buf: np.ndarray | None = None
        self.start = 0  # absolute index of buf[..., 0]
        self.end = 0  # absolute end of what came in
        self.next = 0  # absolute start of the next window
        self.peak = 0
        self.starts: list[int] = []

    def _trim(self, buf: np.ndarray) -> np.ndarray:
        """``buf`` without what no window needs any more (a gap when hop > size)."""
        keep_from = min(self.next, self.end - self.size) if self.keep_tail else self.next
        drop = min(max(0, keep_from - self.start), buf.shape[-1])
        self.start += drop
        return buf[..., drop:]

    def push(self, chunk: np.ndarray) -> Iterator[np.ndarray]:
        if chunk.shape[-1] == 0:
            return
        if self.buf is None or self.buf.shape[-1] == 0:
            buf = chunk
        else:
            buf = np.concatenate([self.buf, chunk], axis=-1)
        self.end = self.start + buf.shape[-1]
        self.buf = buf = self._trim(buf)
        self.peak = max(self.peak, buf.shape[-1])
        while self.next + self.size <= self.end:
            s = self.next - self.start
            self.starts.append(self.next)
            yield buf[..., s : s + self.size]
            self.next += self.hop
        self.buf = self._trim(buf)

    def finish(self) -> Iterator[np.ndarray]:
        """With ``tail="end"``, the window ending at the end when the last one does not."""
        if self.keep_tail and self.starts and self.starts[-1] + self.size < self.end:
            s = self.end - self.size
            self.starts.append(s)
            yield self.buf[..., s - self.start : s - self.start + self.size]


class EvenChunks:
    """``n`` windows spread evenly over the whole song, the first at its start and the
    last ending at its end: the song-level protocol of the tagging papers (e.g. 16 chunks
    per clip), which training's validation uses (``eval_chunks``). It needs the song's
    length, so it holds the song's features (fine for dataset clips, not for hour-long
    files: the default framing streams)."""

    def __init__(self, size: int, n: int) -> None:
        self.size, self.n = int(size), int(n)
        self.parts: list[np.ndarray] = []
        self.peak = 0
        self.starts: list[int] = []

    def push(self, chunk: np.ndarray) -> Iterator[np.ndarray]:
        if chunk.shape[-1]:
            self.parts.append(chunk)
        return iter(())

    def finish(self) -> Iterator[np.ndarray]:
        x = np.concatenate(self.parts, axis=-1)
        self.parts = []
        self.peak = x.shape[-1]
        for s in even_chunk_starts(x.shape[-1], self.size, self.n):
            w = x[..., s : s + self.size]
            if w.shape[-1] < self.size:
                w = np.pad(w, [(0, 0)] * (w.ndim - 1) + [(0, self.size - w.shape[-1])])
            self.starts.append(int(s))
            yield w


class Song:
    """One song being scored: its mel stream (song framing: made by ``mel_stream``, the
    backend's), its windower, how much audio came in, and the score rows of its windows as
    they come back from the network. ``options``: the run's
    :class:`audiocnn.tagging.options.TagOptions`.

    Blocks go in with :meth:`push`, the last windows come out of :meth:`finish`; every
    window handed out is scored later (:meth:`scored`), in the order handed out.
    """

    def __init__(self, index: int, plan: WindowPlan, options: Any, mel_stream: Callable[[], FrameStream]) -> None:
        self.index = index
        self.plan = plan
        self.mel = mel_stream() if plan.framing == "song" else None
        if options.chunks is None:
            self.windower: Windower | EvenChunks = Windower(plan.size, plan.hop, options.tail)
        else:
            self.windower = EvenChunks(plan.size, int(options.chunks))
        self.samples = 0
        self.padded = False
        self.rows: list[np.ndarray] = []
        self.arrays: dict[str, list[np.ndarray]] = {}  # embeddings, attention: when asked
        self.pending = 0  # windows handed out, not scored yet

    def push(self, block: np.ndarray) -> list[np.ndarray]:
        """The windows ``block`` completes."""
        self.samples += block.shape[0]
        return self._windows(block)

    def _windows(self, block: np.ndarray) -> list[np.ndarray]:
        return list(self.windower.push(self.mel.push(block) if self.mel is not None else block))

    def finish(self) -> list[np.ndarray]:
        """The last windows, once every block is in: a song shorter than one window is
        zero-padded to one (and says so, ``padded``)."""
        out: list[np.ndarray] = []
        if self.samples < self.plan.min_samples:
            self.padded = True
            out += self._windows(np.zeros(self.plan.min_samples - self.samples, np.float32))
        if self.mel is not None:
            out += list(self.windower.push(self.mel.finish()))
        return out + list(self.windower.finish())

    @property
    def peak(self) -> int:
        """The most samples or frames this song held for unfinished windows."""
        return max(self.windower.peak, self.mel.peak if self.mel is not None else 0)

    def scored(self, proba: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
        """The scores (and the other per-window arrays asked for) of this song's next window."""
        self.rows.append(proba)
        for kind, row in arrays.items():
            self.arrays.setdefault(kind, []).append(row)
        self.pending -= 1

    def taggram(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(per-window scores, {kind: per-window array})`` in window order."""
        arrays = {kind: np.concatenate(rows).astype(np.float32) for kind, rows in self.arrays.items()}
        return np.concatenate(self.rows).astype(np.float32), arrays
