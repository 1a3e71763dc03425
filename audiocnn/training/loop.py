"""The training loop: one plain PyTorch loop, resumable, single process or DDP.

Per epoch: train on random crops, validate at song level (mean of ``eval_chunks`` evenly
spaced crops per clip), write one row of ``metrics.csv``, keep ``best.safetensors`` on the
monitored validation metric, step the schedule, and write ``last.pt`` atomically.

Reproducibility: the data order and crops of an epoch depend only on ``(seed, epoch)``
(a seeded ``DistributedSampler``, the store dataset's ``set_epoch`` and a loader generator
re-seeded every epoch), and the global RNGs are touched only by the model (dropout) and
saved in ``last.pt``; so a run resumed from ``last.pt`` on CPU ends with the same weights
and metrics as one that was never interrupted.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import random
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from audiocnn.checkpoint import load_weights, model_metadata, read_metadata, save_checkpoint
from audiocnn.config import TrainConfig, save_config
from audiocnn.errors import CheckpointError, ConfigError, DatasetError
from audiocnn.fileio import atomic_write_bytes
from audiocnn.training import distributed as D
from audiocnn.training import health as H
from audiocnn.training.batchnorm import recompute_batchnorm_stats
from audiocnn.training.metrics import compute_metrics, summary
from audiocnn.training.schedule import EarlyStopping, LRSchedule, build_optimizer, is_better, set_lr
from audiocnn.training.state import load_state, rng_state, save_state, set_rng_state

log = logging.getLogger("audiocnn.train")

BEST_NAME = "best.safetensors"
LAST_NAME = "last.pt"
CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.csv"
# metrics.csv columns that measure the machine, not the model (differ between re-runs)
TIMING_COLUMNS = ("time_s", "samples_per_s", "data_wait", "bn_stats_s")


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int | None
    best_metric: float | None
    monitor: str
    epochs_run: int
    stopped_early: bool
    history: list[dict[str, Any]] = field(default_factory=list)


# -- run folders ----------------------------------------------------------------------


def default_run_dir(config_name: str, runs_root: str | os.PathLike = "runs") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(runs_root) / f"{config_name}-{stamp}"


def latest_run_dir(config_name: str, runs_root: str | os.PathLike = "runs") -> Path | None:
    """Newest ``runs/<config_name>-<stamp>`` holding a ``last.pt`` (what ``--resume`` picks)."""
    root = Path(runs_root)
    if not root.is_dir():
        return None
    pat = re.compile(re.escape(config_name) + r"-\d{8}-\d{6}$")
    runs = sorted(p for p in root.iterdir() if p.is_dir() and pat.match(p.name) and (p / LAST_NAME).is_file())
    return runs[-1] if runs else None


# -- model construction ---------------------------------------------------------------


def resolve_init(init: str, data_dir: str | os.PathLike) -> Path:
    """A checkpoint path, a run folder, or a pretrained model name (``audiocnn.pretrained``)."""
    from audiocnn.pretrained import resolve_model

    try:
        return resolve_model(init, data_dir)
    except CheckpointError as exc:
        raise ConfigError(f"init={init!r}: {exc.message}", hint=exc.hint) from None


def build_model(config: TrainConfig, labels: Sequence[str], task: str, data_dir: str | os.PathLike):
    """Create the model of ``config``; with ``init``, start from a checkpoint's weights
    (same architecture and front-end), re-initialising the head when the labels differ."""
    from audiocnn.features.frontends import config_from_dict
    from audiocnn.models.registry import create_model

    if not config.init:
        return create_model(config.model, num_classes=len(labels), task=task, **config.model_kwargs), None
    path = resolve_init(config.init, data_dir)
    meta = read_metadata(path)
    if config.model and config.model != meta["model"]:
        raise ConfigError(
            f"init={config.init!r} is a {meta['model']!r} checkpoint but the config asks for model {config.model!r}",
            hint=f"set `--set model={meta['model']}` or leave model empty",
        )
    kwargs = dict(meta.get("model_kwargs") or {})
    kwargs.update(config.model_kwargs)
    kwargs["frontend"] = config_from_dict(meta["frontend"])
    model = create_model(meta["model"], num_classes=meta["num_classes"], task=meta["task"], **kwargs)
    state = load_weights(path, meta=meta)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit model {meta['model']!r} with these model_kwargs ({str(exc).splitlines()[0]})") from None
    same_head = list(meta.get("labels", [])) == list(labels) and meta.get("task") == task
    if not same_head:
        model.reset_head(len(labels))
    model.task = task
    info = {"path": str(path), "model": meta["model"], "head_reset": not same_head, "labels": meta.get("labels")}
    return model, info


def freeze_backbone(model: nn.Module) -> int:
    """Freeze every parameter outside the head; returns the number of frozen tensors."""
    head = {id(p) for p in model.head.parameters()}
    n = 0
    for p in model.parameters():
        if id(p) not in head:
            p.requires_grad_(False)
            n += 1
    return n


def set_train_mode(model: nn.Module, frozen_backbone: bool) -> None:
    """Train mode; with a frozen backbone its BatchNorm statistics and dropout stay in
    eval mode too, so the backbone is exactly unchanged."""
    model.train()
    if frozen_backbone:
        for name, child in model.named_children():
            if name != "head":
                child.eval()


# -- losses ---------------------------------------------------------------------------


class TaggingLoss(nn.Module):
    """Cross-entropy for single-label, BCE-with-logits for multi-label, with optional
    class weights (single-label) / positive weights (multi-label) and label smoothing."""

    def __init__(self, task: str, num_classes: int, *, label_smoothing: float = 0.0,
                 weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.task = task
        self.num_classes = num_classes
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("weight", weight if weight is not None else None, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        logits = logits.float()
        if self.task == "single-label":
            if target.dim() == 2:
                target = target.argmax(dim=1)
            return nn.functional.cross_entropy(logits, target.long(), weight=self.weight,
                                               label_smoothing=self.label_smoothing, reduction=reduction)
        if target.dim() == 1:
            target = nn.functional.one_hot(target.long(), self.num_classes)
        target = target.float()
        if self.label_smoothing:
            target = target * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
        loss = nn.functional.binary_cross_entropy_with_logits(logits, target, pos_weight=self.weight, reduction="none")
        loss = loss.mean(dim=1)
        return loss.mean() if reduction == "mean" else loss.sum() if reduction == "sum" else loss


def class_weights(counts: np.ndarray, n_clips: int, task: str) -> torch.Tensor:
    """``balanced`` weights from training label counts: n / (C * count) for single-label
    (sklearn's definition), negatives / positives per tag for multi-label."""
    counts = np.asarray(counts, dtype=np.float64)
    safe = np.maximum(counts, 1.0)
    if task == "single-label":
        w = n_clips / (len(counts) * safe)
    else:
        w = np.maximum(n_clips - counts, 1.0) / safe
    return torch.tensor(w, dtype=torch.float32)


# -- data -----------------------------------------------------------------------------


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


def eval_loader(dataset: Dataset, indices: Sequence[int], *, batch_size: int, workers: int,
                pin_memory: bool, seed: int = 0) -> DataLoader:
    return DataLoader(
        _Indexed(dataset, indices), batch_size=batch_size, shuffle=False, num_workers=workers,
        pin_memory=pin_memory, worker_init_fn=_seed_worker, generator=_generator(seed),
    )


@torch.no_grad()
def predict_clips(model: nn.Module, loader: DataLoader, *, device: torch.device, task: str,
                  autocast, loss_fn: TaggingLoss | None = None, non_blocking: bool = False) -> dict[str, Any]:
    """Song-level probabilities: each clip's chunks are scored and their probabilities
    averaged (softmax for single-label, sigmoid for multi-label)."""
    from audiocnn.models.base import logits_to_proba

    model.eval()
    idx_all, scores, targets = [], [], []
    loss_sum, loss_n = 0.0, 0
    for idx, x, y in loader:
        b, n = x.shape[0], x.shape[1]
        xb = x.reshape(b * n, *x.shape[2:]).to(device, non_blocking=non_blocking)
        with autocast():
            logits = model(xb, from_features=True)
        logits = logits.float()
        if loss_fn is not None:
            yt = y.to(device, non_blocking=non_blocking)
            yt = yt.repeat_interleave(n, dim=0)
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


# -- devices / precision ---------------------------------------------------------------


def amp_dtype_for(mode: str, device: torch.device) -> torch.dtype | None:
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


def make_autocast(device: torch.device, dtype: torch.dtype | None):
    def ctx():
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=dtype)
    return ctx


