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

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from audiocnn.checkpoint_file import DEFAULT_THRESHOLD
from audiocnn.constants import DEFAULT_MODEL, SINGLE_LABEL, Aggregate
from audiocnn.errors import AudiocnnError, AudioDecodeError, CheckpointError, ModelError, UsageError
from audiocnn.pretrained import resolve_model
from audiocnn.tagging.backends import ModelInfo, auto_backend, check_arrays, check_backend
from audiocnn.tagging.options import MAX_WINDOW_FACTOR, TagOptions, tag_options
from audiocnn.tagging.ort_backend import OrtBackend, onnx_files
from audiocnn.tagging.song import Song, StreamStats, TagResult, WindowPlan
from audiocnn.tagging.stream import tag_stream

log = logging.getLogger("audiocnn.tagging")

CPU_BATCH_SIZE = 1
ACCELERATOR_BATCH_SIZE = 32


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
    ``backend``: ``torch``; ``onnxruntime`` to run the front-end and the network in ONNX
    Runtime from the model's export in the cache (made and checked against torch on first
    use; torch is not imported when it is there); ``auto``: ONNX Runtime on a CPU-only
    machine with onnxruntime installed, else torch (:mod:`audiocnn.tagging.backends`).
    ``report`` gets the line saying a first-use export was made.
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
        report: Callable[[str], None] = log.info,
    ) -> None:
        if batch_size is not None and int(batch_size) < 1:
            raise UsageError(f"batch_size must be >= 1, got {batch_size}", arguments=("batch_size",))
        if not block_seconds > 0:
            raise UsageError(f"block_seconds must be > 0, got {block_seconds}", arguments=("block_seconds",))
        check_backend(backend)
        self.block_seconds = float(block_seconds)
        self.path = resolve_model(checkpoint_or_name, cache_dir=cache_dir)
        self.name = shown_name(checkpoint_or_name, self.path)
        self.backend = load_backend(
            backend, self.path, self.name, device=device, cache_dir=cache_dir, num_threads=num_threads, report=report
        )
        self.info: ModelInfo = self.backend.info
        self.model = self.backend.model  # the torch model (torch backend), else None
        self.meta = self.backend.meta
        self.device = self.backend.device
        if batch_size is None:
            # On a CPU, one window already makes large matrix products, so bigger batches
            # buy no speed while activation memory grows with them (musicnn: ~25 MiB per
            # 3 s window); accelerators want larger batches.
            batch_size = CPU_BATCH_SIZE if self.backend.on_cpu else ACCELERATOR_BATCH_SIZE
        self.batch_size = int(batch_size)
        self.labels: list[str] = list(self.info.labels)
        self.task: str = self.info.task
        self.activation = "softmax" if self.task == SINGLE_LABEL else "sigmoid"
        # per-label decision thresholds picked by `train` on the validation split (None:
        # decide at DEFAULT_THRESHOLD, e.g. the pretrained imports, which carry none)
        self.thresholds: list[float] | None = self.info.thresholds
        self.sample_rate = int(self.info.sample_rate)
        self.stats = StreamStats()  # peaks of the last run (tag_stream)

    # ------------------------------------------------------------------ planning

    @property
    def input_seconds(self) -> float:
        return self.info.input_seconds

    def plan(self, options: TagOptions) -> WindowPlan:
        """How a song is cut with ``options`` (see the module docstring), in frames or
        samples, or the UsageError naming the option this model cannot take."""
        check_arrays(self.backend.name, options, self.info)
        m, sr = self.info, self.sample_rate
        song_ok = m.song_framing
        if options.framing == "song" and not song_ok:
            raise UsageError(
                f"model {self.name!r} cannot use song framing (it needs a mel front-end with a per-frame "
                "compression): pass framing='window'",
                arguments=("framing",),
            )
        window, hop = options.window, options.hop
        self._check_window(window)
        if song_ok if options.framing == "auto" else options.framing == "song":
            c = m.frontend
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
            architecture=self.info.architecture,
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
        if int(jobs) <= 1 or not self.backend.on_cpu:
            return 1
        return max(1, min(int(jobs), self.backend.threads))

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


def load_backend(
    name: str,
    path: Path,
    shown: str,
    *,
    device: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    num_threads: int | None = None,
    report: Callable[[str], None] = log.info,
) -> Any:
    """The backend ``name`` (auto | torch | onnxruntime, :mod:`audiocnn.tagging.backends`)
    for checkpoint ``path``. ONNX Runtime uses the model's export in the cache, written
    and checked against torch the first time (``report`` says so, with the time it took);
    with ``auto``, an export that cannot be made falls back to torch, saying why."""
    check_backend(name)
    chosen = name
    if name == "auto":
        chosen, why = auto_backend(device)
        log.debug("backend auto: %s (%s)", chosen, why)
    if chosen == "onnxruntime":
        if str(device).strip().lower() not in ("auto", "cpu"):
            raise UsageError(
                f"backend='onnxruntime' runs on the CPU, not {device}: pass device='cpu'",
                arguments=("backend", "device"),
            )
        try:
            return _ort_backend(path, shown, cache_dir, num_threads, report)
        except Exception as exc:  # the export could not be made (onnx missing, an operator it cannot take)
            if name != "auto" or isinstance(exc, CheckpointError):
                raise
            why = exc.message if isinstance(exc, AudiocnnError) else f"{type(exc).__name__}: {str(exc)[:200]}"
            log.warning("%s: tagging with torch instead of ONNX Runtime (%s)", shown, why)
    from audiocnn.tagging.torch_backend import TorchBackend  # deferred: torch loads only for the torch engine

    return TorchBackend(path, device, num_threads)


def _ort_backend(
    path: Path, shown: str, cache_dir: str | os.PathLike | None, num_threads: int | None, report: Callable[[str], None]
) -> OrtBackend:
    files = onnx_files(path, cache_dir)
    if files.missing():
        from audiocnn.tagging.export import export_onnx  # deferred: exporting loads torch, once per model

        t0 = time.perf_counter()
        export_onnx(path, files.network, cache_dir=cache_dir)
        report(
            f"exported {shown} to ONNX for the fast CPU engine in {time.perf_counter() - t0:.1f} s, checked against "
            f"torch (once; kept in {files.network.parent})"
        )
    return OrtBackend(path, files, num_threads)
