"""Setting a run up: the dataset's task and labels, the model (from scratch or from a
checkpoint), where it runs, and what it is optimised for."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from audiocnn.constants import MULTI_LABEL, SINGLE_LABEL
from audiocnn.datasets.manifest import Manifest
from audiocnn.datasets.registry import get_dataset
from audiocnn.errors import AudiocnnError, CheckpointError, ConfigError, DatasetError
from audiocnn.models.checkpoint import load_weights, model_from_checkpoint, read_metadata
from audiocnn.models.registry import create_model
from audiocnn.pretrained import resolve_model
from audiocnn.progress import human_size
from audiocnn.splits import small_split_notes
from audiocnn.training import distributed as D
from audiocnn.training.config import TrainConfig
from audiocnn.training.embeddings import HeadOnly
from audiocnn.training.losses import TaggingLoss, class_weights

log = logging.getLogger("audiocnn.train")


# -- dataset -----------------------------------------------------------------------------


def check_dataset(config: TrainConfig, manifest: Manifest) -> str:
    """The task to train (the config's or the dataset's); refuses datasets a run cannot use."""
    if (
        config.split_scheme
        and config.split_scheme != manifest.split_scheme
        and _family_has_scheme(manifest.dataset, config.split_scheme)
    ):
        raise DatasetError(
            f"dataset {config.dataset!r} is prepared with split scheme {manifest.split_scheme!r}, "
            f"the config asks for {config.split_scheme!r}",
            hint=f"prepare it again with that split scheme, or `overrides=split_scheme={manifest.split_scheme}`",
            arguments=("overrides",),
        )
    task = config.task or manifest.task
    if manifest.task == MULTI_LABEL and task == SINGLE_LABEL:
        raise ConfigError(f"task=single-label on the multi-label dataset {config.dataset!r}: clips have several labels")
    counts = manifest.split_counts()
    for split in ("train", "valid"):
        if counts.get(split, 0) == 0:
            raise DatasetError(
                f"dataset {config.dataset!r} has no clips in its {split!r} split",
                hint=f"see `audiocnn info {config.dataset}`",
            )
    return task


#: what to do about a split too small to trust (train's words; prepare's name the flag)
SMALL_SPLIT_REMEDY = "use a larger split (prepare the dataset with another split scheme) or cross-validation"


def warn_small_splits(manifest: Manifest) -> None:
    """A warning per validation or test split too small to trust (:mod:`audiocnn.splits`)."""
    for note in small_split_notes(manifest.clips, manifest.labels):
        log.warning("%s: %s; %s", manifest.name, note, SMALL_SPLIT_REMEDY)


def _family_has_scheme(family: str, scheme: str) -> bool:
    """Whether datasets of ``family`` (gtzan, mtat, folder, ...) offer split ``scheme``.

    A config written for GTZAN's fault-filtered split, pointed with ``--set dataset=NAME``
    at a user's folder dataset, trains on that dataset's own split: there is nothing to
    mismatch. Asking GTZAN prepared with ``random`` for ``fault-filtered`` is an error.
    """
    try:
        return scheme in get_dataset(family).split_schemes
    except AudiocnnError:  # unknown family (e.g. a hand-written manifest): compare names only
        return True


def monitor_of(config: TrainConfig, task: str) -> tuple[str, bool]:
    """(metric that picks the best epoch, whether higher is better)."""
    name = config.monitor
    if name == "auto":
        name = "accuracy" if task == SINGLE_LABEL else "roc_auc_macro"
    if name in ("accuracy", "balanced_accuracy") and task != SINGLE_LABEL:
        raise ConfigError(f"monitor={name} is only defined for single-label tasks; use roc_auc_macro")
    return name, name != "valid_loss"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# -- model -------------------------------------------------------------------------------


def resolve_init(init: str) -> Path:
    """A checkpoint path, a run folder, or a pretrained model name (``audiocnn.pretrained``)."""
    try:
        return resolve_model(init)
    except CheckpointError as exc:
        raise ConfigError(f"init={init!r}: {exc.message}", hint=exc.hint) from None


def build_model(config: TrainConfig, labels: Sequence[str], task: str):
    """Create the model of ``config``; with ``init``, start from a checkpoint's weights
    (same architecture and front-end), re-initialising the head when the labels differ."""
    if not config.init:
        return create_model(config.model, num_classes=len(labels), task=task, **config.model_kwargs), None
    path = resolve_init(config.init)
    meta = read_metadata(path)
    if config.model and config.model != meta["model"]:
        raise ConfigError(
            f"init={config.init!r} is a {meta['model']!r} checkpoint but the config asks for model {config.model!r}",
            hint=f"set `overrides=model={meta['model']}` or leave model empty",
            arguments=("overrides",),
        )
    model = model_from_checkpoint(path, meta, config.model_kwargs)
    try:
        model.load_state_dict(load_weights(path, meta=meta), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: weights do not fit model {meta['model']!r} with these model_kwargs ({str(exc).splitlines()[0]})"
        ) from None
    same_head = list(meta.get("labels", [])) == list(labels) and meta.get("task") == task
    if not same_head:
        model.reset_head(len(labels))
    model.task = task
    info = {"path": str(path), "model": meta["model"], "head_reset": not same_head, "labels": meta.get("labels")}
    return model, info


def backbone_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The backbone's top-level blocks with parameters, input to output (registration
    order): what ``unfreeze_blocks`` counts from the end. The front-end and head are not blocks."""
    return [
        (name, child)
        for name, child in model.named_children()
        if name not in ("head", "frontend") and any(True for _ in child.parameters())
    ]


