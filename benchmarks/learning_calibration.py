"""Calibrate the learning checks: each model with true and with shuffled labels, several seeds.

The bars in ``tests/models/test_learning.py`` must separate a model that learned from one that
could not have: this script trains every registered model family (as the checks build
it, ``audiocnn/testing/learning_checks.py``) on the checks' two datasets with the true labels and
with the labels shuffled across clips (seed s shuffles with s and trains with s), and
prints the test-split range of each metric per model, task and labelling.

    .venv/bin/python benchmarks/learning_calibration.py --seeds 0 1 2
    .venv/bin/python benchmarks/learning_calibration.py --models musicnn vgg --set bn_stats_batches=0

``--set key=value`` overrides a training key (e.g. ``bn_stats_batches=0`` shows the checks
fail without the BatchNorm statistics fix). Runs on CPU, one thread per run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

import audiocnn.testing.learning_checks as L

METRICS = {"single-label": ("accuracy", "roc_auc_macro"), "multi-label": ("roc_auc_macro", "f1_macro")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--models", nargs="+", default=list(L.MODEL_KWARGS))
    ap.add_argument("--tasks", nargs="+", default=list(L.TASKS))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--work", type=Path, default=None, help="folder for data and runs (default: a temp folder)")
    ap.add_argument("--json", type=Path, default=None, help="also write every run's numbers here")
    a = ap.parse_args()
    torch.set_num_threads(1)
    overrides = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in a.overrides)}
    work = a.work or Path(tempfile.mkdtemp(prefix="audiocnn-calibration-"))
    data = work / "data"
    L.prepare_datasets(data, work / "audio", shuffled_seeds=tuple(a.seeds))
    runs = []
    for model in a.models:
        for task in a.tasks:
            base = L.DATASETS[task]
            for seed in a.seeds:
                for labelling, dataset in (("true", base), ("shuffled", f"{base}-shuffled{seed}")):
                    t0 = time.perf_counter()
                    m = L.run_check(model, dataset, data_dir=data, runs_dir=work / "runs", seed=seed, **overrides)
                    row = {
                        "model": model,
                        "task": task,
                        "labels": labelling,
                        "seed": seed,
                        "seconds": round(time.perf_counter() - t0, 1),
                    }
                    row.update({k: round(float(m[k]), 4) for k in METRICS[task]})
                    runs.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    if a.json:
        a.json.write_text(json.dumps(runs, indent=1) + "\n")
    print_table(runs)


def print_table(runs: list[dict]) -> None:
    print("| model | task | metric | true labels (min-max) | shuffled labels (min-max) | s/run |")
    print("|---|---|---|---|---|---:|")
    keys = sorted({(r["model"], r["task"]) for r in runs}, key=lambda k: (list(L.MODEL_KWARGS).index(k[0]), k[1]))
    for model, task in keys:
        rows = [r for r in runs if r["model"] == model and r["task"] == task]
        secs = sum(r["seconds"] for r in rows) / len(rows)
        for metric in METRICS[task]:
            cells = []
            for labelling in ("true", "shuffled"):
                v = [r[metric] for r in rows if r["labels"] == labelling]
                cells.append(f"{min(v):.3f}-{max(v):.3f}")
            print(f"| {model} | {task} | {metric} | {cells[0]} | {cells[1]} | {secs:.1f} |")


if __name__ == "__main__":
    main()
