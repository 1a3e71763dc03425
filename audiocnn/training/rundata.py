"""The data one run trains on: the feature store of exactly its model's front-end config
(extracted by rank 0 where missing, the other ranks wait, see
:func:`audiocnn.training.distributed.main_first`) and its loaders, in one of three forms:
plain crops, waveform crops for waveform augmentation, or a frozen backbone's cached
embeddings."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from audiocnn.errors import DatasetError
from audiocnn.features.frontends import FrontendConfig, WaveformConfig
from audiocnn.features.store import FeatureStore, StoreDataset
from audiocnn.models.base import samples_for_frames
from audiocnn.training import distributed as D
from audiocnn.training import setup as S
from audiocnn.training.augment import WorkerAugment
from audiocnn.training.config import TrainConfig
from audiocnn.training.data import open_dataset_store
from audiocnn.training.embeddings import EmbeddingDataset, cached_embeddings
from audiocnn.training.engine import amp_dtype_for, make_autocast
from audiocnn.training.loaders import TrainData, loaders_for, make_loaders, usable_workers

log = logging.getLogger("audiocnn.train")


@dataclass
class RunData:
    """What :func:`run_data` needs of a run."""

    config: TrainConfig
    model: nn.Module  # the unwrapped model (its front-end config picks the store)
    labels: list[str]
    data_dir: Path
    device: torch.device
    info: D.DistInfo
    progress: bool
    wave_frontend: bool  # a mel model trains from waveform crops (waveform augmentation)

    @property
    def dataset_dir(self) -> Path:
        return self.data_dir / self.config.dataset

    def store(self, frontend: FrontendConfig) -> FeatureStore:
        """The store of ``frontend``: rank 0 opens (extracting where missing), the others
        then open what it finished."""
        return D.main_first(
            self.info,
            lambda main: open_dataset_store(self.dataset_dir, frontend, progress=self.progress and main),
        )


def run_data(run: RunData) -> TrainData:
    """The loaders of ``run`` over the store of its model's front-end config."""
    c = run.config
    store = run.store(run.model.frontend_config)
    if list(store.labels) != run.labels:
        raise DatasetError(
            f"feature store of {c.dataset!r} has other labels than its manifest; prepare the dataset again"
        )
    crop = int(c.crop_frames or run.model.input_frames)
    S.check_sizes(c, store, crop, run.model)
    if S.uses_embedding_cache(c):
        return _embedding_data(run, store, crop)
    if c.augment.waveform or c.augment.in_workers:
        return _augmented_data(run, store, crop)
    return make_loaders(store, c, crop, run.info, cuda=run.device.type == "cuda")


def _augmented_data(run: RunData, store: FeatureStore, crop: int) -> TrainData:
    """Waveform training crops for waveform augmentation (a mel model then computes its
    front-end on the device, see :class:`audiocnn.training.augment.BatchAugment`), the
    usual validation chunks."""
    c, train_store, train_crop = run.config, store, crop
    if run.wave_frontend:
        train_store = run.store(WaveformConfig(sample_rate=run.model.sample_rate))
        train_crop = samples_for_frames(run.model.frontend_config, crop)
    train_set: Any = StoreDataset(train_store, "train", mode="train", crop_frames=train_crop, seed=c.seed)
    valid_set = StoreDataset(store, "valid", mode="eval", crop_frames=crop, eval_chunks=c.eval_chunks, seed=c.seed)
    if len(train_set) == 0 or len(valid_set) == 0:
        raise DatasetError(f"feature store of {c.dataset!r} has no usable clips in train or valid")
    if c.augment.in_workers:
        train_set = WorkerAugment(train_set, c.augment, run.model.sample_rate)
    workers = usable_workers(c.workers, run.info.world_size)
    return loaders_for(train_set, valid_set, c, run.info, cuda=run.device.type == "cuda", workers=workers)


def _embedding_data(run: RunData, store: FeatureStore, crop: int) -> TrainData:
    """Loaders over the frozen backbone's cached embeddings (computed by rank 0 where missing)."""
    c = run.config
    if store.num_clips("train") == 0 or store.num_clips("valid") == 0:
        raise DatasetError(f"feature store of {c.dataset!r} has no usable clips in train or valid")
    amp = amp_dtype_for(c.amp, run.device)
    run.model.to(run.device)
    options = {
        "crop": crop,
        "chunks": {"train": c.embedding_chunks, "valid": c.eval_chunks},
        "device": run.device,
        "autocast": make_autocast(run.device, amp),
        "precision": str(amp),
    }
    root = run.dataset_dir / "embeddings"
    t = time.perf_counter()
    emb = D.main_first(
        run.info,
        lambda main: cached_embeddings(
            run.model, store, root, **({"progress": run.progress} if main else {"compute": False}), **options
        ),
    )
    if run.info.is_main:
        log.info("embedding cache: %.1f s; each epoch trains the head on cached embeddings", time.perf_counter() - t)
    train_set = EmbeddingDataset(emb["train"], store.targets("train"), mode="train", seed=c.seed)
    valid_set = EmbeddingDataset(emb["valid"], store.targets("valid"), mode="eval", seed=c.seed)
    return loaders_for(train_set, valid_set, c, run.info, cuda=run.device.type == "cuda", workers=0)
