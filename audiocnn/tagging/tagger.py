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

Windows lie wholly inside the song, and every second counts: after the last full window,
one more ends at the end of the song, overlapping the one before (``tail="drop"``: a tail
shorter than a window is not scored, as musicnn does). A song shorter than one window is
zero-padded to one window, and the result says so (``padded``).

The options of a run are one :class:`audiocnn.tagging.options.TagOptions`; the network
runs in a backend the tagger is given (:mod:`audiocnn.tagging.backends`); every song,
alone or in a library, is scored by :func:`audiocnn.tagging.stream.tag_stream`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audiocnn.constants import DEFAULT_MODEL, SINGLE_LABEL, Aggregate
from audiocnn.devices import resolve_device
from audiocnn.errors import AudiocnnError, AudioDecodeError, CheckpointError, ModelError, UsageError
from audiocnn.features.frontends import MelConfig, MelStream
from audiocnn.models.checkpoint import DEFAULT_THRESHOLD, load_checkpoint, thresholds_of
from audiocnn.pretrained import resolve_model
from audiocnn.tagging.backends import check_arrays, make_backend
from audiocnn.tagging.options import MAX_WINDOW_FACTOR, TagOptions, tag_options
from audiocnn.tagging.song import Song, StreamStats, TagResult, WindowPlan
from audiocnn.tagging.stream import tag_stream

CPU_BATCH_SIZE = 1
ACCELERATOR_BATCH_SIZE = 32


def _song_framing_supported(frontend: torch.nn.Module) -> bool:
    """Whole-song mel framing needs a streamable mel front-end whose compression is per
    frame (dB with ``top_db`` clips relative to the whole example's peak)."""
    c = getattr(frontend, "config", None)
    return isinstance(c, MelConfig) and MelStream.supports(c) and not (c.compression == "db" and c.top_db is not None)


def shown_name(checkpoint_or_name: str | os.PathLike, path: Path) -> str:
    """What messages and results records call a model: the name given (``musicnn-mtt``,
    a run folder), or the path of a checkpoint file given."""
    given = str(checkpoint_or_name)
    return given if not Path(given).expanduser().is_file() else str(path)