# -- progress ----------------------------------------------------------------------------


class _Progress:
    """Rich progress bar on stderr with running loss and samples/s (rank 0 only)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._p = None
        self._task = None

    def __enter__(self) -> "_Progress":
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            from audiocnn.cli.common import err_console

            self._p = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"), console=err_console(), transient=True,
            )
            self._p.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)

    def start(self, description: str, total: int) -> None:
        if self._p is not None:
            if self._task is not None:
                self._p.remove_task(self._task)
            self._task = self._p.add_task(description, total=total, info="")

    def update(self, advance: int = 1, info: str = "") -> None:
        if self._p is not None and self._task is not None:
            self._p.update(self._task, advance=advance, info=info)


# -- metrics.csv ------------------------------------------------------------------------


def write_metrics_csv(path: Path, history: list[dict[str, Any]]) -> None:
    if not history:
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0].keys()), lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: _fmt(v) for k, v in row.items()})
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}" if abs(v) < 1e-3 and v != 0 else f"{v:.6f}"
    return v


# -- the loop ---------------------------------------------------------------------------


def _monitor_name(config: TrainConfig, task: str) -> tuple[str, bool]:
    name = config.monitor
    if name == "auto":
        name = "accuracy" if task == "single-label" else "roc_auc_macro"
    if name in ("accuracy", "balanced_accuracy") and task != "single-label":
        raise ConfigError(f"monitor={name} is only defined for single-label tasks; use roc_auc_macro")
    return name, name != "valid_loss"


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
    from audiocnn.datasets.manifest import read_manifest
    from audiocnn.devices import resolve_device

    run_dir = Path(run_dir)
    dev = resolve_device(device)
    if D.env_world_size() > 1 and dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    info = D.init_distributed(dev.type)
    if not info.is_main:
        log.setLevel(logging.WARNING)
    try:
        return _train(config, run_dir, data_dir=Path(data_dir), device=dev, resume=resume,
                      progress=progress and info.is_main, info=info, read_manifest=read_manifest)
    finally:
        D.shutdown(info)


def _usable_workers(requested: int, world_size: int) -> int:
    """Loader workers per process, at most the CPUs this process may use divided among the
    local ranks: more only adds start-up time and memory. Crops do not depend on it."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    local = max(1, min(world_size, int(os.environ.get("LOCAL_WORLD_SIZE", world_size))))
    cap = max(0, cpus // local)
    if requested > cap:
        log.info("workers: %d requested, %d CPUs available per process; using %d", requested, cap, cap)
    return max(0, min(requested, cap))


def _family_has_scheme(family: str, scheme: str) -> bool:
    """Whether datasets of ``family`` (gtzan, mtat, folder, ...) offer split ``scheme``.

    A config written for GTZAN's fault-filtered split, pointed with ``--set dataset=NAME``
    at a user's folder dataset, trains on that dataset's own split: there is nothing to
    mismatch. Asking GTZAN prepared with ``random`` for ``fault-filtered`` is an error.
    """
    from audiocnn.datasets.registry import get_dataset

    try:
        return scheme in get_dataset(family).split_schemes
    except Exception:  # unknown family (e.g. a hand-written manifest): compare names only
        return True


def _train(config: TrainConfig, run_dir: Path, *, data_dir: Path, device: torch.device, resume: bool,
           progress: bool, info: D.DistInfo, read_manifest) -> TrainResult:
    from audiocnn.features.dataset import StoreDataset
    from audiocnn.features.store import extract_features, open_store

    # ---- dataset and task
    dataset_dir = data_dir / config.dataset
    manifest = read_manifest(dataset_dir)
    if config.split_scheme and config.split_scheme != manifest.split_scheme and \
            _family_has_scheme(manifest.dataset, config.split_scheme):
        raise DatasetError(
            f"dataset {config.dataset!r} is prepared with split scheme {manifest.split_scheme!r}, "
            f"the config asks for {config.split_scheme!r}",
            hint=f"prepare it again with that split scheme, or `--set split_scheme={manifest.split_scheme}`",
        )
    task = config.task or manifest.task
    if manifest.task == "multi-label" and task == "single-label":
        raise ConfigError(f"task=single-label on the multi-label dataset {config.dataset!r}: clips have several labels")
    counts = manifest.split_counts()
    for split in ("train", "valid"):
        if counts.get(split, 0) == 0:
            raise DatasetError(f"dataset {config.dataset!r} has no clips in its {split!r} split",
                               hint=f"see `audiocnn info {config.dataset}`")

    # ---- model (identical initial weights on every rank)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    labels = list(manifest.labels)
    raw_model, init_info = build_model(config, labels, task, data_dir)
    if init_info and info.is_main:
        log.info("init: weights from %s%s", init_info["path"], " (new head for these labels)" if init_info["head_reset"] else "")

    # ---- features: the store for exactly this model's front-end config
    if info.is_main:
        store = extract_features(dataset_dir, raw_model.frontend_config, progress=progress)
    D.barrier(info)
    if not info.is_main:
        store = open_store(dataset_dir, raw_model.frontend_config)
    if list(store.labels) != labels:
        raise DatasetError(f"feature store of {config.dataset!r} has other labels than its manifest; "
                           "prepare the dataset again")
    crop = int(config.crop_frames or raw_model.input_frames)

    # ---- run folder
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / CONFIG_NAME)

    # ---- model placement, freezing, wrappers
    if config.freeze_backbone:
        n = freeze_backbone(raw_model)
        log.info("freeze_backbone: %d parameter tensors frozen, training the head only", n)
    raw_model.to(device)
    if config.channels_last:
        raw_model.to(memory_format=torch.channels_last)
    model: nn.Module = raw_model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(raw_model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        model = torch.compile(model)
    params = [p for p in raw_model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("no trainable parameters (freeze_backbone left nothing to train)")

    # ---- loss
    weight = None
    if config.class_weighting == "balanced":
        train_clips = manifest.split("train")
        cnt = np.zeros(len(labels))
        for clip in train_clips:
            cnt[manifest.targets(clip)] += 1
        weight = class_weights(cnt, len(train_clips), task)
    loss_fn = TaggingLoss(task, len(labels), label_smoothing=config.label_smoothing, weight=weight).to(device)

    # ---- optimisation state
    monitor, higher = _monitor_name(config, task)
    schedule = LRSchedule(config, higher_is_better=higher)
    early = EarlyStopping(config.early_stopping.patience, config.early_stopping.min_delta, higher,
                          enabled=config.early_stopping.enabled)
    optimizer = build_optimizer(schedule.optimizer_name, params, schedule.lr_at_epoch_start(0), config)
    amp_dtype = amp_dtype_for(config.amp, device)
    autocast = make_autocast(device, amp_dtype)
    scaler = torch.amp.GradScaler(device.type, enabled=(amp_dtype == torch.float16 and device.type == "cuda"))
    history: list[dict[str, Any]] = []
    best_metric: float | None = None
    best_epoch: int | None = None
    start_epoch = 0
    stopped_early = False

    if resume:
        state = load_state(run_dir / LAST_NAME)
        raw_model.load_state_dict(state["model"])
        schedule.load_state_dict(state["schedule"])
        optimizer = build_optimizer(schedule.optimizer_name, params, schedule.lr, config)
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        early.load_state_dict(state["early_stopping"])
        history = list(state["history"])
        best_metric, best_epoch = state["best_metric"], state["best_epoch"]
        start_epoch = int(state["epoch"])
        stopped_early = bool(state.get("stopped_early"))
        set_rng_state(state["rng"][min(info.rank, len(state["rng"]) - 1)])
        log.info("resuming %s after epoch %d of %d", run_dir, start_epoch, config.epochs)
    else:
        torch.manual_seed(config.seed + info.rank)  # per-rank dropout streams

    # ---- data loaders
    cuda = device.type == "cuda"
    train_ds = StoreDataset(store, "train", mode="train", crop_frames=crop, seed=config.seed)
    valid_ds = StoreDataset(store, "valid", mode="eval", crop_frames=crop, eval_chunks=config.eval_chunks, seed=config.seed)
    if len(train_ds) == 0 or len(valid_ds) == 0:
        raise DatasetError(f"feature store of {config.dataset!r} has no usable clips in train or valid",
                           hint="see failures.jsonl in the store")
    sampler = DistributedSampler(train_ds, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=config.seed, drop_last=False)
    train_gen = _generator(config.seed)
    workers = _usable_workers(config.workers, info.world_size)
    train_loader = DataLoader(
        train_ds, batch_size=config.batch_size, sampler=sampler, num_workers=workers,
        pin_memory=cuda, worker_init_fn=_seed_worker, generator=train_gen,
        # a last batch of one example breaks BatchNorm; drop it only then
        drop_last=len(sampler) % config.batch_size == 1 and len(sampler) > 1,
    )
    valid_loader = eval_loader(valid_ds, D.shard_indices(len(valid_ds), info), batch_size=config.eval_batch_size,
                               workers=workers, pin_memory=cuda, seed=config.seed)
    steps_per_epoch = len(train_loader)
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)

    writer = _tensorboard(run_dir, config) if info.is_main else None
    log.info(
        "training %s on %s: %d train / %d valid clips, %s, %d steps/epoch, device %s%s%s",
        raw_model.registry_name, config.dataset, len(train_ds), len(valid_ds), task, steps_per_epoch, device,
        f", amp {str(amp_dtype).replace('torch.', '')}" if amp_dtype else "",
        f", {info.world_size} processes" if info.enabled else "",
    )

    with _Progress(progress) as bar:
        for epoch in range(start_epoch, config.epochs):
            if stopped_early:
                break
            lr = schedule.lr_at_epoch_start(epoch)
            set_lr(optimizer, lr)
            train_ds.set_epoch(epoch)
            sampler.set_epoch(epoch)
            train_gen.manual_seed(config.seed * 1_000_003 + epoch)
            t0 = time.perf_counter()
            model.train()
            set_train_mode(raw_model, config.freeze_backbone)
            bar.start(f"epoch {epoch + 1}/{config.epochs}", steps_per_epoch)
            guard = _Guard(run_dir, epoch, has_state=(run_dir / LAST_NAME).is_file())
            loss_sum, n_seen, wait = _train_epoch(
                model, train_loader, steps=steps_per_epoch, device=device, autocast=autocast, loss_fn=loss_fn,
                optimizer=optimizer, scaler=scaler, params=params, grad_clip=config.grad_clip, bar=bar,
                info=info, guard=guard,
            )
            H.check_weights(params, epoch=epoch + 1, run_dir=run_dir, last_good_epoch=epoch, has_state=guard.has_state)
            train_time = time.perf_counter() - t0
            loss_sum, n_seen = D.all_reduce_sum([loss_sum, float(n_seen)], info)
            bn_time = _refresh_batchnorm(raw_model, train_loader, config, steps_per_epoch, device, autocast, info)

            # ---- validation (song level), gathered across ranks
            bar.start("validating", len(valid_loader))
            part = predict_clips(model, valid_loader, device=device, task=task, autocast=autocast,
                                 loss_fn=loss_fn, non_blocking=cuda)
            val = gather_predictions(part, info)
            metrics = compute_metrics(val["targets"], val["scores"], task, labels)
            value = val["loss"] if monitor == "valid_loss" else metrics[monitor]

            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "train_loss": loss_sum / max(n_seen, 1),
                "valid_loss": val["loss"],
                "roc_auc_macro": metrics["roc_auc_macro"],
                "pr_auc_macro": metrics["pr_auc_macro"],
            }
            if task == "single-label":
                row["accuracy"] = metrics["accuracy"]
                row["balanced_accuracy"] = metrics["balanced_accuracy"]
            row.update({
                "lr": lr,
                "time_s": time.perf_counter() - t0,
                "samples_per_s": n_seen / max(train_time, 1e-9),
                "data_wait": wait / max(train_time, 1e-9),
                "bn_stats_s": bn_time,
            })
            history.append(row)

            improved = is_better(value, best_metric, higher) or best_epoch is None
            if improved:
                best_metric, best_epoch = (None if isinstance(value, float) and math.isnan(value) else value), epoch + 1
                if info.is_main:
                    meta = model_metadata(
                        raw_model, labels, {**summary(metrics), "valid_loss": val["loss"]},
                        dataset=config.dataset, split_scheme=manifest.split_scheme, epoch=epoch + 1,
                        monitor=monitor, eval_chunks=config.eval_chunks, source="audiocnn train",
                    )
                    save_checkpoint(run_dir / BEST_NAME, raw_model, meta)
            action = schedule.after_epoch(epoch, value)
            stopped_early = early.update(value)
            if action.stage_changed:
                early.restart()
                stopped_early = False
            if action.reload_best:
                D.barrier(info)
                _load_best(raw_model, run_dir / BEST_NAME, device)
            if action.new_optimizer:
                optimizer = build_optimizer(action.new_optimizer, params, action.lr, config)
            if action.message:
                log.info("epoch %d: %s", epoch + 1, action.message)

            if info.is_main:
                write_metrics_csv(run_dir / METRICS_NAME, history)
                _tb_log(writer, row)
            rngs = D.all_gather_objects(rng_state(), info)
            if info.is_main:
                save_state(run_dir / LAST_NAME, {
                    "epoch": epoch + 1,
                    "model": {k: v.detach().cpu() for k, v in raw_model.state_dict().items()},
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                    "early_stopping": early.state_dict(),
                    "best_metric": best_metric,
                    "best_epoch": best_epoch,
                    "history": history,
                    "stopped_early": stopped_early,
                    "rng": rngs,
                    "config": config.to_dict(),
                })
            D.barrier(info)
            log.info(
                "epoch %d/%d  train_loss %.4f  valid_loss %.4f  roc_auc %.4f  pr_auc %.4f%s  lr %.2g  %.1f samples/s%s",
                epoch + 1, config.epochs, row["train_loss"], row["valid_loss"], row["roc_auc_macro"], row["pr_auc_macro"],
                f"  acc {row['accuracy']:.4f}" if "accuracy" in row else "", lr, row["samples_per_s"],
                "  *best*" if improved else "",
            )
            note = H.overfitting_note(history)
            if note:
                log.warning("epoch %d: %s", epoch + 1, note)
            if stopped_early:
                log.info("early stopping: no improvement of %s for %d epochs", monitor, early.patience)

    if writer is not None:
        writer.close()
    if info.is_main and history:
        try:
            from audiocnn.training.plots import plot_training_curves

            plot_training_curves(run_dir / METRICS_NAME, run_dir / "curves.png")
        except Exception as exc:  # a plot must never fail a finished run
            log.warning("could not plot training curves: %s", exc)
    return TrainResult(run_dir=run_dir, best_epoch=best_epoch, best_metric=best_metric, monitor=monitor,
                       epochs_run=len(history), stopped_early=stopped_early, history=history)



