"""Convert the musicnn package's TensorFlow checkpoints into audiocnn checkpoints: map the
variables onto our ``musicnn`` and ``vgg`` models and write ordinary checkpoints.

This is the part of the pretrained models that needs torch; what the package holds and
where an import lives in the cache is :mod:`audiocnn.pretrained.catalog`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from audiocnn.constants import MULTI_LABEL
from audiocnn.errors import CheckpointError
from audiocnn.models.checkpoint import model_metadata, save_checkpoint
from audiocnn.models.registry import create_model
from audiocnn.pretrained.catalog import (
    MUSICNN_LICENSE,
    MUSICNN_MODELS,
    MUSICNN_VERSION,
    PackageSource,
    content_key,
    import_file_name,
    read_labels,
    read_reported_metrics,
)
from audiocnn.pretrained.tf_bundle import TensorBundle

log = logging.getLogger(__name__)


def read_bundle(src: PackageSource, folder: str) -> TensorBundle:
    index = src.find(f"{folder}/.index")
    if index is None:
        raise CheckpointError(f"{src.root}: model folder {folder}/ with a .index file not found")
    prefix = index[: -len(".index")]
    bundle = TensorBundle(src.read(index), {}, src.describe(prefix))
    n = bundle.header.num_shards
    shards = {}
    for i in range(n):
        member = f"{prefix}.data-{i:05d}-of-{n:05d}"
        if member not in src.members:
            raise CheckpointError(f"{src.describe(member)}: checkpoint data file is missing")
        shards[i] = src.read(member)
    bundle._shards = shards
    return bundle


# --------------------------------------------------------------------------- mapping


def _conv2d(k: np.ndarray) -> np.ndarray:
    return k.transpose(3, 2, 0, 1)  # TF HWIO -> torch OIHW


def _conv1d_from_full_width(k: np.ndarray) -> np.ndarray:
    # musicnn's mid-end conv is a 2-D conv whose kernel spans all channels laid out as
    # width with one input channel: (time, channels, 1, out) -> Conv1d (out, channels, time).
    return k[:, :, 0, :].transpose(2, 1, 0)


def _dense(k: np.ndarray) -> np.ndarray:
    return k.T


def _bn(tf_name: str, ours: str) -> list[tuple[str, str, Callable[[np.ndarray], np.ndarray] | None]]:
    return [
        (f"{tf_name}/gamma", f"{ours}.weight", None),
        (f"{tf_name}/beta", f"{ours}.bias", None),
        (f"{tf_name}/moving_mean", f"{ours}.running_mean", None),
        (f"{tf_name}/moving_variance", f"{ours}.running_var", None),
    ]


def _layer(tf_name: str, ours: str, fn) -> list[tuple[str, str, Callable[[np.ndarray], np.ndarray] | None]]:
    return [(f"{tf_name}/kernel", f"{ours}.weight", fn), (f"{tf_name}/bias", f"{ours}.bias", None)]


def _numbered(base: str, i: int) -> str:
    return base if i == 0 else f"{base}_{i}"


def variable_map(model) -> list[tuple[str, str, Callable[[np.ndarray], np.ndarray] | None]]:
    """``(tf variable, our state-dict key, transform)`` for a musicnn or vgg model.

    TF-1 layers are named by creation order (``conv2d``, ``conv2d_1``, ...,
    ``batch_normalization_N``), so the map follows the order musicnn's code builds them.
    """
    pairs = []
    if model.registry_name == "musicnn":
        convs = [f"timbral.{i}" for i in range(len(model.timbral))]
        convs += [f"temporal.{i}" for i in range(len(model.temporal))]
        bn = 0
        pairs += _bn(_numbered("batch_normalization", bn), "bn_input")
        for i, ours in enumerate(convs):
            pairs += _layer(_numbered("conv2d", i), f"{ours}.conv", _conv2d)
            bn += 1
            pairs += _bn(_numbered("batch_normalization", bn), f"{ours}.bn")
        for j in range(len(model.midend)):
            pairs += _layer(_numbered("conv2d", len(convs) + j), f"midend.{j}.conv", _conv1d_from_full_width)
            bn += 1
            pairs += _bn(_numbered("batch_normalization", bn), f"midend.{j}.bn")
        pairs += _bn(_numbered("batch_normalization", bn + 1), "bn_pool")
        pairs += _layer("dense", "dense", _dense)
        pairs += _bn(_numbered("batch_normalization", bn + 2), "bn_dense")
        pairs += _layer("dense_1", "head.1", _dense)
        return pairs
    if model.registry_name == "vgg":
        pairs += _bn("batch_normalization", "bn_input")
        for i in range(len(model.blocks)):
            pairs += _layer(f"{i + 1}CNN", f"blocks.{i}.conv", _conv2d)
            pairs += _bn(f"batch_normalization_{i + 1}", f"blocks.{i}.bn")
        pairs += _layer("dense", "head.1", _dense)
        return pairs
    raise CheckpointError(f"no TensorFlow variable map for model {model.registry_name!r}")


def load_tf_weights(model, bundle: TensorBundle) -> None:
    """Copy every mapped TF variable into ``model``; shapes must match exactly."""
    state = model.state_dict()
    mapping = variable_map(model)
    covered = set()
    new_state = {}
    for tf_name, key, fn in mapping:
        if tf_name not in bundle:
            raise CheckpointError(f"{bundle.source}.index: variable {tf_name!r} (for {key}) not in checkpoint")
        value = bundle.read(tf_name)
        value = fn(value) if fn is not None else value
        if key not in state:
            raise CheckpointError(f"internal: model has no parameter {key}")
        if tuple(value.shape) != tuple(state[key].shape):
            raise CheckpointError(
                f"{bundle.source}.index: variable {tf_name!r} has shape {tuple(value.shape)}, "
                f"{key} needs {tuple(state[key].shape)}"
            )
        new_state[key] = torch.from_numpy(np.ascontiguousarray(value)).to(state[key].dtype)
        covered.add(key)
    missing = [k for k in state if k not in covered and not k.endswith("num_batches_tracked")]
    if missing:
        raise CheckpointError(f"{bundle.source}: no TF variable for {missing[:5]}")
    model.load_state_dict(new_state, strict=False)


def build_pretrained(src: PackageSource, name: str):
    """``(model, labels, metrics)`` for pretrained ``name`` read from ``src``, in eval mode."""
    spec = MUSICNN_MODELS[name]
    labels = read_labels(src, spec.labels_var)
    bundle = read_bundle(src, spec.folder)
    model = create_model(spec.model, num_classes=len(labels), task=MULTI_LABEL)
    load_tf_weights(model, bundle)
    model.eval()
    return model, labels, read_reported_metrics(src, spec.folder)


def import_models(src: PackageSource, out_dir: Path, names: list[str]) -> list[Path]:
    """Convert ``names`` from ``src`` into ``<out_dir>/<name>-<content key>.safetensors``."""
    paths = []
    for name in names:
        spec = MUSICNN_MODELS[name]
        key = content_key(src, name)
        model, labels, metrics = build_pretrained(src, name)
        meta = model_metadata(
            model,
            labels,
            metrics=metrics,
            source=f"musicnn {MUSICNN_VERSION} {spec.folder} (imported from {src.root})",
            license=MUSICNN_LICENSE,
            pretrained=name,
            dataset=spec.dataset,
            description=spec.description,
        )
        path = save_checkpoint(Path(out_dir) / import_file_name(name, key), model, meta)
        log.debug("wrote %s", path)
        paths.append(path)
    return paths
