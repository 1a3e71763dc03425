"""Cached embeddings of a frozen backbone: transfer learning that costs a head, not a network.

With ``freeze_backbone: true`` the backbone (in eval mode, see ``setup.set_train_mode``)
maps a crop to the same embedding in every epoch, so it is computed once: for every clip
of the train and valid splits, at evenly spaced chunks (``embedding_chunks`` per training
clip, ``eval_chunks`` per validation clip, the positions validation uses anyway), and
saved under ``<dataset>/embeddings/<model>-<key>/``. The key covers what the numbers
depend on: the backbone's weights (a digest of every tensor outside the head, so the
checkpoint ``init`` names), the architecture and its kwargs, the front-end config and the
feature store it reads (its clips), the crop length, the chunk counts and the precision.
A later run with the same key loads the file instead of running the network.

An epoch then draws one cached chunk per training clip (the chunk index depends only on
``(seed, epoch, clip)``, like a random crop) and trains the head on it; validation averages
the head's probabilities over a clip's chunks exactly as the uncached path does. The one
difference from the uncached frozen path: crops start at ``embedding_chunks`` fixed
positions instead of anywhere in the clip.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from audiocnn.errors import DatasetError
from audiocnn.features.store import FeatureStore, StoreDataset
from audiocnn.fileio import atomic_write_bytes, atomic_write_npy
from audiocnn.models.checkpoint import tensor_digest
from audiocnn.progress import progress_bar

log = logging.getLogger("audiocnn.train")

CACHE_FORMAT = 1


class HeadOnly(nn.Module):
    """The head of a model called like the model on cached embeddings
    (``forward(x, from_features=True)``), so the training engine runs it unchanged."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.head = model.head

    def forward(self, x: torch.Tensor, *, from_features: bool = True) -> torch.Tensor:
        del from_features
        return self.head(x)


def backbone_digest(model: nn.Module) -> str:
    """Digest of every tensor outside the head: what the embeddings depend on."""
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    return tensor_digest(state)


def cache_key(model: nn.Module, store: FeatureStore, crop: int, chunks: dict[str, int], precision: str) -> str:
    """16 hex digits identifying one set of cached embeddings (see the module docstring)."""
    ident = {
        "format": CACHE_FORMAT,
        "model": getattr(model, "registry_name", type(model).__name__),
        "model_kwargs": getattr(model, "init_kwargs", {}),
        "backbone": backbone_digest(model),
        "frontend": store.config.hash,
        "store": store.meta.get("manifest_fingerprint"),
        "clips": {s: store.clip_ids(s) for s in sorted(chunks)},
        "crop": int(crop),
        "chunks": chunks,
        "precision": precision,
    }
    return hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


@torch.no_grad()
def compute_embeddings(
    model: nn.Module,
    store: FeatureStore,
    split: str,
    *,
    crop: int,
    chunks: int,
    device: torch.device,
    autocast: Callable[[], Any],
    batch_clips: int = 4,
    progress: bool = False,
) -> np.ndarray:
    """``(clips, chunks, D)`` float32 embeddings of ``chunks`` evenly spaced crops per clip
    of ``split`` (the crops validation scores), with the model in eval mode."""
    dataset = StoreDataset(store, split, mode="eval", crop_frames=crop, eval_chunks=chunks)
    loader = DataLoader(dataset, batch_size=batch_clips, shuffle=False, num_workers=0)
    was_training = model.training
    model.eval()
    out = []
    try:
        with progress_bar(f"embedding {split}", len(loader), enabled=progress) as advance:
            for x, _y in loader:
                b, n = x.shape[0], x.shape[1]
                with autocast():
                    emb = model.embed(x.reshape(b * n, *x.shape[2:]).to(device), from_features=True)
                out.append(emb.float().reshape(b, n, -1).cpu().numpy())
                advance(1)
    finally:
        model.train(was_training)
    return np.concatenate(out).astype(np.float32)


def cached_embeddings(
    model: nn.Module,
    store: FeatureStore,
    cache_root: Path,
    *,
    crop: int,
    chunks: dict[str, int],
    device: torch.device,
    autocast: Callable[[], Any],
    precision: str,
    compute: bool = True,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """``{split: (clips, chunks, D)}`` from the cache, computed and saved first where
    missing (``compute=False``: only read, for DDP ranks other than 0)."""
    key = cache_key(model, store, crop, chunks, precision)
    folder = cache_root / f"{getattr(model, 'registry_name', 'model')}-{key}"
    out = {}
    for split, n in chunks.items():
        path = folder / f"{split}.npy"
        if path.is_file():
            try:
                arr = np.load(path)
                if arr.ndim == 3 and arr.shape[:2] == (store.num_clips(split), n):
                    out[split] = arr
                    continue
            except (OSError, ValueError) as exc:
                log.warning("%s: unreadable cached embeddings (%s); computing them again", path, exc)
        if not compute:
            raise DatasetError(f"{path}: cached embeddings missing", hint="run the training again")
        t = time.perf_counter()
        arr = compute_embeddings(
            model, store, split, crop=crop, chunks=n, device=device, autocast=autocast, progress=progress
        )
        atomic_write_npy(path, arr)
        log.info(
            "embeddings: %s split, %d clips x %d chunks computed in %.1f s -> %s",
            split,
            arr.shape[0],
            n,
            time.perf_counter() - t,
            path,
        )
        out[split] = arr
    if compute:
        meta = {"format": CACHE_FORMAT, "key": key, "store": str(store.path), "crop": crop, "chunks": chunks}
        atomic_write_bytes(folder / "cache.json", (json.dumps(meta, indent=2) + "\n").encode())
    return out


class EmbeddingDataset(Dataset):
    """Cached embeddings of a split as ``(embedding, target)`` pairs.

    ``mode="train"``: one chunk per clip, chosen by ``(seed, epoch)`` (call
    :meth:`set_epoch` before each epoch, as with the store's dataset); ``mode="eval"``:
    every chunk of the clip, ``(chunks, D)``, for song-level validation."""

    def __init__(self, embeddings: np.ndarray, targets: np.ndarray, *, mode: str, seed: int = 0) -> None:
        self.embeddings = torch.from_numpy(np.ascontiguousarray(embeddings))
        self.targets = torch.from_numpy(np.asarray(targets))
        self.mode, self.seed = mode, int(seed)
        self.epoch = 0
        self._chunk = np.zeros(len(self.embeddings), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.embeddings)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        rng = np.random.default_rng([self.seed, self.epoch])
        self._chunk = rng.integers(0, self.embeddings.shape[1], size=len(self.embeddings))

    def chunk_of(self, index: int) -> int:
        """The cached chunk clip ``index`` trains on in the current epoch."""
        return int(self._chunk[index])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.embeddings[index, self.chunk_of(index)] if self.mode == "train" else self.embeddings[index]
        return x, self.targets[index].clone()
