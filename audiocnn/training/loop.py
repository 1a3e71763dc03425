"""The training recipe: set up, then per epoch train, recompute BatchNorm statistics,
validate, keep the best, step the schedule, save the state. Single process or DDP.

Each part lives in its own module: ``setup`` (dataset, task, model, loss), ``loaders``
(crops and chunks), ``engine`` (steps and predictions), ``state`` (what ``last.pt`` holds,
one registry of recoverables), ``callbacks`` (best checkpoint, metrics CSV, TensorBoard,
log line), ``rundata`` (the store and loaders of a run), ``rundir`` (the run folder's
layout and marker). Which folder and config a command trains, resume or restart, is
:mod:`audiocnn.training.command`'s decision, not the Trainer's.

Reproducibility: the data order and crops of an epoch depend only on ``(seed, epoch)``,
and the global RNGs are touched only by the model (dropout) and saved in ``last.pt``; so
a run resumed from ``last.pt`` on CPU ends with the same weights and metrics as one that
was never interrupted.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from audiocnn.constants import MULTI_LABEL
from audiocnn.datasets.manifest import Manifest, read_manifest
from audiocnn.devices import resolve_device
from audiocnn.errors import ConfigError
from audiocnn.features.frontends import MelConfig
from audiocnn.models.checkpoint import load_weights
from audiocnn.progress import StepBar
from audiocnn.training import distributed as D
from audiocnn.training import health as H
from audiocnn.training import setup as S
from audiocnn.training.augment import BatchAugment
from audiocnn.training.callbacks import BestCheckpoint, EpochEnd, EpochLog, MetricsCSV, TensorBoard
from audiocnn.training.config import TrainConfig
from audiocnn.training.engine import (
    Guard,
    Step,
    amp_dtype_for,
    evaluate_clips,
    make_autocast,
    refresh_batchnorm,
    train_one_epoch,
)
from audiocnn.training.metrics import best_f1_thresholds, compute_metrics
from audiocnn.training.plots import plot_training_curves, write_harmonic_filters
from audiocnn.training.rundata import RunData, run_data
from audiocnn.training.rundir import RunDir
from audiocnn.training.schedule import EarlyStopping, LRSchedule, build_optimizer, is_better, set_lr
from audiocnn.training.state import Recoverables, load_state, rng_state, save_state, set_rng_state

log = logging.getLogger("audiocnn.train")


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int | None
    best_metric: float | None
    monitor: str
    epochs_run: int
    stopped_early: bool
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RunState:
    """What the loop itself tracks across epochs (saved in ``last.pt``)."""

    epoch: int = 0  # epochs finished
    history: list[dict[str, Any]] = field(default_factory=list)
    best_metric: float | None = None
    best_epoch: int | None = None
    stopped_early: bool = False

    def record(self, row: dict[str, Any], value: float, higher: bool) -> bool:
        """Add an epoch's row; True when its monitored ``value`` is the best so far, or ties
        the best with a lower validation loss (with a few validation clips, accuracy reaches
        its ceiling early and stays there while the loss still falls: the later epoch is
        the better model)."""
        best_row = next((r for r in self.history if r["epoch"] == self.best_epoch), None)
        self.history.append(row)
        tie = best_row is not None and value == self.best_metric and row["valid_loss"] < best_row["valid_loss"]
        improved = is_better(value, self.best_metric, higher) or self.best_epoch is None or tie
        if improved:
            self.best_metric = None if isinstance(value, float) and math.isnan(value) else value
            self.best_epoch = row["epoch"]
        return improved


# -- entry points ---------------------------------------------------------------------------


def train(
    config: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    data_dir: str | os.PathLike,
    device: str = "auto",
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train ``config`` into ``run_dir`` (created; ``resume`` continues from its last.pt)."""
    dev = resolve_device(device)
    if D.env_world_size() > 1 and dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    info = D.init_distributed(dev.type)
    if not info.is_main:
        log.setLevel(logging.WARNING)
    try:
        trainer = Trainer(
            config,
            RunDir(Path(run_dir)),
            data_dir=Path(data_dir),
            device=dev,
            info=info,
            progress=progress and info.is_main,
        )
        return trainer.fit(resume=resume)
    finally:
        D.shutdown(info)