def freeze_backbone(model: nn.Module, unfreeze_blocks: int = 0) -> int:
    """Freeze every parameter outside the head and the last ``unfreeze_blocks`` backbone
    blocks; returns the number of frozen tensors."""
    blocks = backbone_blocks(model)
    if unfreeze_blocks > len(blocks):
        raise ConfigError(
            f"unfreeze_blocks={unfreeze_blocks} but {getattr(model, 'registry_name', 'the model')} has "
            f"{len(blocks)} backbone blocks ({', '.join(n for n, _ in blocks)})"
        )
    keep = {id(p) for p in model.head.parameters()}
    for _name, block in blocks[len(blocks) - unfreeze_blocks :] if unfreeze_blocks else []:
        keep |= {id(p) for p in block.parameters()}
    n = 0
    for p in model.parameters():
        if id(p) not in keep:
            p.requires_grad_(False)
            n += 1
    return n


def set_train_mode(model: nn.Module, frozen_backbone: bool, unfreeze_blocks: int = 0) -> None:
    """Train mode; with a frozen backbone its BatchNorm statistics and dropout stay in
    eval mode too (but for the last ``unfreeze_blocks`` blocks), so it is exactly unchanged."""
    model.train()
    if frozen_backbone:
        trained = {name for name, _ in backbone_blocks(model)[::-1][:unfreeze_blocks]}
        for name, child in model.named_children():
            if name != "head" and name not in trained:
                child.eval()


#: the model input of one batch may take at most this share of the machine's memory (the
#: network's activations take many times more, so a larger batch could not train here)
INPUT_MEMORY_SHARE = 8


