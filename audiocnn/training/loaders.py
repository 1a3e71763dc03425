"""DataLoaders over a feature store: random crops for training, fixed chunks for validation.

Reproducibility: the data order and crops of an epoch depend only on ``(seed, epoch)``
(a seeded ``DistributedSampler``, the store dataset's ``set_epoch`` and a loader generator
re-seeded every epoch, see :meth:`TrainData.start_epoch`), whatever the number of worker
processes, so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from audiocnn.errors import DatasetError
from audiocnn.features.store import FeatureStore, StoreDataset
from audiocnn.training import distributed as D
from audiocnn.training.config import TrainConfig
from audiocnn.workers import usable_cpus

log = logging.getLogger("audiocnn.train")


class _Indexed(Dataset):
    """(index, x, y) so gathered predictions can be put back in clip order."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        idx = self.indices[i]
        x, y = self.dataset[idx]
        return idx, x, y


def _seed_worker(worker_id: int) -> None:
    # numpy/python RNGs in workers follow torch's per-worker seed (itself from the loader's generator)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def eval_loader(
    dataset: Dataset, indices: Sequence[int], *, batch_size: int, workers: int, pin_memory: bool, seed: int = 0
) -> DataLoader:
    return DataLoader(
        _Indexed(dataset, indices),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
        worker_init_fn=_seed_worker,
        generator=_generator(seed),
    )


def usable_workers(requested: int, world_size: int) -> int:
    """Loader workers per process, at most the CPUs this process may use divided among the
    local ranks: more only adds start-up time and memory. Crops do not depend on it."""
    cpus = usable_cpus()
    local = max(1, min(world_size, int(os.environ.get("LOCAL_WORLD_SIZE", world_size))))
    cap = max(0, cpus // local)
    if requested > cap:
        log.info("workers: %d requested, %d CPUs available per process; using %d", requested, cap, cap)
    return max(0, min(requested, cap))


@dataclass
class TrainData:
    """The training and validation loaders of a run, and what re-seeds them per epoch."""

    train_set: Dataset  # StoreDataset, or EmbeddingDataset on the cached frozen-backbone path
    valid_set: Dataset
    sampler: DistributedSampler
    generator: torch.Generator
    train: DataLoader
    valid: DataLoader
    steps_per_epoch: int
    seed: int

    def start_epoch(self, epoch: int) -> None:
        self.train_set.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        self.generator.manual_seed(self.seed * 1_000_003 + epoch)


def make_loaders(store: FeatureStore, config: TrainConfig, crop: int, info: D.DistInfo, *, cuda: bool) -> TrainData:
    """Random crops of the train split, ``eval_chunks`` chunks of each valid clip (sharded)."""
    train_set = StoreDataset(store, "train", mode="train", crop_frames=crop, seed=config.seed)
    valid_set = StoreDataset(
        store, "valid", mode="eval", crop_frames=crop, eval_chunks=config.eval_chunks, seed=config.seed
    )
    if len(train_set) == 0 or len(valid_set) == 0:
        raise DatasetError(
            f"feature store of {config.dataset!r} has no usable clips in train or valid",
            hint="see failures.jsonl in the store",
        )
    return loaders_for(
        train_set, valid_set, config, info, cuda=cuda, workers=usable_workers(config.workers, info.world_size)
    )


def loaders_for(
    train_set: Dataset, valid_set: Dataset, config: TrainConfig, info: D.DistInfo, *, cuda: bool, workers: int
) -> TrainData:
    """The loaders of a run over any pair of datasets with ``set_epoch`` (feature-store
    crops, or cached embeddings): seeded order, sharded validation."""
    sampler = DistributedSampler(
        train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=config.seed, drop_last=False
    )
    generator = _generator(config.seed)
    train = DataLoader(
        train_set,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=cuda,
        worker_init_fn=_seed_worker,
        generator=generator,
        # a last batch of one example breaks BatchNorm; drop it only then
        drop_last=len(sampler) % config.batch_size == 1 and len(sampler) > 1,
    )
    valid = eval_loader(
        valid_set,
        D.shard_indices(len(valid_set), info),
        batch_size=config.eval_batch_size,
        workers=workers,
        pin_memory=cuda,
        seed=config.seed,
    )
    steps = len(train)
    if config.max_steps_per_epoch:
        steps = min(steps, config.max_steps_per_epoch)
    return TrainData(train_set, valid_set, sampler, generator, train, valid, steps, config.seed)