# -- the trainer ------------------------------------------------------------------------------


class Trainer:
    """One run: everything set up once, then :meth:`fit` reads like the recipe."""

    def __init__(
        self,
        config: TrainConfig,
        run: RunDir,
        *,
        data_dir: Path,
        device: torch.device,
        info: D.DistInfo,
        progress: bool,
    ) -> None:
        self.config, self.run, self.data_dir, self.device, self.info = config, run, data_dir, device, info
        self.progress = progress
        self.manifest: Manifest = read_manifest(data_dir / config.dataset)
        self.task = S.check_dataset(config, self.manifest)
        if info.is_main:
            S.warn_small_splits(self.manifest)
        self.labels = list(self.manifest.labels)
        self.monitor, self.higher = S.monitor_of(config, self.task)
        S.seed_everything(config.seed)  # identical initial weights on every rank
        self.raw, init_info = S.build_model(config, self.labels, self.task)
        if init_info and info.is_main:
            log.info(
                "init: weights from %s%s",
                init_info["path"],
                " (new head for these labels)" if init_info["head_reset"] else "",
            )
        self.wave_frontend = _check_augment(config, self.raw)
        self.data = run_data(
            RunData(config, self.raw, self.labels, data_dir, device, info, progress, self.wave_frontend)
        )
        if info.is_main:
            run.begin(config)  # refuses a folder audiocnn did not write
        self.model, self.core, self.params = S.place_model(self.raw, config, device, info)
        self.augment = None
        if config.augment.on_device or self.wave_frontend:
            self.augment = BatchAugment(
                config.augment,
                task=self.task,
                num_classes=len(self.labels),
                seed=config.seed,
                rank=info.rank,
                frontend=self.raw.frontend if self.wave_frontend else None,
            )
        self.loss_fn = S.make_loss(config, self.manifest, self.task, device)
        self._optimisation()
        self.state = RunState()
        self.recoverables = self._recoverables()

    def _optimisation(self) -> None:
        c = self.config
        self.schedule = LRSchedule(c, higher_is_better=self.higher)
        self.early = EarlyStopping(
            c.early_stopping.patience, c.early_stopping.min_delta, self.higher, enabled=c.early_stopping.enabled
        )
        self.optimizer = build_optimizer(
            self.schedule.optimizer_name, self.params, self.schedule.lr_at_epoch_start(0), c
        )
        self.amp_dtype = amp_dtype_for(c.amp, self.device)
        self.autocast = make_autocast(self.device, self.amp_dtype)
        fp16 = self.amp_dtype == torch.float16 and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)

    def _recoverables(self) -> Recoverables:
        """Everything ``last.pt`` holds, saved and restored by one registry (the order
        matters: the optimiser is rebuilt for the schedule's stage before its state loads)."""
        r, s = Recoverables(), self.state
        r.add("epoch", get=lambda: s.epoch, set=lambda v: setattr(s, "epoch", int(v)))
        r.add(
            "model",
            get=lambda: {k: v.detach().cpu() for k, v in self.raw.state_dict().items()},
            set=self.raw.load_state_dict,
        )
        r.add("schedule", self.schedule)
        r.add("optimizer", get=self.optimizer_state, set=self._load_optimizer)
        r.add(
            "scaler",
            get=lambda: self.scaler.state_dict() if self.scaler.is_enabled() else None,
            set=lambda v: self.scaler.load_state_dict(v) if v else None,
        )
        r.add("early_stopping", self.early)
        for key in ("best_metric", "best_epoch", "history", "stopped_early"):
            r.add(key, get=lambda k=key: getattr(s, k), set=lambda v, k=key: setattr(s, k, v))
        r.add(
            "rng",
            get=lambda: D.all_gather_objects(rng_state(), self.info),
            set=lambda v: set_rng_state(v[min(self.info.rank, len(v) - 1)]),
        )
        r.add("config", get=self.config.to_dict, set=lambda v: None)  # for reading; the run's config.yaml rules
        return r

    def optimizer_state(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def _load_optimizer(self, state: dict[str, Any]) -> None:
        self.optimizer = build_optimizer(self.schedule.optimizer_name, self.params, self.schedule.lr, self.config)
        self.optimizer.load_state_dict(state)

    # ---------------------------------------------------------------- the recipe

    def fit(self, *, resume: bool) -> TrainResult:
        if resume:
            self.recoverables.load_state_dict(load_state(self.run.last))
            log.info("resuming %s after epoch %d of %d", self.run, self.state.epoch, self.config.epochs)
        else:
            torch.manual_seed(self.config.seed + self.info.rank)  # per-rank dropout streams
        log.info(
            S.describe(
                self.raw,
                self.config,
                self.task,
                len(self.data.train_set),
                len(self.data.valid_set),
                self.data.steps_per_epoch,
                self.device,
                self.amp_dtype,
                self.info,
            )
        )
        main = self.info.is_main
        tensorboard = TensorBoard(self.run, self.config.tensorboard and main)
        self.on_validated = (
            [BestCheckpoint(self.run, self.raw, self.labels, self.config, self.manifest.split_scheme, self.monitor)]
            if main
            else []
        )
        self.on_saved = [MetricsCSV(self.run), tensorboard] if main else []
        self.on_logged = [EpochLog(self.config.epochs)]
        with StepBar(self.progress) as bar:
            while self.state.epoch < self.config.epochs and not self.state.stopped_early:
                self._epoch(bar)
        tensorboard.close()
        self._plot()
        s = self.state
        return TrainResult(
            run_dir=self.run.path,
            best_epoch=s.best_epoch,
            best_metric=s.best_metric,
            monitor=self.monitor,
            epochs_run=len(s.history),
            stopped_early=s.stopped_early,
            history=s.history,
        )

    def _epoch(self, bar: StepBar) -> None:
        epoch = self.state.epoch
        row, metrics, value = self._train_and_validate(epoch, bar)
        end = EpochEnd(epoch + 1, row, self.state.history, metrics, self.state.record(row, value, self.higher))
        for cb in self.on_validated:  # the best checkpoint, before the schedule may reload it
            cb.on_epoch_end(end)
        self._step_schedule(epoch, value)
        for cb in self.on_saved:
            cb.on_epoch_end(end)
        self.state.epoch = epoch + 1
        snapshot = self.recoverables.state_dict()  # every rank: the RNG states are gathered
        if self.info.is_main:
            save_state(self.run.last, snapshot)
        D.barrier(self.info)
        for cb in self.on_logged:
            cb.on_epoch_end(end)
        if self.state.stopped_early:
            log.info("early stopping: no improvement of %s for %d epochs", self.monitor, self.early.patience)

    def _train_and_validate(self, epoch: int, bar: StepBar) -> tuple[dict[str, Any], dict[str, Any], float]:
        c, data = self.config, self.data
        lr = self.schedule.lr_at_epoch_start(epoch)
        set_lr(self.optimizer, lr)
        data.start_epoch(epoch)
        if self.augment is not None:
            self.augment.start_epoch(epoch)
        t0 = time.perf_counter()
        self.model.train()
        S.set_train_mode(self.raw, c.freeze_backbone, c.unfreeze_blocks)
        bar.start(f"epoch {epoch + 1}/{c.epochs}", data.steps_per_epoch)
        guard = Guard(self.run.path, epoch, has_state=self.run.last.is_file())
        step = Step(
            self.model,
            self.loss_fn,
            self.optimizer,
            self.scaler,
            self.params,
            c.grad_clip,
            self.autocast,
            self.device,
            augment=self.augment,
        )
        loss_sum, n_seen, wait = train_one_epoch(
            step, data.train, steps=data.steps_per_epoch, bar=bar, info=self.info, guard=guard
        )
        H.check_weights(
            self.params, epoch=epoch + 1, run_dir=self.run.path, last_good_epoch=epoch, has_state=guard.has_state
        )
        train_time = time.perf_counter() - t0
        loss_sum, n_seen = D.all_reduce_sum([loss_sum, float(n_seen)], self.info)
        bn_time = refresh_batchnorm(
            self.core,
            data.train,
            max_batches=min(c.bn_stats_batches, data.steps_per_epoch),
            device=self.device,
            autocast=self.autocast,
            info=self.info,
            prepare=self.raw.frontend if self.wave_frontend else None,
        )
        bar.start("validating", len(data.valid))
        val = evaluate_clips(
            self.model,
            data.valid,
            device=self.device,
            task=self.task,
            autocast=self.autocast,
            info=self.info,
            loss_fn=self.loss_fn,
        )
        metrics = compute_metrics(val["targets"], val["scores"], self.task, self.labels)
        if self.task == MULTI_LABEL:  # the decisions the best checkpoint will carry
            metrics["thresholds"] = best_f1_thresholds(val["targets"], val["scores"]).tolist()
        value = val["loss"] if self.monitor == "valid_loss" else metrics[self.monitor]
        row = _row(epoch, loss_sum / max(n_seen, 1), val["loss"], metrics, lr)
        row.update(
            {
                "time_s": time.perf_counter() - t0,
                "samples_per_s": n_seen / max(train_time, 1e-9),
                "data_wait": wait / max(train_time, 1e-9),
                "bn_stats_s": bn_time,
            }
        )
        return row, metrics, value

    def _step_schedule(self, epoch: int, value: float) -> None:
        action = self.schedule.after_epoch(epoch, value)
        self.state.stopped_early = self.early.update(value)
        if action.stage_changed:
            self.early.restart()
            self.state.stopped_early = False
        if action.reload_best:
            D.barrier(self.info)
            load_best(self.raw, self.run.best, self.device)
        if action.new_optimizer:
            self.optimizer = build_optimizer(action.new_optimizer, self.params, action.lr, self.config)
        if action.message:
            log.info("epoch %d: %s", epoch + 1, action.message)

    def _plot(self) -> None:
        if not (self.info.is_main and self.state.history):
            return
        try:
            plot_training_curves(self.run.metrics, self.run.curves, best_epoch=self.state.best_epoch)
        except Exception as exc:  # a plot must never fail a finished run
            log.warning("could not plot training curves: %s", exc)
        if hasattr(self.raw, "filter_summary"):  # harmonic-cnn: its filters as initialised and as learned
            try:
                best = copy.deepcopy(self.raw)  # the best weights: what the run hands on
                load_best(best, self.run.best, self.device)
                summaries = {"initial": best.filter_summary(learned=False), "learned": best.filter_summary()}
                write_harmonic_filters(summaries, self.run.filters_png, self.run.filters_csv)
            except Exception as exc:
                log.warning("could not plot the harmonic filters: %s", exc)


def _check_augment(config: TrainConfig, model: nn.Module) -> bool:
    """Refuse transforms the model's input cannot take; True when a mel model must train
    from waveform crops (waveform augmentation) and compute its front-end on the device."""
    aug = config.augment
    mel = isinstance(model.frontend_config, MelConfig)
    if not mel and aug.on("time_mask", "freq_mask"):
        raise ConfigError(
            f"augment.time_mask / augment.freq_mask need a mel model; {model.registry_name} takes waveforms",
            hint="set their p to 0 and use the waveform transforms (gain, noise, pitch_shift, ...)",
        )
    if aug.on() and config.freeze_backbone and config.embedding_cache:
        log.info("embedding_cache: not used, augmentation changes the backbone's input every epoch")
    if aug.on():
        log.info(
            "augment: %s",
            ", ".join(f"{f.name} p={getattr(aug, f.name).p:g}" for f in fields(aug) if getattr(aug, f.name).p > 0),
        )
    return mel and (aug.waveform or aug.in_workers)


def _row(epoch: int, train_loss: float, valid_loss: float, metrics: dict[str, Any], lr: float) -> dict[str, Any]:
    """An epoch's metrics.csv row (timing columns are added by the caller)."""
    row: dict[str, Any] = {
        "epoch": epoch + 1,
        "train_loss": train_loss,
        "valid_loss": valid_loss,
        "roc_auc_macro": metrics["roc_auc_macro"],
        "pr_auc_macro": metrics["pr_auc_macro"],
    }
    if "accuracy" in metrics:
        row["accuracy"] = metrics["accuracy"]
        row["balanced_accuracy"] = metrics["balanced_accuracy"]
    row["lr"] = lr
    return row


def load_best(model: nn.Module, path: Path, device: torch.device) -> None:
    """Load ``best.safetensors`` into ``model`` (verified; a missing file changes nothing)."""
    if path.is_file():
        model.load_state_dict(load_weights(path, device))
