"""PNG plots of a run and of an evaluation (matplotlib's Agg canvas, no display needed).

Figures are built with ``matplotlib.figure.Figure`` directly rather than ``pyplot`` so
no global state or GUI backend is touched (safe in worker processes and tests).
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from audiocnn.fileio import atomic_write_bytes


def _figure(width: float, height: float):
    # deferred: matplotlib takes a while to import and only plots need it
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())  # no temp file is left behind when a write fails
    return path


def read_metrics_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            rows.append({k: _num(v) for k, v in row.items()})
    return rows


def _num(v: str | None) -> Any:
    if v is None or v == "":
        return float("nan")
    try:
        return float(v)
    except ValueError:
        return v


#: the validation curves: (metrics.csv column, line style); balanced accuracy dashed, so
#: that it never hides accuracy (they are equal on a balanced split)
VALIDATION_CURVES = (
    ("roc_auc_macro", {"marker": "o"}),
    ("pr_auc_macro", {"marker": "o"}),
    ("accuracy", {"marker": "s", "markersize": 7, "alpha": 0.7}),
    ("balanced_accuracy", {"marker": "x", "linestyle": "--"}),
)


def plot_training_curves(
    metrics_csv: str | os.PathLike, out: str | os.PathLike, best_epoch: int | None = None
) -> Path | None:
    """Loss (train/valid), validation ROC/PR-AUC, accuracy and balanced accuracy, and lr
    per epoch; ``best_epoch`` (1-based: the epoch of ``best.safetensors``) is marked."""
    rows = read_metrics_csv(metrics_csv)
    if not rows:
        return None
    ep = [r["epoch"] for r in rows]
    fig = _figure(11, 3.4)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    ax1.plot(ep, [r.get("train_loss") for r in rows], marker="o", label="train")
    ax1.plot(ep, [r.get("valid_loss") for r in rows], marker="o", label="valid")
    ax1.set_title("loss")
    ax1.set_xlabel("epoch")
    for key, style in VALIDATION_CURVES:
        if key in rows[0]:
            ax2.plot(ep, [r.get(key) for r in rows], label=key, **style)
    if best_epoch is not None:
        for ax in (ax1, ax2, ax3):
            ax.axvline(best_epoch, color="gray", linestyle=":", label=f"best (epoch {best_epoch})")
    ax1.legend()
    ax2.set_title("validation (song level)")
    ax2.set_xlabel("epoch")
    ax2.legend(fontsize="small")
    ax3.plot(ep, [r.get("lr") for r in rows], marker="o")
    ax3.set_yscale("log")
    ax3.set_title("learning rate")
    ax3.set_xlabel("epoch")
    return _save(fig, out)


def write_harmonic_filters(summaries: dict[str, dict[str, Any]], png: str | os.PathLike, csv_path: str | os.PathLike):
    """The Harmonic CNN's band-pass filters, ``initial`` against ``learned`` (each a
    ``HarmonicCNN.filter_summary()``): a CSV of every filter's centre and bandwidth, and a
    PNG of the first harmonic's bands (centre and band edges over pitch index, and the
    learned/initial ratio of centres and bandwidths for every harmonic)."""
    init, learned = summaries["initial"], summaries["learned"]
    bands, n_harm = int(init["bands"]), int(init["n_harmonic"])
    lines = ["harmonic,band,initial_hz,learned_hz,initial_bandwidth_hz,learned_bandwidth_hz"]
    for i in range(bands * n_harm):
        h, b = divmod(i, bands)
        vals = (init["f0_hz"][i], learned["f0_hz"][i], init["bandwidth_hz"][i], learned["bandwidth_hz"][i])
        lines.append(f"{h + 1},{b}," + ",".join(f"{v:.4f}" for v in vals))
    atomic_write_bytes(Path(csv_path), ("\n".join(lines) + "\n").encode())
    fig = _figure(11, 4.2)
    ax1, ax2 = fig.subplots(1, 2)
    idx = np.arange(bands)
    for summary, colour, name in ((init, "tab:grey", "initial"), (learned, "tab:red", "learned")):
        f0, half = summary["f0_hz"][:bands], summary["bandwidth_hz"][:bands] / 2
        ax1.plot(idx, f0, color=colour, label=f"{name} centre (Q={summary['q']:.3f})")
        ax1.fill_between(idx, f0 - half, f0 + half, color=colour, alpha=0.25, label=f"{name} band")
    ax1.set_yscale("log")
    ax1.set_xlabel("pitch band (first harmonic)")
    ax1.set_ylabel("Hz")
    ax1.set_title("harmonic filters: initial vs learned")
    ax1.legend(fontsize="x-small")
    ratio_f0 = learned["f0_hz"] / init["f0_hz"]
    ratio_bw = learned["bandwidth_hz"] / init["bandwidth_hz"]
    ax2.plot(ratio_f0, label="centre, learned / initial")
    ax2.plot(ratio_bw, label="bandwidth, learned / initial")
    for h in range(1, n_harm):
        ax2.axvline(h * bands, color="grey", lw=0.5)
    ax2.set_xlabel(f"filter ({n_harm} harmonics x {bands} bands)")
    ax2.set_title("change per filter")
    ax2.legend(fontsize="x-small")
    return _save(fig, png)


def plot_per_tag_auc(per_tag: Sequence[dict[str, Any]], out: str | os.PathLike) -> Path | None:
    """Horizontal bars of per-label ROC-AUC, sorted; unscored labels are left out."""
    items = sorted(((t["label"], t["roc_auc"]) for t in per_tag if t.get("roc_auc") is not None), key=lambda x: x[1])
    if not items:
        return None
    names, vals = zip(*items)
    fig = _figure(7, max(2.5, 0.22 * len(items) + 1))
    ax = fig.subplots()
    ax.barh(range(len(vals)), vals, color="tab:blue")
    ax.set_yticks(range(len(vals)))
    ax.set_yticklabels(names, fontsize=7)
    ax.set_xlim(min(0.5, min(vals) - 0.02), 1.0)
    ax.set_xlabel("ROC-AUC")
    ax.set_title("per-label ROC-AUC")
    return _save(fig, out)


def plot_confusion_matrix(cm: Sequence[Sequence[int]], labels: Sequence[str], out: str | os.PathLike) -> Path:
    cm = np.asarray(cm, dtype=np.float64)
    n = len(labels)
    fig = _figure(max(4, 0.45 * n + 2), max(3.5, 0.45 * n + 1.5))
    ax = fig.subplots()
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticklabels(labels, fontsize=7)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        int(cm[i, j]),
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (row-normalised)")
    return _save(fig, out)


def plot_roc_pr_curves(
    y_true: np.ndarray,
    scores: np.ndarray,
    labels: Sequence[str],
    per_tag: Sequence[dict[str, Any]],
    out: str | os.PathLike,
    k: int = 3,
) -> Path | None:
    """ROC and precision-recall curves of the ``k`` best and ``k`` worst labels by ROC-AUC."""
    scored = [(j, t["roc_auc"]) for j, t in enumerate(per_tag) if t.get("roc_auc") is not None]
    if not scored:
        return None
    scored.sort(key=lambda x: x[1])
    pick = scored[-k:][::-1] + [s for s in scored[:k] if s not in scored[-k:]]
    fig = _figure(10, 4.2)
    ax1, ax2 = fig.subplots(1, 2)
    for rank, (j, auc) in enumerate(pick):
        style = "-" if rank < min(k, len(scored)) else "--"
        fpr, tpr, _ = roc_curve(y_true[:, j], scores[:, j])
        prec, rec, _ = precision_recall_curve(y_true[:, j], scores[:, j])
        ax1.plot(fpr, tpr, style, label=f"{labels[j]} ({auc:.3f})")
        ax2.plot(rec, prec, style, label=labels[j])
    ax1.plot([0, 1], [0, 1], color="grey", lw=0.5)
    ax1.set_xlabel("false positive rate")
    ax1.set_ylabel("true positive rate")
    ax1.set_title("ROC (solid: best, dashed: worst)")
    ax1.legend(fontsize="x-small")
    ax2.set_xlabel("recall")
    ax2.set_ylabel("precision")
    ax2.set_title("precision-recall")
    ax2.legend(fontsize="x-small")
    return _save(fig, out)


def is_finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not math.isnan(x)
