"""`audiocnn evaluate`: song-level metrics of a trained model on a split (parsing and
printing; the work is :func:`audiocnn.evaluation.evaluate`)."""

from __future__ import annotations

import math
from typing import Optional

import typer
from rich.table import Table

from audiocnn.cli import common
from audiocnn.cli.app import app
from audiocnn.constants import SCALAR_METRICS
from audiocnn.fileio import ensure_writable_dir

#: evaluate's arguments whose flag is not ``--`` and their name
EVALUATE_FLAGS = {"chunks": "--eval-chunks", "out_dir": "--out"}
JSON_KEYS = [
    *SCALAR_METRICS,
    "n_clips",
    "split",
    "dataset",
    "model",
    "task",
    "checkpoint",
    "framing",
    "eval_chunks",
    "thresholds",
    "n_labels",
    "n_labels_scored",
    "excluded_labels",
    "n_misclassified",
    "confused_pairs",
    "out_dir",
]
#: a confusion matrix of more classes than this is only written to confusion_matrix.txt
MAX_PRINTED_CLASSES = 20


@app.command("evaluate")
def evaluate(
    target: str = typer.Argument(..., help="Run folder or checkpoint (.safetensors)."),
    split: common.Split = typer.Option(common.Split.test, "--split", help="Which split to score."),
    fmt: common.TableOrJson = typer.Option(common.TableOrJson.table, "--format", help="table or json."),
    dataset: Optional[str] = typer.Option(
        None, "--dataset", help="Evaluate on this prepared dataset (default: the one it was trained on)."
    ),
    eval_chunks: Optional[int] = typer.Option(
        None,
        "--eval-chunks",
        help="Score N evenly spaced windows per clip (the papers' protocol, = `tag --chunks N`); "
        "default: the windows `tag` uses.",
    ),
    tail: str = typer.Option(
        "end", "--tail", help="end: every second of a clip counts; drop: as `tag --tail drop`, no short tail."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda (or cuda:N) or mps."),
    batch_size: int = typer.Option(4, "--batch-size", help="Windows per model batch."),
    out: Optional[str] = typer.Option(None, "--out", help="Folder for metrics.json, per_tag.csv and plots."),
    no_plots: bool = typer.Option(False, "--no-plots", help="Skip the PNG plots."),
    threshold: Optional[float] = typer.Option(
        None,
        "--threshold",
        show_default=False,
        help="Decide every tag at this score (multi-label) [default: the per-tag thresholds the checkpoint stores].",
    ),
) -> None:
    """Song-level ROC-AUC / PR-AUC, precision / recall / F1 (and accuracy) of a trained model on a split."""
    if out is not None:  # before the checkpoint loads and every clip is scored
        ensure_writable_dir(out, "--out")
    from audiocnn.evaluation import evaluate as run_eval  # deferred: torch, only once there is work to do
    from audiocnn.tagging import TagOptions  # deferred: as above

    with common.flags(**EVALUATE_FLAGS):
        m = run_eval(
            target,
            TagOptions(chunks=eval_chunks, threshold=threshold, tail=tail),
            data_dir=common.state.data_dir,
            split=split.value,
            dataset=dataset,
            device=device,
            batch_size=batch_size,
            out_dir=out,
            plots=not no_plots,
            progress=True,
        )
    if fmt is common.TableOrJson.json:
        common.print_json({k: _clean(m[k]) for k in JSON_KEYS if k in m})
        return
    _print_table(m)


def _clean(v):
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def _print_table(m: dict) -> None:
    framing = f"{m['eval_chunks']} chunks each" if m.get("eval_chunks") else "windows as `tag`"
    t = Table(title=f"{m['model']} on {m['dataset']} / {m['split']} ({m['n_clips']} clips, {framing})")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for key in SCALAR_METRICS:
        if key in m:
            v = m[key]
            t.add_row(key, "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}")
    t.add_row("labels scored", f"{m['n_labels_scored']} / {m['n_labels']}")
    t.add_row("decisions at", str(m.get("thresholds", "")))
    console = common.out_console()
    console.print(t)
    for line in best_and_worst(m["per_tag"]):
        console.print(line, highlight=False)
    for e in m["excluded_labels"]:
        console.print(f"not scored: {e['label']} ({e['reason']})", highlight=False)
    if "confusion_matrix" in m:
        _print_confusion(m)
    out = m["out_dir"]
    wrong = m.get("n_misclassified", 0)
    console.print(
        f"misclassified: {wrong} of {m['n_clips']} clips" + (f" (listed in {out}/misclassified.csv)" if wrong else ""),
        highlight=False,
    )
    console.print(f"written to {out}", highlight=False)


def best_and_worst(per_tag: list[dict], k: int = 3) -> list[str]:
    """The lines naming the best and the worst tags by ROC-AUC; never the same tag in both,
    and one line when every tag has the same ROC-AUC."""
    scored = sorted((x for x in per_tag if x["roc_auc"] is not None), key=lambda x: (-x["roc_auc"], x["label"]))
    if not scored:
        return []
    top, bottom = scored[0]["roc_auc"], scored[-1]["roc_auc"]
    if top == bottom:
        return [f"every tag: ROC-AUC {top:.3f} ({len(scored)} tag{'s' if len(scored) != 1 else ''})"]
    k = max(1, min(k, len(scored) // 2))
    best = [x for x in scored[:k] if x["roc_auc"] > bottom]
    worst = [x for x in scored[::-1][:k] if x["roc_auc"] < top]
    lines = []
    for title, group, value in (("best tags", best, top), ("worst tags", worst, bottom)):
        tied = sum(1 for x in scored if x["roc_auc"] == value) - sum(1 for x in group if x["roc_auc"] == value)
        more = f" (and {tied} more at {value:.3f})" if tied > 0 else ""
        names = ", ".join(f"{common.printable(x['label'])} {x['roc_auc']:.3f}" for x in group)
        lines.append(f"{title}: {names}{more}")
    return lines


def _print_confusion(m: dict) -> None:
    from audiocnn.evaluation import confusion_text  # deferred: torch, loaded by evaluate already

    console = common.out_console()
    labels = [common.printable(x["label"]) for x in m["per_tag"]]
    if len(labels) <= MAX_PRINTED_CLASSES:
        console.print(confusion_text(m["confusion_matrix"], labels).rstrip("\n"), highlight=False, markup=False)
    pairs = m.get("confused_pairs") or []
    if pairs:
        text = "; ".join(
            f"{common.printable(p['true'])} -> {common.printable(p['predicted'])} {p['clips']} of {p['of']}"
            for p in pairs
        )
        console.print(f"most confused (true -> predicted): {text}", highlight=False)
