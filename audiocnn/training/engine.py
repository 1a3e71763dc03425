"""The training engine: one epoch of steps, song-level predictions, precision helpers.

Shared by the training loop (validation) and anything else that scores a feature store
split chunk by chunk. No run-folder or logging policy lives here.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from audiocnn.errors import ConfigError, DatasetError
from audiocnn.models.base import logits_to_proba
from audiocnn.progress import StepBar
from audiocnn.training import distributed as D
from audiocnn.training import health as H
from audiocnn.training.batchnorm import recompute_batchnorm_stats
from audiocnn.training.losses import TaggingLoss

# -- precision --------------------------------------------------------------------------


def amp_dtype_for(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``amp`` mode on ``device`` (None: fp32)."""
    if mode == "none":
        return None
    if mode == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None  # fp32 on CPU/MPS unless asked: exact and reproducible
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        if device.type == "cpu":
            raise ConfigError("amp=fp16 needs a GPU; on CPU use amp=bf16 or amp=none")
        return torch.float16
    raise ConfigError(f"unknown amp mode {mode!r}")


def make_autocast(device: torch.device, dtype: torch.dtype | None) -> Callable[[], Any]:
    def ctx():
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=dtype)

    return ctx


# -- one epoch of optimisation -----------------------------------------------------------


@dataclass
class Guard:
    """What a divergence message needs to say where the last good state is."""

    run_dir: Path
    epoch: int  # 0-based epoch being trained; epochs finished before it are good
    has_state: bool


@dataclass
class Step:
    """What an optimisation step needs besides the batch."""

    model: nn.Module
    loss_fn: TaggingLoss
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    params: list[nn.Parameter]
    grad_clip: float | None
    autocast: Callable[[], Any]
    device: torch.device
    # batch augmentation on the device, ``(x, y, step) -> (x, y)`` (training/augment.py)
    augment: Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]] | None = None


def train_one_epoch(
    step: Step, loader: DataLoader, *, steps: int, bar: StepBar, info: D.DistInfo, guard: Guard
) -> tuple[float, int, float]:
    """One epoch of optimisation steps; returns (summed loss, examples seen, seconds waiting
    for data). Stops the run on a NaN or infinite loss (every rank at the same step)."""
    cuda = step.device.type == "cuda"
    loss_sum, n_seen, wait = 0.0, 0, 0.0
    t0 = t_wait = time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if i >= steps:
            break
        wait += time.perf_counter() - t_wait
        x, y = x.to(step.device, non_blocking=cuda), y.to(step.device, non_blocking=cuda)
        if step.augment is not None:
            x, y = step.augment(x, y, i)
        loss = _step(step, x, y, info, guard, i + 1)
        loss_sum += loss * x.shape[0]
        n_seen += x.shape[0]
        elapsed = time.perf_counter() - t0
        bar.update(1, f"loss {loss_sum / n_seen:.4f}  {n_seen * info.world_size / max(elapsed, 1e-9):.1f} samples/s")
        t_wait = time.perf_counter()
    if cuda:
        torch.cuda.synchronize(step.device)
    return loss_sum, n_seen, wait


def _step(s: Step, x: torch.Tensor, y: torch.Tensor, info: D.DistInfo, guard: Guard, number: int) -> float:
    with s.autocast():
        logits = s.model(x, from_features=True)
    loss = s.loss_fn(logits, y)
    local = float(loss.detach())
    value = local
    if info.enabled:  # one rank's NaN stops them all, or the others would wait forever
        value = D.all_reduce_sum([local], info)[0]
    H.check_loss(
        value,
        epoch=guard.epoch + 1,
        step=number,
        run_dir=guard.run_dir,
        last_good_epoch=guard.epoch,
        has_state=guard.has_state,
    )
    s.optimizer.zero_grad(set_to_none=True)
    s.scaler.scale(loss).backward()
    if s.grad_clip:
        s.scaler.unscale_(s.optimizer)
        torch.nn.utils.clip_grad_norm_(s.params, s.grad_clip)
    s.scaler.step(s.optimizer)
    s.scaler.update()
    return local


