"""One checkpoint holds everything needed to rebuild and use a model.

``*.safetensors`` with the weights and, in the safetensors metadata under the key
``audiocnn``, a JSON object::

    {"format": 1, "model": name, "model_kwargs": {...}, "num_classes": n, "task": ...,
     "frontend": {front-end config dict}, "sample_rate": sr, "input_length": samples,
     "labels": [...], "metrics": {...}, "version": audiocnn version, "source": "...",
     "tensor_sha256": hex digest of the weights (see tensor_digest),
     "thresholds": [...]}

``thresholds`` (multi-label models trained by audiocnn) holds one decision threshold per
label, aligned with ``labels``: a tag is predicted when its score reaches it. ``train``
picks them on the validation split (:func:`thresholds_of` reads them back); imported
pretrained models carry none.

Metadata is checked before anything is built from it: its keys and types when it is read
(:func:`read_metadata`), then the shape of every parameter of the model it describes
(built on the ``meta`` device, which allocates nothing) against the tensors the
safetensors header lists (:func:`model_from_checkpoint`); so a ``num_classes`` or a
``model_kwargs`` value that does not fit the weights is one line, never a 1 TB allocation.

``tag`` and ``evaluate`` need nothing else. safetensors checks the header but not the
bytes of the tensors, so a flipped bit in a weight would load silently and tag with
nonsense: every audiocnn checkpoint carries a digest of its tensors, and
:func:`load_weights` (the one reader of weights here) refuses a file whose tensors no
longer match it. Checkpoints written before the digest existed still load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save

from audiocnn import __version__
from audiocnn.checkpoint_file import (  # noqa: F401  (re-exported: the file-level reading, torch-free)
    DEFAULT_THRESHOLD,
    REQUIRED_KEYS,
    checkpoint_sha256,
    read_metadata,
    tensor_shapes,
    thresholds_of,
)
from audiocnn.errors import CheckpointError, ConfigError, ModelError
from audiocnn.features.frontends import config_from_dict
from audiocnn.fileio import atomic_write_bytes
from audiocnn.models.registry import create_model

log = logging.getLogger("audiocnn.models.checkpoint")


#: Metadata key holding :func:`tensor_digest` of the weights.
DIGEST_KEY = "tensor_sha256"


def model_metadata(model, labels: list[str], metrics: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """Metadata describing ``model`` (a TaggingModel) for :func:`save_checkpoint`."""
    if len(labels) != model.num_classes:
        raise CheckpointError(f"{len(labels)} labels for a model with {model.num_classes} outputs")
    meta = {
        "format": 1,
        "model": model.registry_name,
        "model_kwargs": dict(model.init_kwargs),
        "num_classes": model.num_classes,
        "task": model.task,
        "frontend": model.frontend_config.to_dict(),
        "sample_rate": model.sample_rate,
        "input_length": model.input_length,
        "labels": list(labels),
        "metrics": dict(metrics or {}),
        "version": __version__,
    }
    meta.update(extra)
    return meta


def tensor_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor in name order (name, dtype, shape, raw bytes): a property of
    the weights themselves, so it is the same whatever order or padding the file uses."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, model, meta: dict[str, Any]) -> Path:
    """Write weights + metadata (with the weights' digest) atomically as safetensors."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {**meta, DIGEST_KEY: tensor_digest(state)}
    blob = save(state, metadata={"audiocnn": json.dumps(meta)})
    atomic_write_bytes(path, blob)
    return path


def model_from_checkpoint(path: str | os.PathLike, meta: dict[str, Any], model_kwargs: dict[str, Any] | None = None):
    """The (untrained) model ``meta`` describes, ``model_kwargs`` over its own, built only
    after a skeleton on the ``meta`` device showed that every parameter has the shape of
    the file's tensor of that name. CheckpointError (one line) otherwise."""
    path = Path(path)
    kwargs = {**(meta.get("model_kwargs") or {}), **(model_kwargs or {})}
    try:
        kwargs["frontend"] = config_from_dict(meta["frontend"])
    except ConfigError as exc:
        raise CheckpointError(f"{path}: checkpoint metadata 'frontend': {exc.message}") from None
    args = {"name": meta["model"], "num_classes": meta["num_classes"], "task": meta["task"], **kwargs}
    try:
        with torch.device("meta"):
            skeleton = _create(path, args)
    except NotImplementedError:  # a model that needs real tensors to build: checked when its weights load
        skeleton = None
    if skeleton is not None:
        _check_shapes(path, meta, kwargs, skeleton)
    if len(meta["labels"]) != meta["num_classes"]:
        raise CheckpointError(
            f"{path}: checkpoint metadata has {len(meta['labels'])} labels for {meta['num_classes']} outputs",
            hint="the file is damaged or was not written by audiocnn",
        )
    return _create(path, args)


def _create(path: Path, args: dict[str, Any]):
    try:
        return create_model(**args)
    except ModelError as exc:
        raise CheckpointError(f"{path}: {exc.message}") from None
    except (TypeError, ValueError, ConfigError, RuntimeError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(
            f"{path}: checkpoint metadata does not describe a {args['name']!r} model ({first})"
        ) from None


def _check_shapes(path: Path, meta: dict[str, Any], kwargs: dict[str, Any], skeleton) -> None:
    want = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    have = tensor_shapes(path)
    missing, unexpected = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit model {meta['model']!r} "
            f"(missing {len(missing)}: {missing[:3]}, unexpected {len(unexpected)}: {unexpected[:3]})"
        )
    for name in sorted(want):
        if want[name] != have[name]:
            shown = {k: v for k, v in kwargs.items() if k != "frontend"}
            raise CheckpointError(
                f"{path}: weights do not fit the metadata: model {meta['model']!r} with "
                f"num_classes={meta['num_classes']} and model_kwargs {shown} has {name} of shape "
                f"{list(want[name])}, the file holds {list(have[name])}"
            )


def load_weights(
    path: str | os.PathLike, device: str | torch.device = "cpu", meta: dict[str, Any] | None = None
) -> dict[str, torch.Tensor]:
    """The tensors of an audiocnn checkpoint, verified against the digest saved with them.

    Every place that loads weights goes through here, so a damaged file is one clear
    error rather than a model that runs and answers garbage.
    """

    path = Path(path)
    meta = read_metadata(path) if meta is None else meta
    try:
        state = load_file(str(path), device=str(device))
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    expected = meta.get(DIGEST_KEY)
    if expected is None:
        log.debug("%s: written before checkpoints carried a tensor checksum; weights not verified", path)
    elif tensor_digest(state) != expected:
        again = "delete it to import it again" if meta.get("pretrained") else "re-download or retrain it"
        raise CheckpointError(f"{path} is corrupt: tensor checksum mismatch; {again}")
    return state


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Rebuild the model of a checkpoint; returns ``(model, metadata)`` in eval mode."""
    path = Path(path)
    meta = read_metadata(path)
    model = model_from_checkpoint(path, meta)
    state = load_weights(path, map_location, meta)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit model {meta['model']!r} "
            f"(missing {len(missing)}: {missing[:3]}, unexpected {len(unexpected)}: {unexpected[:3]})"
        )
    model.eval()
    return model, meta