def machine_memory() -> int:
    """Bytes of physical memory (what :func:`check_sizes` bounds a batch by)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: no bound from memory
        return 1 << 62


def check_sizes(config: TrainConfig, store: Any, crop: int, model: nn.Module) -> None:
    """Refuse sizes that only add padding, repeat work, or cannot fit in memory, before a
    loader pads a crop: a crop longer than both the model's input and the longest clip,
    more evaluation or embedding chunks than the clips hold distinct crops (beyond the
    defaults), and batches whose input alone takes over 1/8 of the machine's memory."""
    longest = {s: int(store.lengths(s).max(initial=0)) for s in ("train", "valid")}
    most, native = max(longest.values()), int(model.input_frames)
    unit = "frames" if store.dim > 1 else "samples"
    if config.crop_frames is not None and crop > max(native, most):
        raise ConfigError(
            f"config key 'crop_frames' must be at most {max(native, most)} for {config.dataset!r}, got {crop}: "
            f"its longest clip has {most} {unit} and {model.registry_name} takes {native}; "
            "a longer crop is only padding"
        )
    chunks = {"eval_chunks": "valid", "embedding_chunks": "train"} if uses_embedding_cache(config) else {}
    for key, split in {"eval_chunks": "valid", **chunks}.items():
        distinct = max(1, longest[split] - crop + 1)
        limit = max(getattr(TrainConfig, key), distinct)
        if getattr(config, key) > limit:
            raise ConfigError(
                f"config key {key!r} must be at most {limit} for {config.dataset!r}, got {getattr(config, key)}: "
                f"its {split} clips hold at most {distinct} distinct crops of {crop} {unit}"
            )
    budget = machine_memory() // INPUT_MEMORY_SHARE
    batches = {
        "batch_size": min(config.batch_size, store.num_clips("train")),
        "eval_batch_size x eval_chunks": min(config.eval_batch_size, store.num_clips("valid")) * config.eval_chunks,
    }
    for keys, crops in batches.items():
        need = crops * crop * max(1, store.dim) * 4  # float32 input
        if need > budget:
            raise ConfigError(
                f"config {keys} = {crops} crops of {crop} {unit} per batch: {human_size(need)} of input, "
                f"more than 1/{INPUT_MEMORY_SHARE} of this machine's memory ({human_size(machine_memory())})",
                hint="make them or crop_frames smaller",
            )


def uses_embedding_cache(config: TrainConfig) -> bool:
    """Whether a run trains its head on cached embeddings (training/embeddings.py): a frozen
    backbone with nothing unfrozen and no augmentation of its input."""
    cacheable = config.freeze_backbone and config.embedding_cache and config.unfreeze_blocks == 0
    return cacheable and not config.augment.on()


def place_model(
    raw: nn.Module, config: TrainConfig, device: torch.device, info: D.DistInfo
) -> tuple[nn.Module, nn.Module, list[nn.Parameter]]:
    """Freeze, move and wrap (DDP, torch.compile) the model; returns (the model to call,
    the same unwrapped, the parameters to optimise). On the embedding-cache path the model
    to call is the head alone (:class:`HeadOnly`), fed cached embeddings."""
    if config.freeze_backbone:
        n = freeze_backbone(raw, config.unfreeze_blocks)
        what = f"the head and the last {config.unfreeze_blocks} blocks" if config.unfreeze_blocks else "the head only"
        log.info("freeze_backbone: %d parameter tensors frozen, training %s", n, what)
    raw.to(device)
    if config.channels_last:
        raw.to(memory_format=torch.channels_last)
    core: nn.Module = HeadOnly(raw) if uses_embedding_cache(config) else raw
    model = core
    if info.enabled:
        model = nn.parallel.DistributedDataParallel(core, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        model = torch.compile(model)
    params = [p for p in raw.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("no trainable parameters (freeze_backbone left nothing to train)")
    return model, core, params


def make_loss(config: TrainConfig, manifest: Manifest, task: str, device: torch.device) -> TaggingLoss:
    """The task's loss, with ``class_weighting: balanced`` weights from the train split."""
    labels = list(manifest.labels)
    weight = None
    if config.class_weighting == "balanced":
        train_clips = manifest.split("train")
        cnt = np.zeros(len(labels))
        for clip in train_clips:
            cnt[manifest.targets(clip)] += 1
        weight = class_weights(cnt, len(train_clips), task)
    return TaggingLoss(task, len(labels), label_smoothing=config.label_smoothing, weight=weight).to(device)


def describe(
    model: nn.Module,
    config: TrainConfig,
    task: str,
    n_train: int,
    n_valid: int,
    steps: int,
    device: torch.device,
    amp_dtype: Any,
    info: D.DistInfo,
) -> str:
    """The one log line that says what is about to be trained."""
    return (
        f"training {model.registry_name} on {config.dataset}: {n_train} train / {n_valid} valid clips, {task}, "
        f"{steps} steps/epoch, device {device}"
        + (f", amp {str(amp_dtype).replace('torch.', '')}" if amp_dtype else "")
        + (f", {info.world_size} processes" if info.enabled else "")
    )
