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
from audiocnn.models.checkpoint import DEFAULT_THRESHOLD


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
    thresholds: Sequence[float] | None = None,
) -> dict[str, Any]:
    """All song-level metrics of one split.

    ``targets``: class indices (n,) for single-label or multi-hot (n, C) for multi-label;
    ``scores``: probabilities (n, C) (softmax or sigmoid, averaged over chunks).
    ``thresholds``: the per-tag decision thresholds of a multi-label model (default
    :data:`DEFAULT_THRESHOLD` for every tag); single-label decisions are the arg-max.
    Precision, recall and F1 of those decisions are reported micro and macro, and per tag.
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
        pred = to_multi_hot(scores.argmax(axis=1), n_labels).astype(bool) if n else y_true.astype(bool)
        cut = None
    else:
        cut = np.full(n_labels, DEFAULT_THRESHOLD) if thresholds is None else check_thresholds(thresholds, n_labels)
        pred = scores >= cut
    if n:
        _add_decisions(out, decision_metrics(y_true, pred), cut)
    return out


def check_thresholds(thresholds: Sequence[float], n_labels: int) -> np.ndarray:
    """``thresholds`` as an array of ``n_labels`` finite values in [0, 1]."""
    cut = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if len(cut) != n_labels:
        raise ValueError(f"{len(cut)} thresholds for {n_labels} labels")
    if not np.all(np.isfinite(cut)) or cut.min(initial=0.0) < 0 or cut.max(initial=0.0) > 1:
        raise ValueError("thresholds must be finite numbers in [0, 1]")
    return cut


def decision_metrics(y_true: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """Precision, recall and F1 of yes/no decisions ``pred`` (n, C) against ``y_true``:
    per tag, macro (over the tags with a positive clip) and micro (over every decision).
    A tag never predicted has precision 0, as scikit-learn's ``zero_division=0``."""
    pred = np.asarray(pred, dtype=bool)
    truth = np.asarray(y_true).astype(bool)
    tp = (pred & truth).sum(axis=0).astype(np.float64)
    fp = (pred & ~truth).sum(axis=0).astype(np.float64)
    fn = (~pred & truth).sum(axis=0).astype(np.float64)
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    has_pos = truth.sum(axis=0) > 0
    t, p, n = tp.sum(), tp.sum() + fp.sum(), tp.sum() + fn.sum()
    out: dict[str, Any] = {"per_tag": {"precision": precision, "recall": recall, "f1": f1}}
    for name, per in (("precision", precision), ("recall", recall), ("f1", f1)):
        out[f"{name}_macro"] = float(per[has_pos].mean()) if has_pos.any() else float("nan")
    out["precision_micro"] = float(t / p) if p else 0.0
    out["recall_micro"] = float(t / n) if n else float("nan")
    out["f1_micro"] = float(2 * t / (p + n)) if p + n else float("nan")
    return out


def _add_decisions(out: dict[str, Any], dec: dict[str, Any], cut: np.ndarray | None) -> None:
    per = dec.pop("per_tag")
    out.update(dec)
    for j, row in enumerate(out["per_tag"]):
        if cut is not None:
            row["threshold"] = float(cut[j])
        for name in ("precision", "recall", "f1"):
            row[name] = float(per[name][j])


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def best_f1_thresholds(y_true: np.ndarray, scores: np.ndarray, fallback: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Per tag, the threshold whose decisions ``score >= threshold`` maximise F1 on these
    clips (the validation split); ``fallback`` for a tag without a positive clip.

    The threshold lies halfway between the lowest score called positive and the next
    lower score, so a clip scored a little differently on new audio keeps its decision;
    ties in F1 keep the highest threshold (the fewest false positives).
    """
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    out = np.full(s.shape[1], float(fallback))
    for j in range(s.shape[1]):
        pos = int(y[:, j].sum())
        if pos == 0:
            continue
        order = np.argsort(-s[:, j], kind="stable")
        ranked, hits = s[order, j], y[order, j]
        tp = np.cumsum(hits)
        k = np.arange(1, len(ranked) + 1)
        last = np.r_[ranked[1:] != ranked[:-1], True]  # cut only between distinct scores
        f1 = np.where(last, 2 * tp / (k + pos), -1.0)
        i = int(np.argmax(f1))
        below = ranked[i + 1] if i + 1 < len(ranked) else 0.0
        out[j] = float((ranked[i] + below) / 2) if below < ranked[i] else float(ranked[i])
    return out


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
