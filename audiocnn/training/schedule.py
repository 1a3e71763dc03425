"""Optimisers, learning-rate schedules and early stopping, all resumable.

The schedules are stepped once per epoch, after validation, because that is how the
papers describe them (plateau on the validation metric, fixed epoch counts per stage).
Their whole state is a small dict saved in ``last.pt``, so a resumed run takes exactly
the decisions the uninterrupted run would have taken.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import torch

from audiocnn.training.config import TrainConfig


def build_optimizer(
    name: str, params: Iterable[torch.nn.Parameter], lr: float, config: TrainConfig
) -> torch.optim.Optimizer:
    params = list(params)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=config.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(
            params,
            lr=lr,
            momentum=config.momentum,
            nesterov=config.nesterov and config.momentum > 0,
            weight_decay=config.weight_decay,
        )
    raise ValueError(f"unknown optimizer {name!r}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def is_better(value: float, best: float | None, higher_is_better: bool, min_delta: float = 0.0) -> bool:
    """NaN never improves; anything beats "no best yet"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None or (isinstance(best, float) and math.isnan(best)):
        return True
    return value > best + min_delta if higher_is_better else value < best - min_delta


@dataclass
class ScheduleAction:
    """What the training loop must do after an epoch: set ``lr`` and, at a stage change,
    reload the best weights and/or start a fresh optimiser of another kind."""

    lr: float
    reload_best: bool = False
    new_optimizer: str | None = None
    message: str = ""
    stage_changed: bool = False


class LRSchedule:
    def __init__(self, config: TrainConfig, higher_is_better: bool) -> None:
        self.config = config
        self.cfg = config.schedule
        self.base_lr = float(config.lr)
        self.higher_is_better = higher_is_better
        self.optimizer_name = config.optimizer
        self.lr = self.base_lr
        self.best: float | None = None
        self.bad_epochs = 0
        self.stage = 0
        self.stage_epochs = 0

    # -- epoch-based rates ------------------------------------------------------------
    def lr_at_epoch_start(self, epoch: int) -> float:
        """Rate for 0-based ``epoch``; stateful schedules return the current rate."""
        c, base = self.cfg, self.base_lr
        if c.warmup_epochs and epoch < c.warmup_epochs and self.stage == 0:
            return base * (epoch + 1) / (c.warmup_epochs + 1)
        if c.name == "cosine":
            total = max(1, self.config.epochs - c.warmup_epochs)
            t = min(max(0, epoch - c.warmup_epochs), total)
            return c.min_lr + (base - c.min_lr) * 0.5 * (1 + math.cos(math.pi * t / total))
        if c.name == "step":
            return max(c.min_lr, base * c.factor ** (max(0, epoch - c.warmup_epochs) // c.step_epochs))
        return self.lr

    def after_epoch(self, epoch: int, metric: float) -> ScheduleAction:
        """Update with the validation ``metric`` of 0-based ``epoch``."""
        c = self.cfg
        improved = is_better(metric, self.best, self.higher_is_better)
        if improved:
            self.best = metric
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        self.stage_epochs += 1
        if c.name == "plateau":
            if self.bad_epochs >= c.patience and self.lr > c.min_lr:
                new_lr = max(c.min_lr, self.lr * c.factor)
                self.lr, self.bad_epochs = new_lr, 0
                self.stage += 1
                return ScheduleAction(
                    lr=new_lr,
                    reload_best=c.restore_best,
                    stage_changed=True,
                    message=f"no improvement for {c.patience} epochs: lr -> {new_lr:g}",
                )
        elif c.name == "skip":
            limit = c.adam_epochs if self.stage == 0 else c.sgd_epochs
            if self.stage < len(c.sgd_lrs) and self.stage_epochs >= limit:
                new_lr = float(c.sgd_lrs[self.stage])
                switch = "sgd" if self.stage == 0 else None
                self.stage += 1
                self.stage_epochs = 0
                self.lr = new_lr
                if switch:
                    self.optimizer_name = "sgd"
                return ScheduleAction(
                    lr=new_lr,
                    reload_best=True,
                    new_optimizer=switch,
                    stage_changed=True,
                    message=f"stage {self.stage}: SGD lr {new_lr:g}, from the best weights",
                )
        return ScheduleAction(lr=self.lr_at_epoch_start(epoch + 1))

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer_name": self.optimizer_name,
            "lr": self.lr,
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "stage": self.stage,
            "stage_epochs": self.stage_epochs,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer_name = state["optimizer_name"]
        self.lr = float(state["lr"])
        self.best = state["best"]
        self.bad_epochs = int(state["bad_epochs"])
        self.stage = int(state["stage"])
        self.stage_epochs = int(state["stage_epochs"])


class EarlyStopping:
    """Counts epochs without improvement of the monitored metric, since the start or the
    last learning-rate stage change (so a plateau schedule gets to try its lower rates
    first, as in SampleCNN's staged training)."""

    def __init__(self, patience: int, min_delta: float, higher_is_better: bool, enabled: bool = True) -> None:
        self.enabled = enabled
        self.patience = patience
        self.min_delta = min_delta
        self.higher_is_better = higher_is_better
        self.best: float | None = None
        self.bad_epochs = 0

    def restart(self) -> None:
        """A new lr stage began: count bad epochs from here (the best value is kept)."""
        self.bad_epochs = 0

    def update(self, metric: float) -> bool:
        """True when training should stop."""
        if is_better(metric, self.best, self.higher_is_better, self.min_delta):
            self.best, self.bad_epochs = metric, 0
        else:
            self.bad_epochs += 1
        return self.enabled and self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]
        self.bad_epochs = int(state["bad_epochs"])
