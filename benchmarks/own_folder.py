"""Training on your own folder: four recipes on one generated small dataset, one table.

    .venv/bin/python benchmarks/own_folder.py --work /tmp/own-folder
    .venv/bin/python benchmarks/own_folder.py --rows transfer --seeds 0 1 2
    .venv/bin/python benchmarks/own_folder.py --task multi-label --rows transfer transfer-uncached

Writes the learning checks' synthetic instruments (``tests/learning_data.py``: six
timbres, pitch, loudness and noise randomised per clip) as a folder of audio files plus
``labels.csv`` (default 64 train / 16 valid / 20 test clips of 8 s at 16 kHz), runs
``audiocnn prepare folder`` on it, then for each recipe and seed runs the commands a user
would, as separate processes:

    audiocnn --data-dir DATA train CONFIG --set dataset=NAME --set seed=S [--set ...]
    audiocnn --data-dir DATA evaluate RUN --split test --format json --no-plots

The wall time is that of ``train`` alone, from a prepared dataset with no feature store
and no cached embeddings (so it includes feature extraction, the embedding cache and
every epoch); the one-time conversion of musicnn's pretrained weights is done before the
clock starts. Prints a Markdown table (mean over the seeds, with the range when there are
several) and the commands; ``--json`` also writes every run's numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import learning_data  # noqa: E402

DATASET = "own-folder"
AUGMENT_OFF = [
    f"augment.{t}.p=0"
    for t in ("gain", "polarity", "noise", "pitch_shift", "time_stretch", "time_mask", "freq_mask", "mixup")
]
#: recipe -> (title, config, extra --set values)
ROWS: dict[str, tuple[str, str, list[str]]] = {
    "scratch": ("from scratch (narrow musicnn)", "configs/small-from-scratch.yaml", AUGMENT_OFF),
    "scratch-augment": ("from scratch + augmentation", "configs/small-from-scratch.yaml", []),
    "transfer": ("transfer: musicnn-msd frozen, cached embeddings", "configs/transfer-musicnn.yaml", []),
    "fine-tune": (
        "fine-tune: musicnn-msd, dense back-end trained",
        "configs/transfer-musicnn.yaml",
        ["unfreeze_blocks=2", "epochs=15", "early_stopping.enabled=false"],
    ),
    "transfer-uncached": (
        "transfer frozen, no cache (10 epochs)",
        "configs/transfer-musicnn.yaml",
        ["embedding_cache=false", "epochs=10", "early_stopping.enabled=false"],
    ),
    "fine-tune-all": (
        "fine-tune: whole network",
        "configs/transfer-musicnn.yaml",
        ["freeze_backbone=false", "lr=1e-4", "epochs=10", "early_stopping.enabled=false"],
    ),
}
DEFAULT_ROWS = ["scratch", "scratch-augment", "transfer", "fine-tune"]


def audiocnn(*args: str) -> list[str]:
    return [sys.executable, "-m", "audiocnn", *args]


def prepare(work: Path, task: str, counts: dict[str, int], seconds: float, seed: int) -> Path:
    data = work / "data"
    if (data / DATASET / "manifest.jsonl").is_file():  # prepared by an earlier run of this script
        return data
    labels = learning_data.write_folder(work / "audio", task, counts=counts, seconds=seconds, sr=16000, seed=seed)
    cmd = audiocnn("--data-dir", str(data), "prepare", "folder", "--source", str(work / "audio"))
    cmd += ["--labels", str(labels), "--name", DATASET, "--task", task]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return data


def run_row(data: Path, runs: Path, row: str, seed: int) -> dict:
    title, config, extra = ROWS[row]
    for folder in ("features", "embeddings"):  # every row starts from the prepared folder alone
        shutil.rmtree(data / DATASET / folder, ignore_errors=True)
    run_dir = runs / f"{row}-{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    sets = [f"dataset={DATASET}", f"seed={seed}", *extra]
    train = audiocnn("--data-dir", str(data), "train", config, "--run-dir", str(run_dir), "--device", "cpu")
    for s in sets:
        train += ["--set", s]
    t0 = time.perf_counter()
    subprocess.run(train, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    ev = audiocnn("--data-dir", str(data), "evaluate", str(run_dir), "--split", "test", "--format", "json")
    out = subprocess.run([*ev, "--no-plots", "--device", "cpu"], check=True, cwd=ROOT, capture_output=True, text=True)
    m = json.loads(out.stdout)
    if m["task"] == "multi-label":  # the same model deciding at 0.5 instead of its validation thresholds
        at_half = [*ev, "--no-plots", "--device", "cpu", "--threshold", "0.5", "--out", str(run_dir / "eval-0.5")]
        half = subprocess.run(at_half, check=True, cwd=ROOT, capture_output=True, text=True)
        m["f1_macro_at_0.5"] = json.loads(half.stdout)["f1_macro"]
    with open(run_dir / "metrics.csv") as fh:
        epochs = sum(1 for _ in fh) - 1
    command = f"audiocnn train {config} " + " ".join(f"--set {s}" for s in sets)
    return {"row": row, "title": title, "seed": seed, "wall_s": wall, "epochs": epochs, "command": command, **m}


def _cell(values: list[float], fmt: str) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return format(mean, fmt)
    return f"{format(mean, fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def table(results: list[dict], task: str) -> str:
    first = ("accuracy", "test accuracy") if task == "single-label" else ("pr_auc_macro", "test macro PR-AUC")
    half = task == "multi-label"
    lines = [
        f"| recipe | {first[1]} | test macro ROC-AUC | test macro F1 |"
        + (" test macro F1 at 0.5 |" if half else "")
        + " epochs | `train` wall time (s) |",
        "|---|---|---|---|" + ("---|" if half else "") + "---|---|",
    ]
    for row in dict.fromkeys(r["row"] for r in results):
        rs = [r for r in results if r["row"] == row]
        cells = [
            _cell([r.get(first[0]) for r in rs], ".3f"),
            _cell([r["roc_auc_macro"] for r in rs], ".3f"),
            _cell([r.get("f1_macro") for r in rs], ".3f"),
            *([_cell([r.get("f1_macro_at_0.5") for r in rs], ".3f")] if half else []),
            _cell([float(r["epochs"]) for r in rs], ".0f"),
            _cell([r["wall_s"] for r in rs], ".0f"),
        ]
        lines.append(f"| {rs[0]['title']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None, help="folder for audio, data and runs (default: a temp folder)")
    ap.add_argument("--task", choices=("single-label", "multi-label"), default="single-label")
    ap.add_argument("--train", type=int, default=64)
    ap.add_argument("--valid", type=int, default=16)
    ap.add_argument("--test", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--data-seed", type=int, default=0, help="seed of the generated clips")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (each recipe runs with each)")
    ap.add_argument("--rows", nargs="+", choices=list(ROWS), default=DEFAULT_ROWS)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="audiocnn-own-folder-"))
    counts = {"train": a.train, "valid": a.valid, "test": a.test}
    data = prepare(work, a.task, counts, a.seconds, a.data_seed)
    if any(r.startswith(("transfer", "fine-tune")) for r in a.rows):  # one-time weight conversion, not timed
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        code = "from audiocnn.pretrained import resolve_model; resolve_model('musicnn-msd')"  # into the cache
        subprocess.run([sys.executable, "-c", code], check=True, env=env)
    results = []
    for row in a.rows:
        for seed in a.seeds:
            r = run_row(data, work / "runs", row, seed)
            print(f"{row} seed {seed}: {r['wall_s']:.1f} s, {r['epochs']} epochs", file=sys.stderr, flush=True)
            results.append(r)
    n = sum(counts.values())
    split = f"{a.train} train / {a.valid} valid / {a.test} test"
    print(f"{n} clips of {a.seconds:g} s ({split}), {a.task}, training seeds {a.seeds}")
    print(table(results, a.task))
    print()
    for row in dict.fromkeys(r["row"] for r in results):
        print(f"- {ROWS[row][0]}: `{next(r['command'] for r in results if r['row'] == row)}`")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