def refresh_batchnorm(
    model: nn.Module,
    loader: DataLoader,
    *,
    max_batches: int,
    device: torch.device,
    autocast: Callable[[], Any],
    info: D.DistInfo,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """Recompute the BatchNorm statistics of the trained layers (training/batchnorm.py)
    from this epoch's training crops, not augmented on the device (``prepare`` turns a
    loader batch into model features, e.g. the mel front-end of waveform crops); returns
    the seconds it took."""
    t = time.perf_counter()
    cuda = device.type == "cuda"

    def forward(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, non_blocking=cuda)
        if prepare is not None:  # the front-end in full precision, as training's batches
            x = prepare(x)
        with autocast():
            return model(x, from_features=True)

    recompute_batchnorm_stats(model, (x for x, _y in loader), max_batches=max_batches, forward=forward, info=info)
    return time.perf_counter() - t


# -- song-level predictions ---------------------------------------------------------------


@torch.no_grad()
def predict_clips(
    model: nn.Module,
    loader: DataLoader,
    *,
    device: torch.device,
    task: str,
    autocast: Callable[[], Any],
    loss_fn: TaggingLoss | None = None,
    non_blocking: bool = False,
) -> dict[str, Any]:
    """Song-level probabilities: each clip's chunks are scored and their probabilities
    averaged (softmax for single-label, sigmoid for multi-label)."""
    model.eval()
    idx_all, scores, targets = [], [], []
    loss_sum, loss_n = 0.0, 0
    for idx, x, y in loader:
        b, n = x.shape[0], x.shape[1]
        xb = x.reshape(b * n, *x.shape[2:]).to(device, non_blocking=non_blocking)
        with autocast():
            logits = model(xb, from_features=True).float()
        if loss_fn is not None:
            yt = y.to(device, non_blocking=non_blocking).repeat_interleave(n, dim=0)
            loss_sum += float(loss_fn(logits, yt, reduction="sum"))
            loss_n += b * n
        proba = logits_to_proba(logits, task).reshape(b, n, -1).mean(dim=1)
        idx_all.append(idx.numpy() if torch.is_tensor(idx) else np.asarray(idx))
        scores.append(proba.cpu().numpy())
        targets.append(y.numpy())
    if not scores:
        return {"indices": np.zeros(0, dtype=np.int64), "scores": None, "targets": None, "loss_sum": 0.0, "loss_n": 0}
    return {
        "indices": np.concatenate(idx_all).astype(np.int64),
        "scores": np.concatenate(scores).astype(np.float32),
        "targets": np.concatenate(targets),
        "loss_sum": loss_sum,
        "loss_n": loss_n,
    }


def gather_predictions(part: dict[str, Any], info: D.DistInfo) -> dict[str, Any]:
    """Concatenate every rank's predictions in clip order (each clip appears once)."""
    parts = [p for p in D.all_gather_objects(part, info) if len(p["indices"])]
    if not parts:
        raise DatasetError("the evaluation split produced no predictions")
    order_idx = np.concatenate([p["indices"] for p in parts])
    order = np.argsort(order_idx, kind="stable")
    return {
        "indices": order_idx[order],
        "scores": np.concatenate([p["scores"] for p in parts])[order],
        "targets": np.concatenate([p["targets"] for p in parts])[order],
        "loss": sum(p["loss_sum"] for p in parts) / max(1, sum(p["loss_n"] for p in parts)),
    }


def evaluate_clips(
    model: nn.Module,
    loader: DataLoader,
    *,
    device: torch.device,
    task: str,
    autocast: Callable[[], Any],
    info: D.DistInfo,
    loss_fn: TaggingLoss | None = None,
) -> dict[str, Any]:
    """Song-level predictions of a (sharded) split, gathered from every rank in clip order."""
    part = predict_clips(
        model, loader, device=device, task=task, autocast=autocast, loss_fn=loss_fn, non_blocking=device.type == "cuda"
    )
    return gather_predictions(part, info)
