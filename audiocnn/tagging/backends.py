"""What runs the network on a batch of windows, and what the tagger knows of the model.

Two backends score windows: torch (:mod:`audiocnn.tagging.torch_backend`, the model as
trained, on any device) and ONNX Runtime (:mod:`audiocnn.tagging.ort_backend`, the
model's ONNX export on the CPU, without importing torch). A backend has

- ``info``: the :class:`ModelInfo` the tagger plans and reports with;
- ``run(x, from_features, arrays) -> (probabilities, {kind: per-window array})``: the
  ``arrays`` asked for, of :data:`audiocnn.tagging.options.NETWORK_ARRAYS` (embeddings,
  and the attention over time steps of a self-attention model, from the same forward pass
  as the scores); which it can give is :data:`ARRAYS`;
- ``mel_stream()``: the model's mel front-end over a whole song, block by block (song
  framing; :class:`audiocnn.features.streaming.FrameStream`);
- ``threads_per_stream(streams)``: a context inside which ``run`` may be called from
  ``streams`` threads at once, each on its share of the CPU threads;
- ``on_cpu``, ``threads``, ``input_errors`` (what a window the network cannot take raises).

``backend="auto"`` (``audiocnn tag``'s default) is ONNX Runtime on a machine without an
accelerator when onnxruntime is installed (:func:`auto_backend`), torch otherwise; the
per-window arrays need torch.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from audiocnn.accelerators import visible_accelerator
from audiocnn.errors import UsageError
from audiocnn.features.configs import FrontendConfig, MelConfig
from audiocnn.features.streaming import streamable
from audiocnn.tagging.options import NETWORK_ARRAYS, TagOptions

BACKENDS = ("auto", "torch", "onnxruntime")
#: the per-window arrays each backend gives beside the scores (ONNX exports end at the probabilities)
ARRAYS = {"torch": NETWORK_ARRAYS, "onnxruntime": ()}


@dataclass(frozen=True)
class ModelInfo:
    """What the tagger knows of a model, from a checkpoint or from its ONNX export."""

    architecture: str  # registry name
    task: str  # single-label | multi-label
    labels: list[str]
    thresholds: list[float] | None  # per-label decision thresholds of the checkpoint
    frontend: FrontendConfig
    sample_rate: int
    input_length: int  # samples of one window
    input_frames: int  # front-end frames of one window
    time_attention: bool = False  # gives its attention over time steps (cnnsa)

    @property
    def input_seconds(self) -> float:
        return self.input_length / self.sample_rate

    @property
    def song_framing(self) -> bool:
        """Whole-song mel framing needs a streamable mel front-end whose compression is per
        frame (dB with ``top_db`` clips relative to the whole example's peak)."""
        c = self.frontend
        return isinstance(c, MelConfig) and streamable(c) and not (c.compression == "db" and c.top_db is not None)


def check_arrays(backend: str, options: TagOptions, info: ModelInfo | None = None) -> None:
    """A UsageError for a per-window array ``options`` ask for that ``backend`` cannot give
    (with ``info``: or that model); made before the model loads and by ``Tagger.plan``."""
    can = ARRAYS.get(backend, NETWORK_ARRAYS)
    for kind in options.arrays():
        if kind not in can:
            message = f"{kind}=True needs the torch backend, not backend={backend!r}"
            raise UsageError(message, arguments=(kind, "backend"))
    if options.attention and info is not None and not info.time_attention:
        raise UsageError(
            f"attention=True needs a model with self-attention over time, such as cnnsa; {info.architecture} has "
            "no attention over time",
            arguments=("attention",),
        )


def check_backend(name: str) -> None:
    if name not in BACKENDS:
        raise UsageError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}", arguments=("backend",))


def auto_backend(device: str) -> tuple[str, str]:
    """``(backend, why)`` for ``backend="auto"`` on ``device``: ONNX Runtime on the CPU
    when it is installed and no accelerator may be there; torch otherwise."""
    kind = str(device).strip().lower()
    if kind not in ("auto", "cpu"):
        return "torch", f"device={device}"
    if importlib.util.find_spec("onnxruntime") is None:
        return "torch", "onnxruntime is not installed"
    if kind == "auto":
        found = visible_accelerator()
        if found is not None:
            return "torch", f"{found} may be visible"
    return "onnxruntime", "the CPU, with onnxruntime installed"
