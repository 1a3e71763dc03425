"""``audiocnn evaluate``: song-level metrics of a trained model on a split, with plots.

The target is a run folder (its ``best.safetensors`` and ``config.yaml``), any
checkpoint file or a pretrained name. Each clip is scored from its audio file by the
tagger, exactly as ``audiocnn tag`` scores it (this module sits above both training and
tagging: tag's prediction path, training's metrics).

Written next to each other in the output folder: ``metrics.json``, ``scores.csv`` (per
clip: its true labels, the model's decision, whether they agree, every label's score),
``misclassified.csv`` (the clips whose decision is wrong), ``per_tag.csv``,
``per_tag_roc_auc.png``, ``roc_pr_curves.png``, ``confusion_matrix.png`` and
``confusion_matrix.txt`` (single-label) and ``curves.png`` (training curves, when the
run's ``metrics.csv`` is there).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from audiocnn.configio import read_yaml
from audiocnn.constants import SINGLE_LABEL, SPLITS
from audiocnn.datasets.info import prepared_dataset_dir
from audiocnn.datasets.manifest import read_manifest
from audiocnn.datasets.registry import get_dataset, list_datasets
from audiocnn.errors import AudioDecodeError, CheckpointError, DatasetError, UsageError, next_call
from audiocnn.fileio import atomic_write_bytes, ensure_writable_dir
from audiocnn.models.checkpoint import DEFAULT_THRESHOLD, thresholds_of
from audiocnn.pretrained import is_pretrained_name, resolve_model
from audiocnn.progress import progress_bar
from audiocnn.tagging import Tagger, TagOptions
from audiocnn.training import plots as P
from audiocnn.training.metrics import compute_metrics, to_multi_hot
from audiocnn.training.rundir import BEST_NAME, CONFIG_NAME, METRICS_NAME

log = logging.getLogger("audiocnn.evaluate")


def resolve_target(target: str | os.PathLike) -> tuple[Path, Path | None, dict[str, Any] | None]:
    """``(checkpoint, run_dir or None, run config dict or None)``; the pretrained names
    ``tag`` accepts (``musicnn-mtt``...) resolve as they do there."""

    if is_pretrained_name(str(target)) and not Path(target).exists():
        return resolve_model(str(target)), None, None
    p = Path(target).expanduser()
    if p.is_dir():
        ckpt = p / BEST_NAME
        if not ckpt.is_file():
            raise CheckpointError(
                f"{p}: run folder without {BEST_NAME}",
                hint=f"train first: `{next_call('train', 'CONFIG', run_dir=str(p))}`",
            )
        cfg = read_yaml(p / CONFIG_NAME) if (p / CONFIG_NAME).is_file() else None
        return ckpt, p, cfg
    if p.is_file():
        run_dir = p.parent if (p.parent / CONFIG_NAME).is_file() else None
        cfg = read_yaml(p.parent / CONFIG_NAME) if run_dir else None
        return p, run_dir, cfg
    raise CheckpointError(
        f"{p}: no such run folder or checkpoint file",
        hint="pass a run folder, a .safetensors file or a name from `audiocnn pretrained list`",
    )


def _dataset_name(dataset: str | None, meta: dict[str, Any], run_cfg: dict[str, Any] | None, target: Any) -> str:
    """The prepared dataset to evaluate on: ``dataset``, else the one the model was
    trained on. A pretrained model's ``dataset`` is a description ("MagnaTagATune"), not
    a prepared folder, so it needs ``dataset``; the hint names the matching one."""
    if dataset:
        return dataset
    if not meta.get("pretrained"):
        name = meta.get("dataset") or (run_cfg or {}).get("dataset")
        if name:
            return name
        raise UsageError(
            f"{target}: the checkpoint does not say which dataset it was trained on",
            hint="pass dataset='NAME'",
            arguments=("dataset",),
        )
    trained_on = meta.get("dataset") or "another dataset"
    hint = "pass dataset='NAME' for a dataset prepared with `audiocnn prepare` (see `audiocnn datasets`)"
    match = _registered_dataset(trained_on)
    if match:
        hint = f"e.g. `{next_call('prepare', match)}`, then `{next_call('evaluate', str(target), dataset=match)}`"
    raise UsageError(
        f"{target}: a pretrained model (trained on {trained_on} outside audiocnn) names no prepared "
        "dataset to evaluate on",
        hint=hint,
        arguments=("dataset",),
    )


def _registered_dataset(title: str) -> str | None:
    """The registered dataset whose title starts with ``title``, if any."""

    for name in list_datasets():
        if str(getattr(get_dataset(name), "title", "")).lower().startswith(title.lower()):
            return name
    return None


def _label_map(model_labels: list[str], data_labels: list[str], task: str, dataset: str) -> tuple[list[str], list[int]]:
    """Labels scored and, for each, its column in the model's output."""
    if model_labels == data_labels:
        return data_labels, list(range(len(data_labels)))
    pos = {name: i for i, name in enumerate(model_labels)}
    common = [name for name in data_labels if name in pos]
    if task == SINGLE_LABEL and set(common) != set(data_labels):
        missing = [n for n in data_labels if n not in pos]
        raise DatasetError(f"dataset {dataset!r} has classes the model does not predict: {missing[:5]}")
    if not common:
        raise DatasetError(f"the model's labels and those of dataset {dataset!r} have nothing in common")
    left = [n for n in data_labels if n not in pos]
    if left:
        log.warning(
            "%d label(s) of %s are not predicted by the model and are not scored: %s",
            len(left),
            dataset,
            ", ".join(left[:10]),
        )
    return common, [pos[n] for n in common]


