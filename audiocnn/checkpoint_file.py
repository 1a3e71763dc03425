"""A checkpoint file read without torch: its content hash and its checked metadata.

Everything ``tag`` needs to know of a checkpoint before (or instead of) building the
model: the ``audiocnn`` metadata of the safetensors header (checked: keys and types),
its per-label thresholds, the shapes of its tensors, and the hash that names it in
results files and in the ONNX cache. Building and loading the model itself is
:mod:`audiocnn.models.checkpoint`'s job (torch).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors import safe_open

from audiocnn.constants import TASKS
from audiocnn.errors import CheckpointError

#: decision threshold of a multi-label tag whose checkpoint stores none (the sigmoid's midpoint)
DEFAULT_THRESHOLD = 0.5


def thresholds_of(meta: Mapping[str, Any], where: str | os.PathLike = "checkpoint") -> list[float] | None:
    """The per-label decision thresholds stored in checkpoint metadata, or None when the
    checkpoint has none (single-label models, pretrained imports, older checkpoints)."""
    raw = meta.get("thresholds")
    if raw is None:
        return None
    labels = meta.get("labels") or []
    ok = isinstance(raw, list) and len(raw) == len(labels)
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0 for v in raw)
    if not ok:
        raise CheckpointError(
            f"{where}: metadata 'thresholds' must be {len(labels)} numbers in [0, 1], one per label",
            hint="retrain, or remove the key to decide at 0.5",
        )
    return [float(v) for v in raw]


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """The first 16 hex digits of the SHA-256 of a checkpoint file's content: the model's
    identity in results files and ONNX export names."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="numpy") as f:
            raw = (f.metadata() or {}).get("audiocnn")
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    if not raw:
        raise CheckpointError(f"{path}: safetensors file without audiocnn metadata")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: corrupt audiocnn metadata ({exc})") from None
    _check_metadata(path, meta)
    return meta


#: what every checkpoint's metadata holds
REQUIRED_KEYS = ("model", "num_classes", "task", "frontend", "labels")


def _check_metadata(path: Path, meta: Any) -> None:
    """Keys and types of checkpoint metadata (what a damaged or hand-made file gets wrong)."""

    def bad(what: str) -> CheckpointError:
        return CheckpointError(
            f"{path}: checkpoint metadata {what}", hint="the file is damaged or was not written by audiocnn"
        )

    if not isinstance(meta, dict):
        raise bad("is not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise bad(f"lacks {', '.join(repr(k) for k in missing)}")
    n = meta["num_classes"]
    if not isinstance(meta["model"], str):
        raise bad(f"'model' must be a model name, got {meta['model']!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise bad(f"'num_classes' must be a whole number >= 1, got {n!r}")
    if meta["task"] not in TASKS:
        raise bad(f"'task' must be one of {', '.join(TASKS)}, got {meta['task']!r}")
    if not isinstance(meta["frontend"], dict) or not isinstance(meta.get("model_kwargs") or {}, dict):
        raise bad("'frontend' and 'model_kwargs' must be mappings")
    labels = meta["labels"]
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise bad("'labels' must be a list of names")


def tensor_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a safetensors file, from its header (nothing loaded)."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
