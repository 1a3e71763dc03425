"""Song-level metrics the way the tagging literature reports them.

Macro ROC-AUC / PR-AUC are scikit-learn's ``roc_auc_score`` / ``average_precision_score``
computed per label and averaged (as in the evaluation code of Won et al. 2020 and
musicnn). A label that is absent from the split, or present in every clip, has no
defined ROC-AUC: it is reported in ``excluded_labels`` and left out of the macro
averages instead of crashing the run. Single-label tasks get accuracy, balanced
accuracy and the confusion matrix, plus one-vs-rest ROC/PR-AUC over the softmax scores.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from audiocnn.constants import SCALAR_METRICS, SINGLE_LABEL


def to_multi_hot(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """Class indices (n,) -> one-hot (n, C); a (n, C) array is returned as int."""
    targets = np.asarray(targets)
    if targets.ndim == 2:
        return (targets > 0.5).astype(np.int64)
    out = np.zeros((len(targets), num_classes), dtype=np.int64)
    out[np.arange(len(targets)), targets.astype(np.int64)] = 1
    return out


def per_label_auc(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC-AUC and PR-AUC per column; NaN where a label has only one class in ``y_true``.

    Returns ``(roc_auc, pr_auc, n_positive)``.
    """
    n_labels = y_true.shape[1]
    roc = np.full(n_labels, np.nan)
    pr = np.full(n_labels, np.nan)
    pos = y_true.sum(axis=0)
    for j in range(n_labels):
        if 0 < pos[j] < len(y_true):
            roc[j] = roc_auc_score(y_true[:, j], y_score[:, j])
            pr[j] = average_precision_score(y_true[:, j], y_score[:, j])
    return roc, pr, pos


def compute_metrics(
    targets: np.ndarray,
    scores: np.ndarray,
    task: str,
    labels: Sequence[str],
) -> dict[str, Any]:
    """All song-level metrics of one split.

    ``targets``: class indices (n,) for single-label or multi-hot (n, C) for multi-label;
    ``scores``: probabilities (n, C) (softmax or sigmoid, averaged over chunks).
    """
    scores = np.asarray(scores, dtype=np.float64)
    n, n_labels = scores.shape if scores.ndim == 2 else (0, len(labels))
    if n_labels != len(labels):
        raise ValueError(f"{n_labels} score columns for {len(labels)} labels")
    y_true = to_multi_hot(targets, n_labels) if n else np.zeros((0, n_labels), dtype=np.int64)
    roc, pr, pos = per_label_auc(y_true, scores) if n else (np.full(n_labels, np.nan),) * 2 + (np.zeros(n_labels),)
    valid = ~np.isnan(roc)
    excluded = []
    for j in np.flatnonzero(~valid):
        reason = "absent from the split" if pos[j] == 0 else "positive in every clip"
        excluded.append({"label": labels[j], "reason": reason})
    out: dict[str, Any] = {
        "n_clips": int(n),
        "n_labels": int(n_labels),
        "n_labels_scored": int(valid.sum()),
        "roc_auc_macro": _mean(roc[valid]),
        "pr_auc_macro": _mean(pr[valid]),
        "roc_auc_micro": float("nan"),
        "pr_auc_micro": float("nan"),
        "excluded_labels": excluded,
        "per_tag": [
            {
                "label": labels[j],
                "n_positive": int(pos[j]),
                "roc_auc": _f(roc[j]),
                "pr_auc": _f(pr[j]),
            }
            for j in range(n_labels)
        ],
    }
    if valid.any():
        # micro over the scored labels only, so one absent tag does not change its meaning
        yt, ys = y_true[:, valid].ravel(), scores[:, valid].ravel()
        if 0 < yt.sum() < len(yt):
            out["roc_auc_micro"] = float(roc_auc_score(yt, ys))
            out["pr_auc_micro"] = float(average_precision_score(yt, ys))
    if task == SINGLE_LABEL:
        out.update(_single_label_metrics(np.asarray(targets), scores, n_labels))
    elif n:
        out.update(f1_at(y_true, scores, F1_THRESHOLD))
    return out


#: decision threshold of the multi-label F1 reported next to the AUCs
F1_THRESHOLD = 0.5


def f1_at(y_true: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """Macro F1 (over the labels with a positive clip) and micro F1 of the decisions
    ``score >= threshold``: what a user acting on the tags gets, which AUCs do not show."""
    pred = scores >= threshold
    truth = y_true.astype(bool)
    tp = (pred & truth).sum(axis=0).astype(np.float64)
    fp = (pred & ~truth).sum(axis=0).astype(np.float64)
    fn = (~pred & truth).sum(axis=0).astype(np.float64)
    denom = 2 * tp + fp + fn
    per = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    has_pos = truth.sum(axis=0) > 0
    micro_den = 2 * tp.sum() + fp.sum() + fn.sum()
    return {
        "f1_threshold": float(threshold),
        "f1_macro": float(per[has_pos].mean()) if has_pos.any() else float("nan"),
        "f1_micro": float(2 * tp.sum() / micro_den) if micro_den else float("nan"),
    }


def _single_label_metrics(targets: np.ndarray, scores: np.ndarray, n_labels: int) -> dict[str, Any]:
    if targets.ndim == 2:
        targets = targets.argmax(axis=1)
    targets = targets.astype(np.int64)
    pred = scores.argmax(axis=1) if len(scores) else np.zeros(0, dtype=np.int64)
    cm = np.zeros((n_labels, n_labels), dtype=np.int64)
    np.add.at(cm, (targets, pred), 1)
    support = cm.sum(axis=1)
    present = support > 0
    recalls = np.diag(cm)[present] / support[present]
    return {
        "accuracy": float((pred == targets).mean()) if len(targets) else float("nan"),
        # balanced accuracy = mean recall over the classes present (sklearn's definition)
        "balanced_accuracy": float(recalls.mean()) if present.any() else float("nan"),
        "confusion_matrix": cm.tolist(),
    }


def _mean(a: np.ndarray) -> float:
    return float(a.mean()) if a.size else float("nan")


def _f(x: float) -> float | None:
    return None if (x is None or (isinstance(x, float) and math.isnan(x))) else float(x)


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The scalar part (what goes into a checkpoint's metadata or a CSV row)."""
    return {k: metrics[k] for k in (*SCALAR_METRICS, "n_clips") if k in metrics}
