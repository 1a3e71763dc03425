"""The newcomer walk: a new user's first hour with audiocnn, as commands, each timed.

    .venv/bin/python benchmarks/newcomer.py                # in a temp folder, removed after
    .venv/bin/python benchmarks/newcomer.py --work /tmp/nc --keep

What a new user does after README's two commands, from a fresh working folder with a
fresh data folder (the default ``./data``) and a fresh model cache
(``AUDIOCNN_CACHE_DIR``, so musicnn's weights import once, as on a new machine): their
own folder of 24 clips (three synthetic instruments of ``tests/learning_data.py``, 4 s at
16 kHz, 12 train / 6 valid / 6 test, ``labels.csv`` beside the audio), the recommended
recipe (transfer from musicnn-msd, frozen, cached embeddings) trained briefly, evaluate,
tag one clip, a library run (twice: the second has nothing left to tag and loads no
model) and an ONNX export. Every step is the ``audiocnn`` command a user types, run as
its own process; a step that fails stops the walk with its output. Prints each step's
wall time and the total; exits 1 if any step fails or a check on its output does not
hold. CI (``.ci/run``) runs it after the tests.
"""

from __future__ import annotations

import argparse
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

COUNTS = {"train": 12, "valid": 6, "test": 6}
SOURCES = ("pluck", "reed", "bowed")
RECIPE = ROOT / "configs" / "transfer-musicnn.yaml"
#: "briefly": a few epochs of the recommended recipe, no early stop to wait for
BRIEFLY = ["--set", "epochs=30", "--set", "early_stopping.enabled=false"]


def steps(clips: Path) -> list[tuple[str, list[str], str]]:
    """(what, audiocnn arguments, text its output must hold) of each step, in order."""
    run = "runs/mine"
    one = str(clips / "test" / "0018.wav")
    return [
        ("prepare your folder", ["prepare", "folder", "--source", str(clips), "--labels", "labels.csv",
                                 "--name", "mine"], "(found in source)"),
        ("info", ["info", "mine"], "clips per label"),
        ("train (transfer, brief)", ["train", str(RECIPE), "--set", "dataset=mine", *BRIEFLY, "--run-dir", run],
         "best"),
        ("evaluate", ["evaluate", run, "--split", "test"], "misclassified:"),
        ("tag a clip", ["tag", one, "--model", run], "predicted:"),
        ("library run", ["tag", str(clips), "--model", run, "--output", "tags.jsonl", "-j", "2"], "tagged 24 of 24"),
        ("library run again", ["tag", str(clips), "--model", run, "--output", "tags.jsonl"], "skipping 24 files"),
        ("export to ONNX", ["export", run, "--format", "onnx", "--output", "mine.onnx"], "mine.onnx"),
    ]  # fmt: skip


def walk(work: Path) -> int:
    project, cache, clips = work / "project", work / "cache", work / "clips"
    project.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("AUDIOCNN_DATA_DIR", "AUDIOCNN_MIRROR")}
    env["AUDIOCNN_CACHE_DIR"] = str(cache)
    t_all = time.perf_counter()
    t0 = time.perf_counter()
    learning_data.write_folder(clips, "single-label", counts=COUNTS, seconds=4.0, sr=16000, seed=0, sources=SOURCES)
    print(f"{time.perf_counter() - t0:6.1f} s  write 24 clips + labels.csv ({clips})", flush=True)
    for what, args, expect in steps(clips):
        t0 = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "audiocnn", *args], cwd=project, env=env, capture_output=True, text=True
        )
        seconds = time.perf_counter() - t0
        text = done.stdout + done.stderr
        ok = done.returncode == 0 and expect in text
        print(f"{seconds:6.1f} s  {what}: audiocnn {' '.join(args)}", flush=True)
        if not ok:
            print(text[-4000:], file=sys.stderr)
            print(f"FAILED: {what} (exit {done.returncode}; expected {expect!r} in its output)", file=sys.stderr)
            return 1
    leftovers = sorted(p.name for p in project.iterdir())
    print(f"{time.perf_counter() - t_all:6.1f} s  in all; the working folder holds {', '.join(leftovers)}")
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None, help="an empty folder to walk in (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the folder afterwards")
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="audiocnn-newcomer-"))
    try:
        code = walk(work)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
