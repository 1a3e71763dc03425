"""Benchmark shares: one process against two shares run at the same time on one machine.

- ``audiocnn tag DIR --output F``: one process, then ``--shard 0/2`` and ``--shard 1/2``
  started together (the last to finish merges the parts into ``F``), with torch's default
  threads and with ``OMP_NUM_THREADS=1`` per share; the merged records must equal the
  one-process run's.
- ``audiocnn features DATASET``: one process ``-j 1``, one process ``-j 2`` (the
  single-machine way to use two cores) and two shares of ``-j 1``, with torch's default
  threads and with ``OMP_NUM_THREADS=1`` per share; the merged store must be byte-identical
  to the one-process store.

Each row is timed from starting its processes to the last one's exit (wall), fresh
processes, outputs deleted first. Prints a table: processes, wall s, files/s, speed-up
against the one-process row.

Usage::

    .venv/bin/python benchmarks/shards.py                       # 12 songs of 30 s, 128 clips of 10 s
    .venv/bin/python benchmarks/shards.py --songs 24 --seconds 60 --clips 512   # less start-up in the rows

This is not a test; numbers depend on the machine and on what else runs on it.
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

from library import make_folder  # benchmarks/library.py: this script's folder is on sys.path
from tag import bench_env

from audiocnn.constants import DEFAULT_MODEL
from audiocnn.testing.training import make_dataset


def timed(commands: list[list[str]], env: dict[str, str], threads: str | None = None) -> float:
    """Wall seconds from starting every ``audiocnn`` command at once to the last exit."""
    env = {**env, **({"OMP_NUM_THREADS": threads} if threads else {})}
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "audiocnn", *args],
            env=env,
            cwd=env["AUDIOCNN_BENCH_CWD"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    errs = [p.communicate()[1] for p in procs]
    wall = time.perf_counter() - t0
    for p, args, err in zip(procs, commands, errs, strict=True):
        if p.returncode != 0:
            raise SystemExit(f"`audiocnn {' '.join(args)}` failed ({p.returncode}):\n{err[-2000:]}")
    return wall


def records(path: Path) -> dict[str, dict]:
    """The results file's records by file (its first line is the header)."""
    return {rec["path"]: rec for rec in map(json.loads, path.read_text().splitlines()[1:])}


def tag_rows(work: Path, env: dict[str, str], model: str, songs: int, seconds: float) -> list[tuple]:
    folder = work / f"songs-{songs}x{seconds:.0f}s"
    files = make_folder(folder, songs, seconds, seconds)
    timed([["tag", str(files[0]), "--model", model]], env)  # imports the pretrained model once
    one, two = work / "one.jsonl", work / "two.jsonl"
    rows = []
    for label, out, shares, threads in (
        ("tag, 1 process", one, 1, None),
        ("tag, 2 shares", two, 2, None),
        ("tag, 2 shares, OMP_NUM_THREADS=1", two, 2, "1"),
    ):
        out.unlink(missing_ok=True)
        base = ["tag", str(folder), "--model", model, "--output", str(out)]
        cmds = [base] if shares == 1 else [[*base, "--shard", f"{k}/{shares}"] for k in range(shares)]
        wall = timed(cmds, env, threads)
        rows.append((label, shares, wall, len(files)))
        print(f"  {label}: {wall:.1f} s", file=sys.stderr, flush=True)
        if shares > 1 and records(two) != records(one):
            raise SystemExit(f"{two}: the merged records differ from the one-process run's")
    return rows


def store_bytes(data: Path) -> dict[str, bytes]:
    """The store's files (``complete.json`` without its finishing time)."""
    root = data / "clips" / "features"
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    for name in [n for n in files if n.endswith("complete.json")]:
        done = json.loads(files[name])
        done.pop("finished")
        files[name] = json.dumps(done).encode()
    return files


def features_rows(work: Path, env: dict[str, str], clips: int, seconds: float) -> list[tuple]:
    src = work / "features-src"
    if not (src / "clips").is_dir():
        src.mkdir(parents=True, exist_ok=True)
        make_dataset(src, "clips", "single-label", n_train=clips, n_valid=0, n_test=0, seconds=seconds)
    rows, stores = [], []
    for label, shares, jobs, threads in (
        ("features, 1 process -j 1", 1, "1", None),
        ("features, 1 process -j 2", 1, "2", None),
        ("features, 2 shares -j 1", 2, "1", None),
        ("features, 2 shares -j 1, OMP_NUM_THREADS=1", 2, "1", "1"),
    ):
        data = work / f"features-{len(rows)}"
        shutil.rmtree(data, ignore_errors=True)
        shutil.copytree(src, data, ignore=shutil.ignore_patterns("features"))
        base = ["--data-dir", str(data), "features", "clips", "-j", jobs, "--no-progress"]
        cmds = [base] if shares == 1 else [[*base, "--shard", f"{k}/{shares}"] for k in range(shares)]
        wall = timed(cmds, env, threads)
        rows.append((label, shares, wall, clips))
        stores.append(store_bytes(data))
        print(f"  {label}: {wall:.1f} s", file=sys.stderr, flush=True)
    if any(s != stores[0] for s in stores):
        raise SystemExit("the stores differ between rows")
    return rows


def table(rows: list[tuple], unit: str) -> str:
    lines = [f"| run | processes | wall s | {unit}/s | speed-up |", "| --- | ---: | ---: | ---: | ---: |"]
    base = rows[0][2]
    for label, procs, wall, n in rows:
        lines.append(f"| {label} | {procs} | {wall:.1f} | {n / wall:.2f} | {base / wall:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--songs", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=30.0, help="length of each song")
    ap.add_argument("--clips", type=int, default=128, help="clips of the features dataset")
    ap.add_argument("--clip-seconds", type=float, default=10.0)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "audiocnn-bench-shards")
    ap.add_argument("--data-dir", type=Path, default=None, help="audiocnn data dir (for the pretrained cache)")
    opts = ap.parse_args()
    env = bench_env(opts.data_dir, opts.work)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start", flush=True)
    print(table(tag_rows(opts.work, env, opts.model, opts.songs, opts.seconds), "files"))
    print()
    print(table(features_rows(opts.work, env, opts.clips, opts.clip_seconds), "clips"))


if __name__ == "__main__":
    main()
