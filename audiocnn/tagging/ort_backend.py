"""The network and the front-end in ONNX Runtime, without torch: ``tag``'s engine on a CPU.

A model's ONNX export (:func:`audiocnn.tagging.export.export_onnx`) lives in the user's
cache folder, ``<cache>/onnx/<architecture>-<checkpoint hash>.onnx`` (:func:`onnx_files`),
with, for mel models, ``.frontend.onnx`` (waveform windows to log-mel, centred, as the
model's front-end) and ``.frames.onnx`` (whole frames to log-mel without centring: the
front-end of a song streamed block by block, :class:`audiocnn.features.streaming.FrameStream`,
so a long song stays in flat memory). Everything the tagger needs of the model is in the
export's metadata; nothing here imports torch. Scores equal the torch backend's to about
1e-7 (the export checks itself against torch when it is written).

A waveform model's front-end is the identity, or a scaling of each window to unit RMS
(``normalize``): that one line runs in numpy.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from audiocnn.checkpoint_file import checkpoint_sha256, read_metadata
from audiocnn.constants import ONNX_DIR_NAME, default_cache_dir
from audiocnn.errors import CheckpointError, NotAvailableError
from audiocnn.features.configs import MelConfig, WaveformConfig, config_from_dict
from audiocnn.features.streaming import FrameStream, streamable
from audiocnn.tagging.backends import ARRAYS, ModelInfo
from audiocnn.workers import usable_cpus

INSTALL_HINT = "pip install audiocnn[onnx]"


def require_onnxruntime() -> Any:
    """The onnxruntime module, or a one-line error saying how to install it."""
    try:
        import onnxruntime  # deferred: optional dependency
    except ImportError:
        raise NotAvailableError("the ONNX Runtime engine needs onnxruntime", hint=INSTALL_HINT) from None
    return onnxruntime


def ort_session(ort: Any, path_or_bytes: str | os.PathLike | bytes, threads: int | None = None) -> Any:
    """A CPU inference session (``threads``: its intra-op threads; default ONNX Runtime's)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    # Between windows this process decodes and computes the mel: threads spinning for the
    # next run would take the cores it needs (a 318 s song: 2.2 s -> 1.9 s on 2 cores).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    src = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def sibling(network: Path, kind: str) -> Path:
    """The ``frontend`` or ``frames`` graph written beside the network ``network``."""
    return network.with_name(f"{network.stem}.{kind}.onnx")


@dataclass(frozen=True)
class OnnxFiles:
    """The files of one model's export: the network, and the front-ends a mel model needs."""

    network: Path
    frontend: Path | None
    frames: Path | None

    def missing(self) -> list[Path]:
        return [p for p in (self.network, self.frontend, self.frames) if p is not None and not p.is_file()]


def onnx_files(checkpoint: Path, cache_dir: str | os.PathLike | None = None) -> OnnxFiles:
    """Where the export of ``checkpoint`` is kept in the cache (named by its content)."""
    meta = read_metadata(checkpoint)
    root = Path(default_cache_dir() if cache_dir is None else cache_dir) / ONNX_DIR_NAME
    network = root / f"{meta['model']}-{checkpoint_sha256(checkpoint)}.onnx"
    try:
        config = config_from_dict(meta["frontend"])
    except Exception as exc:  # a ConfigError, told with the file it came from
        raise CheckpointError(f"{checkpoint}: checkpoint metadata 'frontend': {exc}") from None
    if not isinstance(config, MelConfig):
        return OnnxFiles(network, None, None)
    return OnnxFiles(network, sibling(network, "frontend"), sibling(network, "frames") if streamable(config) else None)


def info_from_metadata(props: dict[str, str]) -> ModelInfo:
    """The :class:`ModelInfo` an export's ``metadata_props`` describe."""
    thresholds = json.loads(props["thresholds"]) if "thresholds" in props else None
    return ModelInfo(
        architecture=props.get("architecture", ""),
        task=props["task"],
        labels=[str(x) for x in json.loads(props["labels"])],
        thresholds=[float(t) for t in thresholds] if thresholds is not None else None,
        frontend=config_from_dict(json.loads(props["frontend"])),
        sample_rate=int(props["sample_rate"]),
        input_length=int(props["window_samples"]),
        input_frames=int(props["window_frames"]),
    )


def normalized_waveform(x: np.ndarray, config: WaveformConfig) -> np.ndarray:
    """A waveform model's front-end on windows ``(batch, samples)``: each to unit RMS when
    the config says so (as :class:`audiocnn.features.frontends.WaveformFrontend`)."""
    if not config.normalize:
        return x
    rms = np.sqrt(np.maximum(np.mean(np.square(x, dtype=np.float32), axis=-1, keepdims=True), np.float32(1e-12)))
    return (x / rms).astype(np.float32)


class OrtBackend:
    """The export ``files`` of ``checkpoint`` in ONNX Runtime sessions on ``threads`` CPU threads."""

    name = "onnxruntime"
    arrays = ARRAYS["onnxruntime"]
    input_errors: tuple[type[BaseException], ...] = (Exception,)  # onnxruntime raises its own types
    on_cpu = True
    device = "cpu"
    model = None  # no torch model: everything is in the export

    def __init__(self, checkpoint: Path, files: OnnxFiles, num_threads: int | None = None) -> None:
        self._ort = require_onnxruntime()
        missing = files.missing()
        if missing:
            raise CheckpointError(f"{missing[0]}: no such ONNX export of {checkpoint}")
        self.files = files
        self.meta = read_metadata(checkpoint)
        self.threads = int(num_threads) if num_threads else usable_cpus()
        self._open(self.threads)
        self.info = info_from_metadata(self.network.get_modelmeta().custom_metadata_map)

    def _open(self, threads: int) -> None:
        f, ort = self.files, self._ort
        self.network = ort_session(ort, f.network, threads)
        self.frontend = ort_session(ort, f.frontend, threads) if f.frontend is not None else None
        self.frames = ort_session(ort, f.frames, threads) if f.frames is not None else None

    def mel_stream(self) -> FrameStream:
        frames = self.frames
        if frames is None or not isinstance(self.info.frontend, MelConfig):
            raise CheckpointError(f"{self.files.network}: the export has no streaming front-end (.frames.onnx)")
        return FrameStream(self.info.frontend, lambda seg: frames.run(None, {"waveform": seg[None]})[0][0])

    def features(self, x: np.ndarray) -> np.ndarray:
        """The model's front-end on waveform windows ``(batch, samples)``."""
        if self.frontend is not None:
            return self.frontend.run(None, {"waveform": x})[0]
        config = self.info.frontend
        return normalized_waveform(x, config) if isinstance(config, WaveformConfig) else x

    def run(self, x: np.ndarray, from_features: bool, arrays: tuple[str, ...] = ()) -> tuple[np.ndarray, dict]:
        x = x.astype(np.float32, copy=False)
        if not from_features:
            x = self.features(x)
        return self.network.run(None, {"input": x})[0], {}

    @contextlib.contextmanager
    def threads_per_stream(self, streams: int) -> Iterator[int]:
        """Sessions on one stream's share of the threads (ONNX Runtime sessions may be run
        from several threads at once)."""
        share = max(1, self.threads // max(1, int(streams)))
        whole = self.network, self.frontend, self.frames
        if share != self.threads:
            self._open(share)
        try:
            yield share
        finally:
            self.network, self.frontend, self.frames = whole
