"""What happens at the end of each epoch besides optimisation: the best checkpoint, the
metrics CSV, TensorBoard and the log line. Each is a small object with
``on_epoch_end(end)``; only rank 0 writes."""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import nn

from audiocnn.fileio import atomic_write_bytes
from audiocnn.models.checkpoint import model_metadata, save_checkpoint
from audiocnn.training import health as H
from audiocnn.training.config import TrainConfig
from audiocnn.training.metrics import summary
from audiocnn.training.rundir import RunDir

log = logging.getLogger("audiocnn.train")

# metrics.csv columns that measure the machine, not the model (differ between re-runs)
TIMING_COLUMNS = ("time_s", "samples_per_s", "data_wait", "bn_stats_s")


@dataclass
class EpochEnd:
    """One finished epoch as the callbacks see it."""

    epoch: int  # 1-based
    row: dict[str, Any]  # this epoch's metrics.csv row
    history: list[dict[str, Any]]
    metrics: dict[str, Any]  # validation metrics (compute_metrics)
    improved: bool
    extra: dict[str, Any] = field(default_factory=dict)


class Callback(Protocol):
    def on_epoch_end(self, end: EpochEnd) -> None: ...


class BestCheckpoint:
    """``best.safetensors`` whenever the monitored metric improves, with the per-tag
    decision thresholds picked on that epoch's validation predictions (multi-label)."""

    def __init__(
        self, run: RunDir, model: nn.Module, labels: list[str], config: TrainConfig, split_scheme: str, monitor: str
    ) -> None:
        self.run, self.model, self.labels = run, model, labels
        self.config, self.split_scheme, self.monitor = config, split_scheme, monitor

    def on_epoch_end(self, end: EpochEnd) -> None:
        if not end.improved:
            return
        extra = {"thresholds": end.metrics["thresholds"]} if "thresholds" in end.metrics else {}
        meta = model_metadata(
            self.model,
            self.labels,
            {**summary(end.metrics), "valid_loss": end.row["valid_loss"]},
            dataset=self.config.dataset,
            split_scheme=self.split_scheme,
            epoch=end.epoch,
            monitor=self.monitor,
            eval_chunks=self.config.eval_chunks,
            source="audiocnn train",
            **extra,
        )
        save_checkpoint(self.run.best, self.model, meta)


class MetricsCSV:
    """``metrics.csv``, rewritten whole from the history (so it never holds an epoch that
    ``last.pt`` does not)."""

    def __init__(self, run: RunDir) -> None:
        self.run = run

    def on_epoch_end(self, end: EpochEnd) -> None:
        write_metrics_csv(self.run.metrics, end.history)


class TensorBoard:
    """Scalars of every epoch under ``tensorboard/`` when tensorboard is installed."""

    def __init__(self, run: RunDir, enabled: bool) -> None:
        self.writer = _summary_writer(run) if enabled else None

    def on_epoch_end(self, end: EpochEnd) -> None:
        if self.writer is None:
            return
        for k, v in end.row.items():
            if k != "epoch" and isinstance(v, (int, float)) and not math.isnan(v):
                self.writer.add_scalar(k, v, end.epoch)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _summary_writer(run: RunDir):
    try:
        from torch.utils.tensorboard import SummaryWriter  # deferred: tensorboard is optional
    except Exception:  # tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(run.tensorboard))


class EpochLog:
    """The epoch's log line, and a warning when the run overfits."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_epoch_end(self, end: EpochEnd) -> None:
        r = end.row
        log.info(
            "epoch %d/%d  train_loss %.4f  valid_loss %.4f  roc_auc %.4f  pr_auc %.4f%s  lr %.2g  %.1f samples/s%s",
            end.epoch,
            self.epochs,
            r["train_loss"],
            r["valid_loss"],
            r["roc_auc_macro"],
            r["pr_auc_macro"],
            f"  acc {r['accuracy']:.4f}" if "accuracy" in r else "",
            r["lr"],
            r["samples_per_s"],
            "  *best*" if end.improved else "",
        )
        note = H.overfitting_note(end.history)
        if note:
            log.warning("epoch %d: %s", end.epoch, note)


# -- metrics.csv ------------------------------------------------------------------------


def write_metrics_csv(path: str | os.PathLike, history: list[dict[str, Any]]) -> None:
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


def metrics_rows(path: str | os.PathLike, drop_timing: bool = True) -> list[dict[str, str]]:
    """metrics.csv rows, optionally without the machine-dependent timing columns."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if drop_timing:
        rows = [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]
    return rows