def evaluate(
    target: str | os.PathLike,
    options: TagOptions | None = None,
    *,
    data_dir: str | os.PathLike,
    split: str = "test",
    dataset: str | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    workers: int = 0,
    out_dir: str | os.PathLike | None = None,
    plots: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a run folder or checkpoint on ``split``; returns the metrics dict (also
    written as ``metrics.json`` in the output folder, whose path is under ``"out_dir"``).

    Each clip is scored by :class:`audiocnn.tagging.Tagger` from its audio file with
    ``options`` (a :class:`TagOptions`; default: those of ``audiocnn tag``), exactly as
    ``audiocnn tag`` scores it (same decoding, windows and aggregation; with
    ``chunks=N``, as ``audiocnn tag --chunks N``), so the per-clip scores written to
    ``scores.csv`` are the numbers ``tag`` prints. ``workers`` is accepted for API
    compatibility; decoding happens in this process.

    Multi-label decisions (precision, recall, F1) use the per-tag thresholds the
    checkpoint carries (picked on the validation split by ``train``), 0.5 for a checkpoint
    without them, or the options' ``threshold`` for every tag when given.
    """

    del workers
    options = TagOptions() if options is None else options
    if split not in SPLITS:
        raise UsageError(f"split must be one of {', '.join(SPLITS)}, got {split!r}", arguments=("split",))
    ckpt, run_dir, run_cfg = resolve_target(target)
    if out_dir is not None:  # before the model loads and every clip is scored
        ensure_writable_dir(out_dir)
    tagger = Tagger(ckpt, device=device, batch_size=batch_size)
    meta = tagger.meta
    name = _dataset_name(dataset, meta, run_cfg, target)
    out = Path(out_dir) if out_dir else ensure_writable_dir(_default_out(ckpt, run_dir, data_dir, name, split, meta))
    manifest = read_manifest(prepared_dataset_dir(data_dir, name))
    if manifest.split_counts().get(split, 0) == 0:
        raise DatasetError(f"dataset {name!r} has no clips in its {split!r} split", hint=f"see `audiocnn info {name}`")
    task = meta["task"]
    labels, columns = _label_map(list(meta["labels"]), list(manifest.labels), task, name)
    clips, scores = score_clips(tagger, manifest, split, options, progress=progress)
    targets = _targets(manifest, clips, labels, task)
    scores = scores[:, columns]
    cut, source = _decision_thresholds(meta, ckpt, options.threshold, len(tagger.labels))
    metrics = compute_metrics(targets, scores, task, labels, None if cut is None else [cut[c] for c in columns])
    metrics.update(
        {
            "thresholds": source if task != SINGLE_LABEL else "arg-max",
            "split": split,
            "dataset": name,
            "checkpoint": str(ckpt),
            "model": meta["model"],
            "epoch": meta.get("epoch"),  # of the checkpoint, when training wrote it
            "task": task,
            "framing": "windows" if options.chunks is None else "chunks",
            "eval_chunks": options.chunks,
            "n_failed": manifest.split_counts().get(split, 0) - len(clips),
        }
    )
    _name_unscored(metrics, manifest, split, clips, name)
    if metrics["excluded_labels"]:
        log.warning(
            "%d label(s) left out of the macro averages: %s",
            len(metrics["excluded_labels"]),
            ", ".join(f"{e['label']} ({e['reason']})" for e in metrics["excluded_labels"][:10]),
        )

    metrics["out_dir"] = str(out)
    decided = decisions(scores, task, None if cut is None else [cut[c] for c in columns])
    _write_clip_outputs(out, metrics, clips, to_multi_hot(targets, len(labels)) > 0, decided, scores, labels)
    _write_outputs(out, metrics, targets, scores, labels, task, run_dir / METRICS_NAME if run_dir else None, plots)
    return metrics


def _name_unscored(metrics: dict[str, Any], manifest, split: str, clips: list, dataset: str) -> None:
    """Clips of the split that could not be scored (each already logged with its cause):
    listed in the metrics and one warning, and a label that only they had says so rather
    than being "absent from the split"."""
    scored = {c.id for c in clips}
    lost = [c for c in manifest.split(split) if c.id not in scored]
    if not lost:
        return
    metrics["unscored_clips"] = [c.id for c in lost]
    for e in metrics["excluded_labels"]:
        theirs = [c.id for c in lost if e["label"] in c.labels]
        if theirs and e["reason"] == "absent from the split":
            e["reason"] = f"its {len(theirs)} clip(s) in the split could not be scored: {', '.join(theirs[:5])}"
    log.warning(
        "%d of %d %s clip(s) could not be scored and are left out of these metrics: %s (check the files with "
        "`audiocnn verify %s`)",
        len(lost),
        len(lost) + len(clips),
        split,
        ", ".join(c.id for c in lost[:10]) + (", ..." if len(lost) > 10 else ""),
        dataset,
    )


def _decision_thresholds(
    meta: dict[str, Any], ckpt: Path, threshold: float | None, n_labels: int
) -> tuple[list[float] | None, str]:
    """(one threshold per model label, where they come from) of a multi-label model."""
    if threshold is not None:
        return [float(threshold)] * n_labels, f"threshold={threshold:g}"
    stored = thresholds_of(meta, ckpt)
    if stored is not None:
        return stored, "checkpoint (best F1 per tag on the validation split)"
    return None, f"{DEFAULT_THRESHOLD:g} (the checkpoint stores no thresholds)"


def score_clips(
    tagger, manifest, split: str, options: TagOptions, *, progress: bool = False
) -> tuple[list, np.ndarray]:
    """``(clips scored, scores (n, model labels))`` of a split, each clip tagged from its
    audio file with ``options``; a clip that no longer decodes is logged and left out."""

    clips, rows = [], []
    todo = manifest.split(split)
    tagger.plan(options)  # a bad option fails before the first clip
    with progress_bar(f"evaluating {split}", len(todo), enabled=progress) as advance:
        for clip in todo:
            try:
                rows.append(tagger.tag_file(manifest.audio_path(clip), options).scores)
                clips.append(clip)
            except (AudioDecodeError, OSError) as exc:
                log.warning("skipping %s: %s", clip.id, exc)
            advance(1)
    if not clips:
        raise DatasetError(f"no clip of the {split!r} split could be decoded")
    return clips, np.stack(rows).astype(np.float32)


def _targets(manifest, clips: list, labels: list[str], task: str) -> np.ndarray:
    """Targets in ``labels`` order: class indices (single-label) or multi-hot rows."""
    pos = {n: i for i, n in enumerate(labels)}
    if task == SINGLE_LABEL:
        return np.asarray([pos[c.labels[0]] for c in clips], dtype=np.int64)
    y = np.zeros((len(clips), len(labels)), dtype=np.int64)
    for i, c in enumerate(clips):
        for lab in c.labels:
            if lab in pos:
                y[i, pos[lab]] = 1
    return y


def decisions(scores: np.ndarray, task: str, thresholds: list[float] | None) -> np.ndarray:
    """``(clips, labels)`` booleans: the label a single-label model picks (arg-max), the
    tags a multi-label model predicts (score >= the tag's threshold, default 0.5)."""
    if task == SINGLE_LABEL:
        out = np.zeros(scores.shape, dtype=bool)
        out[np.arange(len(scores)), scores.argmax(axis=1)] = True
        return out
    cut = np.full(scores.shape[1], DEFAULT_THRESHOLD) if thresholds is None else np.asarray(thresholds)
    return scores >= cut


def _names(row: np.ndarray, labels: list[str]) -> str:
    return ";".join(labels[j] for j in np.flatnonzero(row))


def _write_clip_outputs(
    out: Path,
    metrics: dict[str, Any],
    clips: list,
    truth: np.ndarray,
    decided: np.ndarray,
    scores: np.ndarray,
    labels: list[str],
) -> None:
    """``scores.csv``: per clip its id, path, true labels, the decision, whether they agree
    and every label's score (what ``tag`` prints); ``misclassified.csv``: the clips that
    disagree, with the labels missed and those predicted in excess; for single-label
    models ``confusion_matrix.txt`` and the most confused pairs in ``metrics``."""
    right = (truth == decided).all(axis=1)
    rows, wrong = [], []
    for i, clip in enumerate(clips):
        true, said = _names(truth[i], labels), _names(decided[i], labels)
        rows.append([clip.id, clip.path, true, said, int(right[i]), *(f"{float(v):.8f}" for v in scores[i])])
        if not right[i]:
            missed, extra = _names(truth[i] & ~decided[i], labels), _names(decided[i] & ~truth[i], labels)
            wrong.append([clip.id, clip.path, true, said, missed, extra])
    _write_csv(out / "scores.csv", ["id", "path", "true", "predicted", "correct", *labels], rows)
    _write_csv(out / "misclassified.csv", ["id", "path", "true", "predicted", "missed", "extra"], wrong)
    metrics["n_misclassified"] = len(wrong)
    if "confusion_matrix" in metrics:
        cm = np.asarray(metrics["confusion_matrix"])
        metrics["confused_pairs"] = confused_pairs(cm, labels)
        atomic_write_bytes(out / "confusion_matrix.txt", confusion_text(cm, labels).encode("utf-8"))


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    """A CSV of clips: a file name that is not UTF-8 goes out as its own bytes, as in a
    ``.csv`` results file of ``tag``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode("utf-8", "surrogateescape"))


def confused_pairs(cm: np.ndarray, labels: list[str], top: int = 5) -> list[dict[str, Any]]:
    """The ``top`` most frequent mistakes of a confusion matrix (rows: true, columns:
    predicted): ``{"true", "predicted", "clips", "of"}`` (``of``: the true class's clips)."""
    pairs = [(int(cm[i, j]), i, j) for i in range(len(labels)) for j in range(len(labels)) if i != j and cm[i, j]]
    pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
    return [{"true": labels[i], "predicted": labels[j], "clips": n, "of": int(cm[i].sum())} for n, i, j in pairs[:top]]


def confusion_text(cm: np.ndarray, labels: list[str]) -> str:
    """The confusion matrix as a text table: one row per true class, one column per
    predicted class (columns numbered, their labels in the row header)."""
    cm = np.asarray(cm)
    names = [f"{k + 1:>2} {lab}" for k, lab in enumerate(labels)]
    corner = "true \\ predicted"
    first = max(len(corner), *(len(n) for n in names))
    width = max(3, len(str(int(cm.max()) if cm.size else 0)), len(str(len(labels))))
    lines = [f"{corner:<{first}}  " + " ".join(f"{k + 1:>{width}}" for k in range(len(labels)))]
    for name, row in zip(names, cm):
        lines.append(f"{name:<{first}}  " + " ".join(f"{int(v):>{width}}" for v in row))
    return "\n".join(lines) + "\n"


def _default_out(
    ckpt: Path, run_dir: Path | None, data_dir: str | os.PathLike, dataset: str, split: str, meta: dict[str, Any]
) -> Path:
    """A run's ``eval-<split>``; beside another checkpoint, ``eval-<checkpoint>-<dataset>-<split>``;
    a pretrained model's results beside the dataset (its checkpoint is in the model cache)."""
    if run_dir is not None and dataset == meta.get("dataset", dataset):
        return run_dir / f"eval-{split}"
    if meta.get("pretrained"):
        return Path(data_dir) / dataset / f"eval-{meta['pretrained']}-{split}"
    return ckpt.parent / f"eval-{ckpt.stem}-{dataset}-{split}"


def _write_outputs(
    out: Path,
    metrics: dict[str, Any],
    targets: np.ndarray,
    scores: np.ndarray,
    labels: list[str],
    task: str,
    metrics_csv: Path | None,
    plots: bool,
) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    decisions = ["threshold", "precision", "recall", "f1"] if task != SINGLE_LABEL else ["precision", "recall", "f1"]
    w.writerow(["label", "n_positive", "roc_auc", "pr_auc", *decisions])
    for t in metrics["per_tag"]:
        w.writerow(
            [t["label"], t["n_positive"], _cell(t["roc_auc"]), _cell(t["pr_auc"])]
            + [_cell(t.get(k)) for k in decisions]
        )
    atomic_write_bytes(out / "per_tag.csv", buf.getvalue().encode())
    metrics["plots"] = []
    if plots:
        _draw(out, metrics, targets, scores, labels, task, metrics_csv)
    atomic_write_bytes(out / "metrics.json", (json.dumps(_jsonable(metrics), indent=2) + "\n").encode())


def _draw(
    out: Path,
    metrics: dict[str, Any],
    targets: np.ndarray,
    scores: np.ndarray,
    labels: list[str],
    task: str,
    metrics_csv: Path | None,
) -> None:
    made = []
    try:
        made.append(P.plot_per_tag_auc(metrics["per_tag"], out / "per_tag_roc_auc.png"))
        made.append(
            P.plot_roc_pr_curves(
                to_multi_hot(targets, len(labels)), scores, labels, metrics["per_tag"], out / "roc_pr_curves.png"
            )
        )
        if task == SINGLE_LABEL:
            made.append(P.plot_confusion_matrix(metrics["confusion_matrix"], labels, out / "confusion_matrix.png"))
        if metrics_csv is not None and metrics_csv.is_file():
            made.append(P.plot_training_curves(metrics_csv, out / "curves.png", best_epoch=metrics.get("epoch")))
    except Exception as exc:  # plots are a convenience; the numbers are already written
        log.warning("could not draw every plot: %s", exc)
    metrics["plots"] = [str(p) for p in made if p is not None]


def _cell(v: float | None) -> str:
    return "" if v is None else f"{v:.6f}"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, (np.floating, np.integer)):
        return _jsonable(obj.item())
    return obj