@dataclass
class _Guard:
    """What a divergence message needs to say where the last good state is."""

    run_dir: Path
    epoch: int  # 0-based epoch being trained; epochs finished before it are good
    has_state: bool


def _train_epoch(model: nn.Module, loader: DataLoader, *, steps: int, device: torch.device, autocast,
                 loss_fn: TaggingLoss, optimizer, scaler, params, grad_clip: float | None, bar: _Progress,
                 info: D.DistInfo, guard: _Guard) -> tuple[float, int, float]:
    """One epoch of optimisation steps; returns (summed loss, examples seen, seconds waiting
    for data). Stops the run on a NaN or infinite loss (every rank at the same step)."""
    cuda = device.type == "cuda"
    loss_sum, n_seen, wait = 0.0, 0, 0.0
    t0 = t_wait = time.perf_counter()
    for step, (x, y) in enumerate(loader):
        if step >= steps:
            break
        wait += time.perf_counter() - t_wait
        x = x.to(device, non_blocking=cuda)
        y = y.to(device, non_blocking=cuda)
        with autocast():
            logits = model(x, from_features=True)
        loss = loss_fn(logits, y)
        value = float(loss.detach())
        if info.enabled:  # one rank's NaN stops them all, or the others would wait forever
            value = D.all_reduce_sum([value], info)[0]
        H.check_loss(value, epoch=guard.epoch + 1, step=step + 1, run_dir=guard.run_dir,
                     last_good_epoch=guard.epoch, has_state=guard.has_state)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        scaler.step(optimizer)
        scaler.update()
        b = x.shape[0]
        loss_sum += float(loss.detach()) * b
        n_seen += b
        elapsed = time.perf_counter() - t0
        bar.update(1, f"loss {loss_sum / n_seen:.4f}  {n_seen * info.world_size / max(elapsed, 1e-9):.1f} samples/s")
        t_wait = time.perf_counter()
    if cuda:
        torch.cuda.synchronize(device)
    return loss_sum, n_seen, wait


