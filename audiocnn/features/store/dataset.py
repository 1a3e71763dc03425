"""PyTorch ``Dataset`` over a feature store: random crops for training, fixed chunks for eval.

Train mode draws one crop per clip per epoch; the crop start depends only on
``(seed, epoch, index)``, so it is the same whichever worker or replica loads the clip.
Eval mode returns ``eval_chunks`` evenly spaced crops covering the clip, the song-level
protocol of the tagging literature (e.g. 16 chunks per clip, predictions averaged).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from audiocnn.errors import ConfigError
from audiocnn.features.frontends import even_chunk_starts
from audiocnn.features.store.reader import FeatureStore

MODES = ("train", "eval")
_MASK = (1 << 64) - 1


def _mix(*values: int) -> int:
    """splitmix64 over the values: a cheap, well-spread 64-bit hash (1 us, not 30 us
    for a seeded numpy Generator per item)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & _MASK)) & _MASK
        h = (h + 0x9E3779B97F4A7C15) & _MASK
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK
        h ^= h >> 31
    return h


class StoreDataset(Dataset):
    """``(features, target)`` pairs read from a :class:`FeatureStore` split.

    ``crop_frames`` is in the store's units: samples for waveform, frames for mel.
    Clips shorter than a crop are zero-padded at the end. Targets are an int64 class
    index (single-label) or a float32 multi-hot vector (multi-label).

    Call :meth:`set_epoch` before each epoch's iterator is created (as with
    ``DistributedSampler``); the epoch lives in shared memory so persistent
    ``DataLoader`` workers see it too.
    """

    def __init__(
        self,
        store: FeatureStore,
        split: str,
        *,
        mode: str = "train",
        crop_frames: int,
        eval_chunks: int = 16,
        seed: int = 0,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"dataset mode must be one of {', '.join(MODES)}, got {mode!r}")
        if int(crop_frames) <= 0:
            raise ConfigError(f"crop_frames must be positive, got {crop_frames}")
        if int(eval_chunks) <= 0:
            raise ConfigError(f"eval_chunks must be positive, got {eval_chunks}")
        self.store = store
        self.split = split
        self.mode = mode
        self.crop_frames = int(crop_frames)
        self.eval_chunks = int(eval_chunks)
        self.seed = int(seed)
        self.lengths = store.lengths(split)
        self.targets = torch.from_numpy(store.targets(split))
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one crop: ``(crop,)`` waveform or ``(n_mels, crop)`` mel."""
        if self.store.dim > 1:
            return (self.store.dim, self.crop_frames)
        return (self.crop_frames,)

    def crop_start(self, index: int) -> int:
        """Train-mode crop start of clip ``index`` in the current epoch."""
        n = int(self.lengths[index])
        room = max(0, n - self.crop_frames)
        if room == 0:
            return 0
        return _mix(self.seed, self.epoch, int(index)) % (room + 1)

    def chunk_starts(self, index: int) -> np.ndarray:
        """Eval-mode starts: ``eval_chunks`` crops, first at 0, last ending at the clip end."""
        return even_chunk_starts(int(self.lengths[index]), self.crop_frames, self.eval_chunks)

    def _crop(self, index: int, start: int) -> np.ndarray:
        x = self.store.read(self.split, index, start, self.crop_frames)
        short = self.crop_frames - x.shape[-1]
        if short > 0:
            pad = [(0, 0)] * (x.ndim - 1) + [(0, short)]
            x = np.pad(x, pad)
        return x

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips")
        if self.mode == "train":
            x = self._crop(index, self.crop_start(index))
        else:
            x = np.stack([self._crop(index, int(s)) for s in self.chunk_starts(index)])
        return torch.from_numpy(x), self.targets[index].clone()

    def __repr__(self) -> str:
        return (
            f"StoreDataset({self.store.kind}, split={self.split!r}, mode={self.mode!r}, "
            f"clips={len(self)}, crop_frames={self.crop_frames})"
        )
