"""Benchmark `audiocnn tag`: wall time and peak memory, end to end, in a fresh process.

Measures what a user waits for: process start to last output of ``audiocnn tag`` run as a
subprocess, and the peak resident memory of that process (``os.wait4``'s rusage of the
child, the per-child form of ``getrusage(RUSAGE_CHILDREN).ru_maxrss``).

Workloads (made once under --work, from the musicnn reference chorale or the shipped
example, looped):

- a 318 s song (the length of the track the original musicnn TensorFlow tagger was timed on:
  about 7 s wall and 780 MiB peak on the 2-core development machine);
- a folder of 20 songs (``--folder-seconds`` each);
- variants of the 318 s run: torch threads (OMP_NUM_THREADS) and ``--batch-size``.

It also checks that the top-5 tags of ``chorale.flac`` equal those of the TensorFlow
reference taggram when the reference outputs are available.

Usage::

    .venv/bin/python benchmarks/tag.py [--repeat 3] [--model musicnn-mtt] [--quick]

The child runs outside the checkout, so ``PYTHONPATH=/other/tree`` times another copy of
the package (e.g. a patched one) with the same venv.

This is not a test; numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from audiocnn.constants import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parents[1]
TF_WALL_S = 7.0
TF_PEAK_MIB = 780.0


def reference_dir() -> Path:
    env = os.environ.get("AUDIOCNN_MUSICNN_REFERENCE")
    return Path(env) if env else ROOT.parent / "shared" / "reference" / "musicnn"


def source_audio() -> Path:
    ref = reference_dir() / "chorale.flac"
    return ref if ref.is_file() else ROOT / "examples" / "chorale.flac"


def make_song(src: Path, dst: Path, seconds: float, shift: float = 0.0, gain: float = 1.0) -> Path:
    """``seconds`` of ``src`` looped (starting ``shift`` seconds in), at its own rate."""
    import soundfile as sf

    if dst.is_file():
        return dst
    y, sr = sf.read(str(src), dtype="float32", always_2d=False)
    if y.ndim > 1:
        y = y.mean(axis=1)
    n = int(seconds * sr)
    start = int(shift * sr) % len(y)
    reps = int(np.ceil((n + start) / len(y)))
    out = np.tile(y, reps)[start : start + n] * gain
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp.flac")
    sf.write(str(tmp), np.clip(out, -1, 1), sr, subtype="PCM_16")
    os.replace(tmp, dst)
    return dst


def bench_env(data_dir: Path | None, work: Path) -> dict[str, str]:
    """The environment of the measured commands: the data dir and ``work`` (created) as
    their working folder (pretrained models are in the user's cache, AUDIOCNN_CACHE_DIR)."""
    env = dict(os.environ)
    if data_dir is not None:
        env["AUDIOCNN_DATA_DIR"] = str(data_dir.resolve())
    env.setdefault("AUDIOCNN_DATA_DIR", str(ROOT / "data"))
    work.mkdir(parents=True, exist_ok=True)
    env["AUDIOCNN_BENCH_CWD"] = str(work)
    return env


def run_cli(args: list[str], env: dict[str, str]) -> tuple[float, float, float, str, str]:
    """(wall s, CPU s, peak RSS MiB, stdout, stderr) of one `audiocnn` process."""
    cmd = [sys.executable, "-m", "audiocnn", *args]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        # cwd outside the checkout: PYTHONPATH then decides which audiocnn tree is timed
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=env["AUDIOCNN_BENCH_CWD"])
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{stderr[-2000:]}")
    peak_mib = usage.ru_maxrss / 1024.0  # Linux reports KiB
    return wall, usage.ru_utime + usage.ru_stime, peak_mib, stdout, stderr


def measure(label: str, args: list[str], env: dict[str, str], repeat: int) -> dict:
    walls, cpus, peaks = [], [], []
    stdout = ""
    for _ in range(repeat):
        wall, cpu, peak, stdout, _ = run_cli(args, env)
        walls.append(wall)
        cpus.append(cpu)
        peaks.append(peak)
    row = {
        "run": label,
        "wall_s": statistics.median(walls),
        "wall_min_s": min(walls),
        "cpu_s": statistics.median(cpus),
        "peak_mib": max(peaks),
        "stdout": stdout,
    }
    print(
        f"  {label}: median {row['wall_s']:.2f} s (min {row['wall_min_s']:.2f}), CPU {row['cpu_s']:.2f} s, "
        f"peak {row['peak_mib']:.0f} MiB",
        file=sys.stderr,
        flush=True,
    )
    return row