def _refresh_batchnorm(model: nn.Module, loader: DataLoader, config: TrainConfig, steps: int,
                       device: torch.device, autocast, info: D.DistInfo) -> float:
    """Recompute the BatchNorm statistics of the trained layers (training/batchnorm.py)
    from this epoch's training crops; returns the seconds it took."""
    t = time.perf_counter()
    cuda = device.type == "cuda"

    def forward(x: torch.Tensor) -> torch.Tensor:
        with autocast():
            return model(x.to(device, non_blocking=cuda), from_features=True)

    recompute_batchnorm_stats(model, (x for x, _y in loader), max_batches=min(config.bn_stats_batches, steps),
                              forward=forward, info=info)
    return time.perf_counter() - t


def _load_best(model: nn.Module, path: Path, device: torch.device) -> None:
    if path.is_file():
        model.load_state_dict(load_weights(path, device))


def _tensorboard(run_dir: Path, config: TrainConfig):
    if not config.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def _tb_log(writer, row: dict[str, Any]) -> None:
    if writer is None:
        return
    for k, v in row.items():
        if k != "epoch" and isinstance(v, (int, float)) and not math.isnan(v):
            writer.add_scalar(k, v, row["epoch"])
    writer.flush()


def metrics_rows(path: str | os.PathLike, drop_timing: bool = True) -> list[dict[str, str]]:
    """metrics.csv rows, optionally without the machine-dependent timing columns."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if drop_timing:
        rows = [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]
    return rows
