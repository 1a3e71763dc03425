"""Tag whole songs with any audiocnn checkpoint: load once, window, batch, aggregate.

A song is decoded in bounded blocks (:func:`audiocnn.audio.iter_audio_blocks`) and cut
into windows of the model's input length as it streams, so memory does not grow with the
song's length: at most one decoded block, the samples or frames of one unfinished window,
and one batch of windows are held; only the small per-window score rows are kept.

Two ways to frame a song (:class:`audiocnn.constants.Framing`):

- ``"song"`` (default for mel models): compute the log-mel of the *whole song* block by
  block and cut it into patches of ``model.input_frames`` frames, hop in frames. This is
  exactly what musicnn's own pipeline does (mel of the full track, 187-frame patches), so
  the taggram equals the reference one; it also computes each STFT frame once, whatever
  the hop.
- ``"window"`` (waveform models, or on request): cut the waveform into windows of
  ``model.input_length`` samples and run each through the model's own front-end, the way
  training crops are seen.

Windows lie wholly inside the song; a tail shorter than a window after the last full
window is not scored (as musicnn does). A song shorter than one window is zero-padded to
one window, and the result says so (``padded``).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audiocnn.audio import iter_audio_blocks
from audiocnn.constants import DEFAULT_MODEL, SINGLE_LABEL, Aggregate, Framing, default_data_dir
from audiocnn.devices import resolve_device
from audiocnn.errors import AudiocnnError, AudioDecodeError, CheckpointError, ModelError, UsageError
from audiocnn.features.frontends import MelConfig, MelStream, even_chunk_starts
from audiocnn.models.base import TaggingModel
from audiocnn.models.checkpoint import DEFAULT_THRESHOLD, load_checkpoint, thresholds_of
from audiocnn.pretrained import resolve_model

CPU_BATCH_SIZE = 1
ACCELERATOR_BATCH_SIZE = 32
#: The longest window (``--window``), in multiples of the model's input: memory and time
#: per window grow with its length, and a song shorter than the window is zero-padded to
#: it (``--window 30000`` padded a 3 s song to 8 hours and took 24 GB).
MAX_WINDOW_FACTOR = 10
#: The most windows ``chunks`` (``--chunks``, ``evaluate --eval-chunks``) spreads over a
#: song; the papers use 16. Each is one window through the network, so a million chunks
#: per song ran for minutes.
MAX_CHUNKS = 256


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
class StreamStats:
    """Peak buffer sizes of the last song tagged: proof that memory is bounded."""

    blocks: int = 0
    max_block_samples: int = 0
    max_buffered: int = 0  # samples or frames held for unfinished windows
    max_batch: int = 0  # windows stacked at once
    extra: dict[str, int] = field(default_factory=dict)


def _choice(kind: type[Enum], value: Any, name: str) -> str:
    """``value`` as the plain string of one of ``kind``'s members; a UsageError naming
    ``name`` and the valid values otherwise."""
    try:
        return kind(value).value
    except ValueError:
        raise UsageError(f"{name} must be one of {', '.join(m.value for m in kind)}, got {value!r}") from None


# --------------------------------------------------------------------------- streaming


class _Windower:
    """Cuts a stream (time on the last axis) into windows ``size`` long every ``hop``.

    Keeps only what an unfinished window still needs, so memory is bounded by one
    incoming chunk plus one window.
    """

    def __init__(self, size: int, hop: int) -> None:
        self.size, self.hop = int(size), int(hop)
        self.buf: np.ndarray | None = None
        self.start = 0  # absolute index of buf[..., 0]
        self.next = 0  # absolute start of the next window
        self.peak = 0
        self.starts: list[int] = []

    def push(self, chunk: np.ndarray) -> Iterator[np.ndarray]:
        if chunk.shape[-1] == 0:
            return
        if self.buf is None or self.buf.shape[-1] == 0:
            buf = chunk
        else:
            buf = np.concatenate([self.buf, chunk], axis=-1)
        skip = min(buf.shape[-1], self.next - self.start)  # a gap when hop > size
        if skip > 0:
            buf = buf[..., skip:]
            self.start += skip
        self.buf = buf
        self.peak = max(self.peak, buf.shape[-1])
        while self.next + self.size <= self.start + buf.shape[-1]:
            s = self.next - self.start
            self.starts.append(self.next)
            yield buf[..., s : s + self.size]
            self.next += self.hop
        drop = min(buf.shape[-1], self.next - self.start)
        self.buf = buf[..., drop:]
        self.start += drop

    def finish(self) -> Iterator[np.ndarray]:
        """No window is left: a tail shorter than a window is not scored."""
        return iter(())


class _EvenChunks:
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


def _song_framing_supported(frontend: torch.nn.Module) -> bool:
    """Whole-song mel framing needs a streamable mel front-end whose compression is per
    frame (dB with ``top_db`` clips relative to the whole example's peak)."""
    c = getattr(frontend, "config", None)
    return isinstance(c, MelConfig) and MelStream.supports(c) and not (c.compression == "db" and c.top_db is not None)


def _positive_seconds(value: float | None, name: str) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise UsageError(f"{name} must be a positive number of seconds, got {value}")


# --------------------------------------------------------------------------- tagger


class Tagger:
    """A model loaded once and ready to tag any number of songs.

    ``checkpoint_or_name``: a ``.safetensors`` checkpoint (from ``audiocnn train`` or
    ``audiocnn pretrained import``), a training run folder, or a pretrained name such as
    ``musicnn-mtt`` (see :func:`audiocnn.pretrained.resolve_model`; pretrained models live
    under ``data_dir``, by default :func:`audiocnn.constants.default_data_dir`).
    """

    def __init__(
        self,
        checkpoint_or_name: str | os.PathLike = DEFAULT_MODEL,
        *,
        device: str = "auto",
        batch_size: int | None = None,
        data_dir: str | os.PathLike | None = None,
        block_seconds: float = 30.0,
        num_threads: int | None = None,
    ) -> None:
        if batch_size is not None and int(batch_size) < 1:
            raise UsageError(f"batch_size (--batch-size) must be >= 1, got {batch_size}")
        if not block_seconds > 0:
            raise UsageError(f"block_seconds must be > 0, got {block_seconds}")
        if num_threads is not None:
            torch.set_num_threads(int(num_threads))
        self.device = resolve_device(device)
        if batch_size is None:
            # On a CPU, one window already makes large matrix products, so bigger batches
            # buy no speed while activation memory grows with them (musicnn: ~25 MiB per
            # 3 s window); accelerators want larger batches.
            batch_size = CPU_BATCH_SIZE if self.device.type == "cpu" else ACCELERATOR_BATCH_SIZE
        self.batch_size = int(batch_size)
        self.block_seconds = float(block_seconds)
        self.path = resolve_model(checkpoint_or_name, default_data_dir() if data_dir is None else data_dir)
        given = str(checkpoint_or_name)
        self.name = given if not Path(given).expanduser().is_file() else str(self.path)
        model, meta = load_checkpoint(self.path, map_location="cpu")
        self.model = model.to(self.device).eval()
        self.meta = meta
        self.labels: list[str] = [str(x) for x in meta.get("labels") or []]
        if len(self.labels) != model.num_classes:
            raise CheckpointError(
                f"{self.path}: {len(self.labels)} labels for a model with {model.num_classes} outputs"
            )
        self.task: str = model.task
        self.activation = "softmax" if self.task == SINGLE_LABEL else "sigmoid"
        # per-label decision thresholds picked by `train` on the validation split (None:
        # decide at DEFAULT_THRESHOLD, e.g. the pretrained imports, which carry none)
        self.thresholds: list[float] | None = thresholds_of(meta, self.path)
        self.sample_rate = int(model.sample_rate)
        self.stats = StreamStats()
        self._stats_lock = threading.Lock()  # _run may be called from several threads
        # head(embed(x)) is forward(x) unless a model overrides forward; then run both.
        self._forward_is_head_of_embed = type(model).forward is TaggingModel.forward

    # ------------------------------------------------------------------ planning

    @property
    def input_seconds(self) -> float:
        return self.model.input_length / self.sample_rate

    def plan(
        self, window: float | None = None, hop: float | None = None, framing: str | Framing = Framing.auto
    ) -> WindowPlan:
        """Window and hop of ``tag_file`` in frames or samples (see the module docstring)."""
        framing = _choice(Framing, framing, "framing")
        _positive_seconds(window, "window")
        _positive_seconds(hop, "hop")
        m, sr = self.model, self.sample_rate
        song_ok = _song_framing_supported(m.frontend)
        if framing == Framing.song and not song_ok:
            raise UsageError(
                f"model {self.name!r}: song framing needs a mel front-end with a per-frame "
                "compression; use framing='window' (--framing window)"
            )
        self._check_window(window)
        if song_ok if framing == Framing.auto else framing == Framing.song:
            c = m.frontend_config
            unit = c.hop_length / sr
            size = int(m.input_frames) if window is None else max(1, int(round(window / unit)))
            step = size if hop is None else max(1, int(round(hop / unit)))
            need = (size - 1) * c.hop_length if c.center else (size - 1) * c.hop_length + c.n_fft
            return WindowPlan(Framing.song.value, size, step, unit, max(need, c.n_fft))
        size = int(m.input_length) if window is None else max(1, int(round(window * sr)))
        step = size if hop is None else max(1, int(round(hop * sr)))
        return WindowPlan(Framing.window.value, size, step, 1.0 / sr, size)

    def _check_window(self, window: float | None) -> None:
        limit = MAX_WINDOW_FACTOR * self.input_seconds
        if window is not None and window > limit:
            raise UsageError(
                f"window (--window) {window:g} s is too long for model {self.name!r}: at most {limit:.2f} s, "
                f"{MAX_WINDOW_FACTOR} times its input of {self.input_seconds:.2f} s (memory grows with the window, "
                "and a shorter song is zero-padded to it)"
            )

    def check(
        self,
        *,
        window: float | None = None,
        hop: float | None = None,
        aggregate: str | Aggregate = Aggregate.mean,
        top_k: int | None = None,
        framing: str | Framing = Framing.auto,
        chunks: int | None = None,
        threshold: float | None = None,
    ) -> WindowPlan:
        """The plan ``tag_file`` follows with these options, or the UsageError naming the
        option at fault: call it once before many files to fail before the first."""
        _choice(Aggregate, aggregate, "aggregate")
        if threshold is not None and not (isinstance(threshold, (int, float)) and 0.0 <= threshold <= 1.0):
            raise UsageError(f"threshold (--threshold) must be a number in [0, 1], got {threshold}")
        if top_k is not None and int(top_k) < 1:
            raise UsageError(f"top_k must be >= 1, got {top_k}")
        if chunks is not None and (int(chunks) < 1 or hop is not None):
            raise UsageError(f"chunks must be >= 1 and cannot be combined with hop, got {chunks}")
        if chunks is not None and int(chunks) > MAX_CHUNKS:
            raise UsageError(
                f"chunks (--chunks) must be at most {MAX_CHUNKS}, got {chunks}: each is one window through the "
                "network (the papers use 16; leave out chunks to score every window of the song)"
            )
        return self.plan(window, hop, framing)

    # ------------------------------------------------------------------ tagging

    def tag_file(
        self,
        path: str | os.PathLike,
        *,
        window: float | None = None,
        hop: float | None = None,
        aggregate: str | Aggregate = Aggregate.mean,
        top_k: int | None = None,
        return_taggram: bool = False,
        return_embeddings: bool = False,
        framing: str | Framing = Framing.auto,
        chunks: int | None = None,
        threshold: float | None = None,
    ) -> TagResult:
        """Tag one whole song; raises :class:`AudioDecodeError` if it cannot be decoded.

        ``window``/``hop`` in seconds (default: the model's native input, no overlap);
        ``aggregate`` combines the per-window probabilities (mean or max); ``top_k``
        limits ``tags`` (``scores`` always has every label). ``chunks=N`` scores N windows
        spread evenly over the song instead (the papers' protocol, see :class:`_EvenChunks`).
        ``predicted`` holds the decided tags (see :meth:`decide`; ``threshold`` overrides).
        """
        options = {"aggregate": aggregate, "top_k": top_k, "framing": framing, "chunks": chunks}
        plan = self.check(window=window, hop=hop, threshold=threshold, **options)
        windower = _Windower(plan.size, plan.hop) if chunks is None else _EvenChunks(plan.size, int(chunks))
        taggram, embeddings, info = self._stream(Path(path), plan, windower, return_embeddings, window is not None)
        return self._result(
            path, plan, windower.starts, taggram, embeddings, info, aggregate, top_k, return_taggram, threshold
        )

    def _result(
        self,
        path: str | os.PathLike,
        plan: WindowPlan,
        starts: list[int],
        taggram: np.ndarray,
        embeddings: np.ndarray | None,
        info: dict[str, Any],
        aggregate: str | Aggregate,
        top_k: int | None,
        return_taggram: bool,
        threshold: float | None = None,
    ) -> TagResult:
        """The result of one song from its per-window scores (``starts`` in plan units)."""
        aggregate = _choice(Aggregate, aggregate, "aggregate")
        if not np.isfinite(taggram).all():  # e.g. float samples of 1e30 overflow the front-end
            raise AudioDecodeError(
                f"{path}: the model's scores are not finite (NaN or infinity); "
                "are its samples far outside [-1, 1] (a float file of another scale)?"
            )
        scores = taggram.mean(axis=0) if aggregate == Aggregate.mean else taggram.max(axis=0)
        order = sorted(range(len(self.labels)), key=lambda i: (-float(scores[i]), i))
        predicted, decision = self.decide(scores, threshold)
        if top_k is not None:
            order = order[: int(top_k)]
        return TagResult(
            path=str(path),
            model=self.name,
            architecture=str(self.meta.get("model", "")),
            task=self.task,
            activation=self.activation,
            labels=list(self.labels),
            scores=scores.astype(np.float32),
            tags=[(self.labels[i], float(scores[i])) for i in order],
            duration=info["samples"] / self.sample_rate,
            sample_rate=self.sample_rate,
            num_windows=taggram.shape[0],
            window_seconds=plan.window_seconds,
            hop_seconds=plan.hop_seconds,
            aggregate=aggregate,
            framing=plan.framing,
            padded=bool(info["padded"]),
            window_starts=(np.asarray(starts, dtype=np.float64) * plan.unit_seconds),
            taggram=taggram if return_taggram else None,
            embeddings=embeddings,
            predicted=predicted,
            decision=decision,
        )

    def decide(self, scores: np.ndarray, threshold: float | None = None) -> tuple[list[str], str]:
        """``(tags predicted from song scores, best first; how)``: the arg-max class of a
        single-label model; for a multi-label model every tag whose score reaches its
        threshold - ``threshold`` when given, else the checkpoint's per-tag thresholds
        (picked on the validation split), else 0.5."""
        if self.task == SINGLE_LABEL:
            return [self.labels[int(np.argmax(scores))]], "arg-max"
        if threshold is not None:
            cut, how = np.full(len(self.labels), float(threshold)), f"score >= {float(threshold):g}"
        elif self.thresholds is not None:
            cut, how = np.asarray(self.thresholds), "score >= the per-tag thresholds of the checkpoint"
        else:
            cut = np.full(len(self.labels), DEFAULT_THRESHOLD)
            how = f"score >= {DEFAULT_THRESHOLD:g} (no stored thresholds)"
        hits = [i for i in np.argsort(-scores, kind="stable") if scores[i] >= cut[i]]
        return [self.labels[int(i)] for i in hits], how

    def tag_files(
        self, paths: Iterable[str | os.PathLike], **kwargs: Any
    ) -> Iterator[tuple[Path, TagResult | AudiocnnError]]:
        """Tag songs one after another; a file that cannot be decoded yields its error
        instead of stopping the others."""
        for path in paths:
            try:
                yield Path(path), self.tag_file(path, **kwargs)
            except AudioDecodeError as exc:
                yield Path(path), exc
            except OSError as exc:
                yield Path(path), AudioDecodeError(f"{path}: cannot read ({exc.strerror or exc})")

    # ------------------------------------------------------------------ internals

    def _stream(
        self, path: Path, plan: WindowPlan, windower: _Windower | _EvenChunks, want_emb: bool, custom: bool
    ) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
        """Decode, frame and score one song: ``(taggram, embeddings or None, info)``."""
        self.stats = StreamStats()
        info: dict[str, Any] = {"samples": 0, "padded": False}
        from_features = plan.framing == Framing.song
        mel = MelStream(self.model.frontend, self.device) if from_features else None
        rows: list[np.ndarray] = []
        embs: list[np.ndarray] = []
        batch: list[np.ndarray] = []

        def flush() -> None:
            proba, emb = self._run(batch, from_features, want_emb, custom)
            rows.append(proba)
            if emb is not None:
                embs.append(emb)
            batch.clear()

        def feed(windows: Iterator[np.ndarray]) -> None:
            for w in windows:
                batch.append(w)
                if len(batch) >= self.batch_size:
                    flush()

        for block in self._blocks(path, plan.min_samples, info):
            feed(windower.push(mel.push(block) if mel is not None else block))
        if mel is not None:
            feed(windower.push(mel.finish()))
        feed(windower.finish())
        if batch:
            flush()
        self.stats.max_buffered = max(windower.peak, mel.peak if mel is not None else 0)
        if not rows:  # cannot happen for a decodable file: padding guarantees a window
            raise AudioDecodeError(f"{path}: no complete window could be cut from the audio")
        embeddings = np.concatenate(embs).astype(np.float32) if want_emb else None
        return np.concatenate(rows).astype(np.float32), embeddings, info

    def _blocks(self, path: Path, min_samples: int, info: dict[str, Any]) -> Iterator[np.ndarray]:
        total = 0
        for y in iter_audio_blocks(path, self.sample_rate, self.block_seconds):
            total += y.shape[0]
            self.stats.blocks += 1
            self.stats.max_block_samples = max(self.stats.max_block_samples, y.shape[0])
            yield y
        info["samples"] = total
        if total < min_samples:
            info["padded"] = True
            yield np.zeros(min_samples - total, np.float32)

    def _note_batch(self, n: int) -> None:
        with self._stats_lock:
            self.stats.max_batch = max(self.stats.max_batch, n)

    def streams_for(self, jobs: int) -> int:
        """How many batches a library run with ``jobs`` keeps running at once: on a CPU one
        per job, up to torch's thread count, each on its share of the threads (independent
        single-threaded batches keep both cores of a small machine busy while decoding
        workers take turns; one batch over all threads stalls whenever a worker holds a
        core); on an accelerator one, which windows of several songs fill."""
        if int(jobs) <= 1 or self.device.type != "cpu":
            return 1
        return max(1, min(int(jobs), torch.get_num_threads()))

    @contextlib.contextmanager
    def threads_per_stream(self, streams: int) -> Iterator[int]:
        """While inside, :meth:`_run` may be called from ``streams`` threads at once, each
        running the network on its own share of the CPU threads (the value yielded)."""
        before = torch.get_num_threads()
        share = max(1, before // max(1, int(streams)))
        torch.set_num_threads(share)  # threads started inside take this count when they first run torch
        try:
            yield share
        finally:
            torch.set_num_threads(before)

    def _run(self, batch: list[np.ndarray], from_features: bool, want_emb: bool, custom: bool):
        x = torch.from_numpy(np.stack(batch)).to(self.device)
        self._note_batch(x.shape[0])
        m = self.model
        try:
            with torch.inference_mode():
                emb = None
                if want_emb:
                    emb = m.embed(x, from_features=from_features)
                    logits = m.head(emb) if self._forward_is_head_of_embed else m(x, from_features=from_features)
                    emb = emb.reshape(emb.shape[0], -1).float().cpu().numpy()
                else:
                    logits = m(x, from_features=from_features)
                proba = m.predict_proba(logits).float().cpu().numpy()
        except RuntimeError as exc:
            if not custom:
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(
                f"model {self.name!r} cannot take windows of shape {tuple(x.shape[1:])} ({first})",
                hint=f"leave out window (--window) to use its native {self.input_seconds:.2f} s",
            ) from None
        if proba.shape != (x.shape[0], len(self.labels)):
            raise ModelError(
                f"model {self.name!r} returned scores of shape {proba.shape}, expected {(x.shape[0], len(self.labels))}"
            )
        return proba, emb