def top_tags(stdout: str, k: int = 5) -> list[list[str]]:
    return [[t["tag"] for t in json.loads(line)["tags"][:k]] for line in stdout.splitlines() if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "audiocnn-bench-tag")
    ap.add_argument("--data-dir", type=Path, default=None, help="audiocnn data dir")
    ap.add_argument("--song-seconds", type=float, default=318.0)
    ap.add_argument("--folder-seconds", type=float, default=60.0)
    ap.add_argument("--quick", action="store_true", help="only the 318 s song and the folder, default settings")
    opts = ap.parse_args()

    env = bench_env(opts.data_dir, opts.work)
    src = source_audio()
    song = make_song(src, opts.work / f"song-{int(opts.song_seconds)}s.flac", opts.song_seconds)
    folder = opts.work / f"folder-20x{int(opts.folder_seconds)}s"
    for i in range(20):
        make_song(src, folder / f"song{i:02d}.flac", opts.folder_seconds, shift=1.7 * i, gain=0.6 + 0.02 * i)

    # First use imports the pretrained checkpoint; that one-time step is not what we time.
    run_cli(["tag", str(src), "--model", opts.model, "--format", "json"], env)

    base = ["tag", "--model", opts.model, "--format", "json"]
    rows = [
        measure(f"{opts.song_seconds:.0f} s song", [*base, str(song)], env, opts.repeat),
        measure(f"20 songs x {opts.folder_seconds:.0f} s", [*base, str(folder)], env, opts.repeat),
    ]
    if not opts.quick:
        for threads in ("1", "2"):
            rows.append(
                measure(
                    f"{opts.song_seconds:.0f} s, {threads} thread(s)",
                    [*base, str(song)],
                    {**env, "OMP_NUM_THREADS": threads},
                    opts.repeat,
                )
            )
        for bs in ("8", "128"):
            rows.append(
                measure(
                    f"{opts.song_seconds:.0f} s, --batch-size {bs}",
                    [*base, "--batch-size", bs, str(song)],
                    env,
                    opts.repeat,
                )
            )
        rows.append(measure("startup: --help", ["tag", "--help"], env, opts.repeat))

    ref_note = "no reference outputs found"
    ref_npz = reference_dir() / f"chorale.{'MTT' if 'mtt' in opts.model else 'MSD'}_{opts.model.split('-')[0]}.npz"
    if ref_npz.is_file():
        ref = np.load(ref_npz)
        tf_top = [str(ref["tags"][i]) for i in np.argsort(-ref["taggram"].mean(axis=0))[:5]]
        _, _, _, out, _ = run_cli([*base, str(reference_dir() / "chorale.flac")], env)
        ours = top_tags(out)[0]
        same = "same" if ours == tf_top else "DIFFERENT"
        ref_note = f"top-5 on chorale.flac: ours {ours} vs TensorFlow {tf_top}: {same}"

    cpu = os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\naudiocnn tag benchmark: model {opts.model}, {cpu} CPUs, load average {load:.1f} at the end, "
        f"median of {opts.repeat} runs, fresh process each"
    )
    print(
        f"{'run':<28} {'wall s':>8} {'min s':>7} {'CPU s':>7} {'peak MiB':>9} {'TF wall/ours':>12} {'ours/TF mem':>11}"
    )
    for r in rows:
        is_song = r["run"].startswith(f"{opts.song_seconds:.0f} s")
        speed = f"{TF_WALL_S / r['wall_s']:.1f}x" if is_song else ""
        mem = f"{r['peak_mib'] / TF_PEAK_MIB:.2f}" if is_song else ""
        print(
            f"{r['run']:<28} {r['wall_s']:>8.2f} {r['wall_min_s']:>7.2f} {r['cpu_s']:>7.2f} "
            f"{r['peak_mib']:>9.0f} {speed:>12} {mem:>11}"
        )
    print(f"(TensorFlow musicnn tagger, 318 s track: ~{TF_WALL_S:.0f} s wall, ~{TF_PEAK_MIB:.0f} MiB peak)")
    print(ref_note)


if __name__ == "__main__":
    main()
