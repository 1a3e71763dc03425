"""Training-time augmentation for small datasets, configured by the ``augment:`` block.

Two places, by cost:

- :class:`BatchAugment` works on whole batches on the training device (GPU-friendly):
  random gain, polarity inversion and additive noise on waveforms, then the model's mel
  front-end when a mel model trains from waveforms, then SpecAugment time and frequency
  masks (masked cells take the example's mean, as in Park et al. 2019), then mixup
  (Zhang et al. 2018): the batch mixed with a shuffled copy of itself, targets mixed with
  the same weight - soft class targets for softmax, for sigmoid the union of both clips'
  tags, each weighted by the share of the clip(s) carrying it.
- :class:`WorkerAugment` wraps the training crops and applies pitch shift and time
  stretch (phase vocoder, librosa) in the DataLoader workers, on the waveform crop; a
  stretched crop is read longer (or shorter) from the store so it comes out at the crop
  length.

Each transform fires per example with its own probability ``p`` (mixup per batch).
Reproducible: the draws depend only on ``(seed, epoch, step, rank)`` (batches) or
``(seed, epoch, clip)`` (workers), never on a global RNG, so the same seed gives the same
augmentations and a run resumed from ``last.pt`` sees the batches an uninterrupted one
would. Validation, BatchNorm re-estimation and ``evaluate`` never go through the batch
transforms.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from audiocnn.constants import SINGLE_LABEL
from audiocnn.features.store import StoreDataset
from audiocnn.training.config import AugmentConfig

_MASK = (1 << 63) - 1


def _seed(*values: int) -> int:
    """One 63-bit seed from several integers (stable across runs and processes)."""
    return int(np.random.SeedSequence([int(v) & _MASK for v in values]).generate_state(2, np.uint64)[0]) & _MASK


class BatchAugment:
    """The device-side transforms of one run; call :meth:`start_epoch` before each epoch,
    then ``x, y = augment(x, y, step)`` on each training batch (already on the device)."""

    def __init__(
        self,
        config: AugmentConfig,
        *,
        task: str,
        num_classes: int,
        seed: int,
        rank: int = 0,
        frontend: nn.Module | None = None,
    ) -> None:
        self.config, self.task, self.num_classes = config, task, int(num_classes)
        self.seed, self.rank, self.frontend = int(seed), int(rank), frontend
        self.epoch = 0

    def start_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def generator(self, step: int, device: torch.device) -> torch.Generator:
        g = torch.Generator(device=device)
        g.manual_seed(_seed(self.seed, self.epoch, step, self.rank))
        return g

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.generator(step, x.device)
        c = self.config
        if x.dim() == 2:  # waveforms (batch, samples)
            x = waveform_transforms(x, c, g)
        if self.frontend is not None:
            x = self.frontend(x)
        if x.dim() == 3:  # mel (batch, bins, frames)
            x = mask(x, axis=2, p=c.time_mask.p, count=c.time_mask.count, max_width=c.time_mask.max_width, g=g)
            x = mask(x, axis=1, p=c.freq_mask.p, count=c.freq_mask.count, max_width=c.freq_mask.max_width, g=g)
        if c.mixup.p > 0:
            rng = np.random.default_rng(_seed(self.seed, self.epoch, step, self.rank, 1))
            x, y = mixup(x, y, c.mixup.p, c.mixup.alpha, g, rng, self.task, self.num_classes)
        return x, y


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, device=device)


def _fires(n: int, p: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    """Which of ``n`` examples a transform of probability ``p`` applies to (drawn even when
    p is 0, so switching a transform on does not move the decisions of those before it)."""
    return torch.rand(n, generator=g, device=device) < p


def waveform_transforms(x: torch.Tensor, c: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Gain, polarity inversion and additive noise on a (batch, samples) batch."""
    b, dev = x.shape[0], x.device
    db = _uniform(b, c.gain.min_db, c.gain.max_db, g, dev)
    gain = torch.where(_fires(b, c.gain.p, g, dev), 10.0 ** (db / 20.0), torch.ones_like(db))
    sign = torch.where(_fires(b, c.polarity.p, g, dev), -torch.ones_like(db), torch.ones_like(db))
    x = x * (gain * sign).to(x.dtype)[:, None]
    snr = _uniform(b, c.noise.min_snr_db, c.noise.max_snr_db, g, dev)
    noisy = _fires(b, c.noise.p, g, dev)
    if c.noise.p > 0:
        power = x.float().pow(2).mean(dim=1)
        scale = torch.sqrt(power / 10.0 ** (snr / 10.0)) * noisy
        noise = torch.randn(x.shape, generator=g, device=dev)
        x = x + (noise * scale[:, None]).to(x.dtype)
    return x