class Tagger:
    """A model loaded once and ready to tag any number of songs.

    ``checkpoint_or_name``: a ``.safetensors`` checkpoint (from ``audiocnn train`` or
    ``audiocnn pretrained import``), a training run folder, or a pretrained name such as
    ``musicnn-mtt`` (see :func:`audiocnn.pretrained.resolve_model`; pretrained imports and
    ONNX exports live under ``cache_dir``, by default
    :func:`audiocnn.constants.default_cache_dir`).
    ``backend``: ``torch``, or ``onnxruntime`` to run the network in ONNX Runtime
    (:mod:`audiocnn.tagging.backends`).
    """

    def __init__(
        self,
        checkpoint_or_name: str | os.PathLike = DEFAULT_MODEL,
        *,
        device: str = "auto",
        batch_size: int | None = None,
        cache_dir: str | os.PathLike | None = None,
        block_seconds: float = 30.0,
        num_threads: int | None = None,
        backend: str = "torch",
    ) -> None:
        if batch_size is not None and int(batch_size) < 1:
            raise UsageError(f"batch_size must be >= 1, got {batch_size}", arguments=("batch_size",))
        if not block_seconds > 0:
            raise UsageError(f"block_seconds must be > 0, got {block_seconds}", arguments=("block_seconds",))
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
        self.path = resolve_model(checkpoint_or_name, cache_dir=cache_dir)
        self.name = shown_name(checkpoint_or_name, self.path)
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
        self.stats = StreamStats()  # peaks of the last run (tag_stream)
        self.backend = make_backend(backend, self.model, self.device, self.path, cache_dir)

    # ------------------------------------------------------------------ planning

    @property
    def input_seconds(self) -> float:
        return self.model.input_length / self.sample_rate

    def plan(self, options: TagOptions) -> WindowPlan:
        """How a song is cut with ``options`` (see the module docstring), in frames or
        samples, or the UsageError naming the option this model cannot take."""
        check_arrays(self.backend.name, options, self.model)
        m, sr = self.model, self.sample_rate
        song_ok = _song_framing_supported(m.frontend)
        if options.framing == "song" and not song_ok:
            raise UsageError(
                f"model {self.name!r} cannot use song framing (it needs a mel front-end with a per-frame "
                "compression): pass framing='window'",
                arguments=("framing",),
            )
        window, hop = options.window, options.hop
        self._check_window(window)
        if song_ok if options.framing == "auto" else options.framing == "song":
            c = m.frontend_config
            unit = c.hop_length / sr
            size = int(m.input_frames) if window is None else max(1, int(round(window / unit)))
            step = size if hop is None else max(1, int(round(hop / unit)))
            need = (size - 1) * c.hop_length if c.center else (size - 1) * c.hop_length + c.n_fft
            return WindowPlan("song", size, step, unit, max(need, c.n_fft))
        size = int(m.input_length) if window is None else max(1, int(round(window * sr)))
        step = size if hop is None else max(1, int(round(hop * sr)))
        return WindowPlan("window", size, step, 1.0 / sr, size)

    def _check_window(self, window: float | None) -> None:
        limit = MAX_WINDOW_FACTOR * self.input_seconds
        if window is not None and window > limit:
            raise UsageError(
                f"window={window:g} is too long for model {self.name!r}: at most {limit:.2f} s, "
                f"{MAX_WINDOW_FACTOR} times its input of {self.input_seconds:.2f} s (memory grows with the window "
                "length, and a shorter song is zero-padded to it)",
                arguments=("window",),
            )

    # ------------------------------------------------------------------ tagging

    def tag_file(self, path: str | os.PathLike, options: TagOptions | None = None, **fields: Any) -> TagResult:
        """Tag one whole song (a stream of one song, :func:`tag_stream`); raises
        :class:`AudioDecodeError` if it cannot be decoded.

        ``options``: a :class:`TagOptions`, or its fields as keywords
        (``tag_file(path, hop=0.5, top_k=5)``). ``scores`` always has every label;
        ``predicted`` holds the decided tags (see :meth:`decide`).
        """
        ((_, _, res),) = tag_stream(self, [path], tag_options(options, **fields))
        if isinstance(res, AudiocnnError):
            raise res
        return res

    def tag_files(
        self, paths: Iterable[str | os.PathLike], options: TagOptions | None = None, **fields: Any
    ) -> Iterator[tuple[Path, TagResult | AudiocnnError]]:
        """Tag songs one after another; a file that cannot be decoded yields its error
        instead of stopping the others."""
        options = tag_options(options, **fields)
        self.plan(options)  # a bad option fails before the first file
        for path in paths:
            ((_, _, res),) = tag_stream(self, [path], options)
            yield Path(path), res

    def result(self, path: str | os.PathLike, song: Song, options: TagOptions) -> TagResult:
        """The result of a song whose every window is scored."""
        if not song.rows:  # cannot happen for a decodable file: padding guarantees a window
            raise AudioDecodeError(f"{path}: no complete window could be cut from the audio")
        taggram, arrays = song.taggram()
        if not np.isfinite(taggram).all():  # e.g. float samples of 1e30 overflow the front-end
            raise AudioDecodeError(
                f"{path}: the model's scores are not finite (NaN or infinity); "
                "are its samples far outside [-1, 1] (a float file of another scale)?"
            )
        scores = taggram.mean(axis=0) if options.aggregate == Aggregate.mean else taggram.max(axis=0)
        order = sorted(range(len(self.labels)), key=lambda i: (-float(scores[i]), i))
        predicted, decision = self.decide(scores, options.threshold)
        if options.top_k is not None:
            order = order[: int(options.top_k)]
        plan = song.plan
        return TagResult(
            path=str(path),
            model=self.name,
            architecture=str(self.meta.get("model", "")),
            task=self.task,
            activation=self.activation,
            labels=list(self.labels),
            scores=scores.astype(np.float32),
            tags=[(self.labels[i], float(scores[i])) for i in order],
            duration=song.samples / self.sample_rate,
            sample_rate=self.sample_rate,
            num_windows=taggram.shape[0],
            window_seconds=plan.window_seconds,
            hop_seconds=plan.hop_seconds,
            aggregate=options.aggregate,
            framing=plan.framing,
            padded=song.padded,
            window_starts=np.asarray(song.windower.starts, dtype=np.float64) * plan.unit_seconds,
            taggram=taggram if options.taggram else None,
            embeddings=arrays.get("embeddings"),
            attention=arrays.get("attention"),
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

    # ------------------------------------------------------------------ running the network

    def streams_for(self, jobs: int) -> int:
        """How many batches a library run with ``jobs`` keeps running at once: on a CPU one
        per job, up to torch's thread count, each on its share of the threads (independent
        single-threaded batches keep both cores of a small machine busy while decoding
        workers take turns; one batch over all threads stalls whenever a worker holds a
        core); on an accelerator one, which windows of several songs fill."""
        if int(jobs) <= 1 or self.device.type != "cpu":
            return 1
        return max(1, min(int(jobs), torch.get_num_threads()))

    def score(
        self, windows: list[np.ndarray], from_features: bool, arrays: tuple[str, ...], custom: bool
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(probabilities, {kind: per-window array})`` of a batch of windows, by the
        backend (``arrays``: :meth:`TagOptions.arrays`); a window the network cannot take
        (``custom``: of a length the user chose) is a :class:`ModelError` naming its shape."""
        x = np.stack(windows)
        b = self.backend
        try:
            proba, extra = b.run(x, from_features, arrays)
        except b.input_errors as exc:
            if isinstance(exc, AudiocnnError) or not (custom or b.name != "torch"):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            where = "" if b.name == "torch" else f" ({b.name})"
            raise ModelError(
                f"model {self.name!r}{where} cannot take windows of shape {tuple(x.shape[1:])} ({first[:200]})",
                hint=f"leave out the window to use its native {self.input_seconds:.2f} s",
            ) from None
        if proba.shape != (x.shape[0], len(self.labels)):
            raise ModelError(
                f"model {self.name!r} returned scores of shape {proba.shape}, expected {(x.shape[0], len(self.labels))}"
            )
        return proba, extra
