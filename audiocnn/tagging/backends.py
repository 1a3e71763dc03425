"""What runs the network on a batch of windows: torch, or ONNX Runtime (``backend="onnxruntime"``).

A backend is given to the :class:`audiocnn.tagging.Tagger`; everything else (decoding,
framing, the mel front-end of song framing, aggregation) is the same for both. A backend
has ``run(x, from_features, arrays) -> (probabilities, {kind: per-window array})`` (the
``arrays`` asked for, of :data:`audiocnn.tagging.options.NETWORK_ARRAYS`: embeddings, and
the attention over time steps of a self-attention model, from the same forward pass as
the scores), says which arrays it can give (:func:`check_arrays`), and has
``threads_per_stream(streams)``, a context inside which ``run`` may be called from
``streams`` threads at once, each on its share of the CPU threads.

ONNX Runtime: the model is exported once (:func:`audiocnn.tagging.export.export_onnx`,
verified against torch) into ``<cache>/onnx/`` (the user's cache folder,
:func:`audiocnn.constants.default_cache_dir`), named by the checkpoint's content hash,
and reused; the scores equal torch's to about 1e-7. On the 2-core CPU it was measured on,
ONNX Runtime ran musicnn's network 1.28x faster per window (README, "Export to ONNX").
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audiocnn.constants import ONNX_DIR_NAME, default_cache_dir
from audiocnn.errors import UsageError
from audiocnn.models.base import TaggingModel
from audiocnn.models.checkpoint import checkpoint_sha256
from audiocnn.tagging.export import export_onnx, ort_session, require_onnx
from audiocnn.tagging.options import NETWORK_ARRAYS, TagOptions

BACKENDS = ("torch", "onnxruntime")


@contextlib.contextmanager
def _torch_threads(streams: int) -> Iterator[int]:
    before = torch.get_num_threads()
    share = max(1, before // max(1, int(streams)))
    torch.set_num_threads(share)  # threads started inside take this count when they first run torch
    try:
        yield share
    finally:
        torch.set_num_threads(before)


class TorchBackend:
    """The network in torch, on the tagger's device."""

    name = "torch"
    arrays = NETWORK_ARRAYS  # attention: of a model with attention over time (has_time_attention)
    input_errors: tuple[type[BaseException], ...] = (RuntimeError,)

    def __init__(self, model: TaggingModel, device: torch.device) -> None:
        self.model, self.device = model, device
        # head(embed(x)) is forward(x) unless a model overrides forward; then run both.
        self._forward_is_head_of_embed = type(model).forward is TaggingModel.forward

    def run(self, x: np.ndarray, from_features: bool, arrays: tuple[str, ...] = ()) -> tuple[np.ndarray, dict]:
        m = self.model
        t = torch.from_numpy(x).to(self.device)
        out: dict[str, np.ndarray] = {}
        with torch.inference_mode():
            if not arrays:
                return m.predict_proba(m(t, from_features=from_features)).float().cpu().numpy(), out
            if "attention" in arrays:
                emb, attention = m.embed_with_attention(t, from_features=from_features)
                out["attention"] = attention.float().cpu().numpy()
            else:
                emb = m.embed(t, from_features=from_features)
            logits = m.head(emb) if self._forward_is_head_of_embed else m(t, from_features=from_features)
            if "embeddings" in arrays:
                out["embeddings"] = emb.reshape(emb.shape[0], -1).float().cpu().numpy()
            return m.predict_proba(logits).float().cpu().numpy(), out

    def threads_per_stream(self, streams: int) -> contextlib.AbstractContextManager[int]:
        return _torch_threads(streams)


class OrtBackend:
    """The network in ONNX Runtime (CPU); a waveform window goes through the model's torch
    front-end first, as with torch."""

    name = "onnxruntime"
    arrays: tuple[str, ...] = ()  # the export ends at the probabilities
    input_errors: tuple[type[BaseException], ...] = (Exception,)  # onnxruntime raises its own types

    def __init__(self, model: TaggingModel, checkpoint: Path, cache_dir: str | os.PathLike | None) -> None:
        _, self._ort = require_onnx()
        self.model = model
        root = Path(default_cache_dir() if cache_dir is None else cache_dir) / ONNX_DIR_NAME
        path = root / f"{checkpoint.stem}-{checkpoint_sha256(checkpoint)}.onnx"
        if not path.is_file():
            export_onnx(checkpoint, path, cache_dir=cache_dir)
        self.onnx_path = path
        self.session = ort_session(self._ort, path, torch.get_num_threads())
        self.input_name = self.session.get_inputs()[0].name

    def run(self, x: np.ndarray, from_features: bool, arrays: tuple[str, ...] = ()) -> tuple[np.ndarray, dict]:
        x = x.astype(np.float32, copy=False)
        if not from_features:
            with torch.inference_mode():
                x = self.model.frontend(torch.from_numpy(x)).float().numpy()
        return self.session.run(None, {self.input_name: x})[0], {}

    @contextlib.contextmanager
    def threads_per_stream(self, streams: int) -> Iterator[int]:
        """As torch's, with a session of that many threads (ONNX Runtime sessions may be
        run from several threads at once)."""
        with _torch_threads(streams) as share:
            whole = self.session
            if streams > 1:
                self.session = ort_session(self._ort, self.onnx_path, share)
            try:
                yield share
            finally:
                self.session = whole


def has_time_attention(model: TaggingModel) -> bool:
    """Whether ``model`` gives its attention over time steps (``embed_with_attention``)."""
    return callable(getattr(model, "embed_with_attention", None))


def check_arrays(backend: str, options: TagOptions, model: TaggingModel | None = None) -> None:
    """A UsageError for a per-window array ``options`` ask for that ``backend`` cannot give
    (with ``model``: or that model); made before the model loads and by ``Tagger.plan``."""
    can = {"torch": TorchBackend.arrays, "onnxruntime": OrtBackend.arrays}.get(backend, NETWORK_ARRAYS)
    for kind in options.arrays():
        if kind not in can:
            message = f"{kind}=True needs the torch backend, not backend={backend!r}"
            raise UsageError(message, arguments=(kind, "backend"))
    if options.attention and model is not None and not has_time_attention(model):
        name = getattr(model, "registry_name", "") or type(model).__name__
        raise UsageError(
            f"attention=True needs a model with self-attention over time, such as cnnsa; {name} has no attention "
            "over time",
            arguments=("attention",),
        )


def make_backend(
    name: str, model: TaggingModel, device: torch.device, checkpoint: Path, cache_dir: Any
) -> TorchBackend | OrtBackend:
    """The backend called ``name`` (torch | onnxruntime) for a loaded model."""
    if name not in BACKENDS:
        raise UsageError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}", arguments=("backend",))
    if name == "torch":
        return TorchBackend(model, device)
    if device.type != "cpu":
        raise UsageError(
            f"backend='onnxruntime' runs on the CPU, not {device.type}: pass device='cpu'",
            arguments=("backend", "device"),
        )
    return OrtBackend(model, checkpoint, cache_dir)