def mask(x: torch.Tensor, *, axis: int, p: float, count: int, max_width: int, g: torch.Generator) -> torch.Tensor:
    """SpecAugment masks along ``axis`` (2: time frames, 1: mel bins) of a (batch, bins,
    frames) batch: per example with probability ``p``, ``count`` bands of a width uniform in
    [0, max_width] at uniform positions, set to the example's mean."""
    if p <= 0 or count <= 0 or max_width <= 0:
        return x
    b, size, dev = x.shape[0], x.shape[axis], x.device
    fires = _fires(b, p, g, dev)
    pos = torch.arange(size, device=dev)
    hit = torch.zeros(b, size, dtype=torch.bool, device=dev)
    for _ in range(count):
        width = torch.randint(0, min(max_width, size) + 1, (b,), generator=g, device=dev)
        start = (torch.rand(b, generator=g, device=dev) * (size - width + 1)).long()
        hit |= (pos[None] >= start[:, None]) & (pos[None] < (start + width)[:, None])
    hit &= fires[:, None]
    shape = [b, 1, 1]
    shape[axis] = size
    mean = x.mean(dim=(1, 2), keepdim=True)
    return torch.where(hit.reshape(shape), mean, x)


def mixup(
    x: torch.Tensor,
    y: torch.Tensor,
    p: float,
    alpha: float,
    g: torch.Generator,
    rng: np.random.Generator,
    task: str,
    num_classes: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """With probability ``p``: ``lam * x + (1 - lam) * x[perm]`` and the same mix of the
    targets (one-hot for single-label), ``lam ~ Beta(alpha, alpha)`` folded to >= 0.5.
    ``g`` draws the permutation on the device, ``rng`` the decision and the weight."""
    perm = torch.randperm(x.shape[0], generator=g, device=x.device)
    fires, lam = rng.random() < p, float(rng.beta(alpha, alpha))
    if not fires:
        return x, y
    lam = max(lam, 1.0 - lam)
    target = nn.functional.one_hot(y.long(), num_classes).float() if task == SINGLE_LABEL else y.float()
    return lam * x + (1.0 - lam) * x[perm], lam * target + (1.0 - lam) * target[perm]


# -- in the data workers ------------------------------------------------------------------


class WorkerAugment(Dataset):
    """Training crops of a waveform :class:`StoreDataset` with pitch shift and time stretch.

    Epochs come from the wrapped dataset (``set_epoch`` is passed on); each clip's draws
    depend only on ``(seed, epoch, clip)``, whichever worker loads it."""

    def __init__(self, base: StoreDataset, config: AugmentConfig, sample_rate: int) -> None:
        self.base, self.config, self.sample_rate = base, config, int(sample_rate)
        self.targets = base.targets

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def draws(self, index: int) -> dict[str, Any]:
        """The stretch rate and pitch shift (semitones) clip ``index`` gets this epoch."""
        c = self.config
        rng = np.random.default_rng([self.base.seed, self.base.epoch, int(index), 0xA06])
        u = rng.random(5)
        st, ps = c.time_stretch, c.pitch_shift
        rate = st.min_rate + (st.max_rate - st.min_rate) * u[1] if u[0] < st.p else 1.0
        semitones = ps.semitones * (2 * u[3] - 1) if u[2] < ps.p else 0.0
        return {"rate": float(rate), "semitones": float(semitones), "start": float(u[4])}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.draws(index)
        crop = self.base.crop_frames
        if d["rate"] == 1.0 and d["semitones"] == 0.0:
            return self.base[index]
        need = int(math.ceil(crop * d["rate"]))
        room = max(0, int(self.base.lengths[index]) - need)
        b = self.base
        y = _fit(b.store.read(b.split, index, int(d["start"] * (room + 1)), need), need)
        if d["rate"] != 1.0:
            y = time_stretch(y, d["rate"])
        if d["semitones"] != 0.0:
            y = pitch_shift(y, self.sample_rate, d["semitones"])
        y = _fit(y, crop)
        return torch.from_numpy(y), self.base.targets[index].clone()


def _fit(y: np.ndarray, n: int) -> np.ndarray:
    y = np.asarray(y, dtype=np.float32)
    return y[:n] if len(y) >= n else np.pad(y, (0, n - len(y)))


def time_stretch(y: np.ndarray, rate: float) -> np.ndarray:
    """``y`` played ``rate`` times faster at the same pitch (phase vocoder)."""
    import librosa  # deferred: librosa's import costs a second; only when a crop is stretched

    return librosa.effects.time_stretch(np.asarray(y, dtype=np.float32), rate=float(rate), n_fft=512)


def pitch_shift(y: np.ndarray, sample_rate: int, semitones: float) -> np.ndarray:
    """``y`` shifted by ``semitones`` at the same tempo (phase vocoder + soxr resampling)."""
    import librosa  # deferred: as above

    return librosa.effects.pitch_shift(
        np.asarray(y, dtype=np.float32), sr=int(sample_rate), n_steps=float(semitones), n_fft=512, res_type="soxr_hq"
    )
