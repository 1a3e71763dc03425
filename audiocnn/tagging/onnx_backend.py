"""``tag --backend onnxruntime``: the network runs in ONNX Runtime, the rest as usual.

The model is exported once (:func:`audiocnn.tagging.export.export_onnx`, verified against
torch) into ``<data dir>/onnx/``, named by the checkpoint's content hash, and reused. The
song is decoded, framed and put through the front-end exactly as with torch; only the
network's forward pass changes, so the scores equal torch's to about 1e-7. On the 2-core
CPU it was measured on, ONNX Runtime ran musicnn's network 1.28x faster per window (README,
"Export to ONNX").
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audiocnn.constants import ONNX_DIR_NAME, default_data_dir
from audiocnn.errors import ModelError, UsageError
from audiocnn.tagging.export import export_onnx, ort_session, require_onnx
from audiocnn.tagging.library import checkpoint_sha256
from audiocnn.tagging.tagger import Tagger

BACKENDS = ("torch", "onnxruntime")


class OnnxTagger(Tagger):
    """A :class:`Tagger` whose network runs in ONNX Runtime (CPU)."""

    def __init__(self, checkpoint_or_name: Any, *, data_dir: str | os.PathLike | None = None, **kwargs: Any) -> None:
        _, ort = require_onnx()
        super().__init__(checkpoint_or_name, data_dir=data_dir, **kwargs)
        if self.device.type != "cpu":
            raise UsageError(f"--backend onnxruntime runs on the CPU, not {self.device.type}; add --device cpu")
        root = Path(default_data_dir() if data_dir is None else data_dir) / ONNX_DIR_NAME
        path = root / f"{self.path.stem}-{checkpoint_sha256(self.path)}.onnx"
        if not path.is_file():
            export_onnx(self.path, path, data_dir=data_dir)
        self.onnx_path = path
        self._ort = ort
        self.session = ort_session(ort, path, torch.get_num_threads())
        self.input_name = self.session.get_inputs()[0].name

    @contextlib.contextmanager
    def threads_per_stream(self, streams: int) -> Iterator[int]:
        """As :meth:`Tagger.threads_per_stream`, with a session of that many threads (ONNX
        Runtime sessions may be run from several threads at once)."""
        with super().threads_per_stream(streams) as share:
            whole = self.session
            if streams > 1:
                self.session = ort_session(self._ort, self.onnx_path, share)
            try:
                yield share
            finally:
                self.session = whole

    def _run(self, batch: list[np.ndarray], from_features: bool, want_emb: bool, custom: bool):
        if want_emb:
            raise UsageError("embeddings (--embeddings) need the torch backend: leave out --backend onnxruntime")
        x = np.stack(batch).astype(np.float32, copy=False)
        if not from_features:
            with torch.inference_mode():
                x = self.model.frontend(torch.from_numpy(x)).float().numpy()
        self._note_batch(x.shape[0])
        try:
            proba = self.session.run(None, {self.input_name: x})[0]
        except Exception as exc:  # onnxruntime raises its own exception types for bad shapes
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(
                f"model {self.name!r} (onnxruntime) cannot take windows of shape {tuple(x.shape[1:])} ({first[:200]})",
                hint=f"leave out window (--window) to use its native {self.input_seconds:.2f} s",
            ) from None
        return proba, None


def make_tagger(backend: str, checkpoint_or_name: Any, **kwargs: Any) -> Tagger:
    """A Tagger for ``backend`` (torch | onnxruntime)."""
    if backend not in BACKENDS:
        raise UsageError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    kind = OnnxTagger if backend == "onnxruntime" else Tagger
    return kind(checkpoint_or_name, **kwargs)
