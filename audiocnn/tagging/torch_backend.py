"""The network in torch: the checkpoint loaded as the model it was trained as, on any
device (``backend="torch"``, and wherever a GPU is used). See
:mod:`audiocnn.tagging.backends` for what a backend is."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from audiocnn.devices import resolve_device
from audiocnn.features.frontends import MelStream
from audiocnn.features.streaming import FrameStream
from audiocnn.models.base import TaggingModel
from audiocnn.models.checkpoint import load_checkpoint, thresholds_of
from audiocnn.tagging.backends import ARRAYS, ModelInfo


def has_time_attention(model: TaggingModel) -> bool:
    """Whether ``model`` gives its attention over time steps (``embed_with_attention``)."""
    return callable(getattr(model, "embed_with_attention", None))


def model_info(model: TaggingModel, meta: dict, path: str | os.PathLike) -> ModelInfo:
    """What the tagger needs of a loaded model and its checkpoint metadata."""
    return ModelInfo(
        architecture=str(meta.get("model", "")),
        task=model.task,
        labels=[str(x) for x in meta.get("labels") or []],
        thresholds=thresholds_of(meta, path),
        frontend=model.frontend_config,
        sample_rate=int(model.sample_rate),
        input_length=int(model.input_length),
        input_frames=int(model.input_frames),
        time_attention=has_time_attention(model),
    )


class TorchBackend:
    """The model of checkpoint ``path`` in torch, on ``device`` (``auto``: cuda, mps, cpu)."""

    name = "torch"
    arrays = ARRAYS["torch"]  # attention: of a model with attention over time (has_time_attention)
    input_errors: tuple[type[BaseException], ...] = (RuntimeError,)

    def __init__(self, path: Path, device: str = "auto", num_threads: int | None = None) -> None:
        if num_threads is not None:
            torch.set_num_threads(int(num_threads))
        self.device = resolve_device(device)
        model, meta = load_checkpoint(path, map_location="cpu")
        self.model: TaggingModel = model.to(self.device).eval()
        self.meta = meta
        self.info = model_info(model, meta, path)
        # head(embed(x)) is forward(x) unless a model overrides forward; then run both.
        self._forward_is_head_of_embed = type(model).forward is TaggingModel.forward

    @property
    def on_cpu(self) -> bool:
        return self.device.type == "cpu"

    @property
    def threads(self) -> int:
        return torch.get_num_threads()

    def mel_stream(self) -> FrameStream:
        return MelStream(self.model.frontend, self.device)

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

    @contextlib.contextmanager
    def threads_per_stream(self, streams: int) -> Iterator[int]:
        before = torch.get_num_threads()
        share = max(1, before // max(1, int(streams)))
        torch.set_num_threads(share)  # threads started inside take this count when they first run torch
        try:
            yield share
        finally:
            torch.set_num_threads(before)
