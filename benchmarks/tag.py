"""Benchmark `audiocnn tag`: wall time and peak memory, end to end, in a fresh process.

Measures what a user waits for: process start to last output of ``audiocnn tag`` run as a
subprocess, and the peak resident memory of that process (``os.wait4``'s rusage of the
child, the per-child form of ``getrusage(RUSAGE_CHILDREN).ru_maxrss``).

Workloads (made once under --work, from the musicnn reference chorale or the shipped
example, looped):

- a 318 s Vorbis song (the length of the track the original musicnn TensorFlow tagger was
  first timed on), tagged by both engines: ONNX Runtime (``--backend onnxruntime``, the
  default on a CPU) and torch (``--backend torch``), and by the TensorFlow musicnn tagger
  itself (``python -m musicnn.tagger SONG --model MTT_musicnn --topN 5``) when
  ``--musicnn-python`` names an interpreter that has TensorFlow and musicnn (see
  ``benchmarks/library.py`` for making one); the runs are interleaved (one of each per
  round, ``--repeat`` rounds) so a change in the machine's load hits every row alike;
- a folder of 20 songs (``--folder-seconds`` each), both engines;
- unless ``--quick``: variants of the 318 s run (threads, ``--batch-size``), the stage
  breakdown of both engines (start-up, decode, resample, front-end, network per window and
  for the whole song, output; each stage timed alone in this process with the functions
  ``tag`` uses) and the start-up of the printing commands (``benchmarks/startup.py``).

It also checks that the top-5 tags of ``chorale.flac`` equal those of the TensorFlow
reference taggram when the reference outputs are available.

Usage::

    .venv/bin/python benchmarks/tag.py [--repeat 3] [--model musicnn-mtt] [--quick] \
        [--musicnn-python /path/to/tf-venv/bin/python]

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
    ogg = dst.suffix.lower() == ".ogg"
    tmp = tmp.with_suffix(".ogg") if ogg else tmp
    out = np.clip(out, -1, 1)
    with sf.SoundFile(str(tmp), "w", sr, 1, subtype="VORBIS" if ogg else "PCM_16") as f:
        for i in range(0, len(out), 1 << 15):  # libsndfile's Vorbis writer crashes on one long write
            f.write(out[i : i + (1 << 15)])
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


def run_process(cmd: list[str], env: dict[str, str]) -> tuple[float, float, float, str, str]:
    """(wall s, CPU s, peak RSS MiB, stdout, stderr) of one process."""
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


def run_cli(args: list[str], env: dict[str, str]) -> tuple[float, float, float, str, str]:
    """(wall s, CPU s, peak RSS MiB, stdout, stderr) of one `audiocnn` process."""
    return run_process([sys.executable, "-m", "audiocnn", *args], env)


def measure(label: str, args: list[str], env: dict[str, str], repeat: int) -> dict:
    """One row: ``repeat`` runs of ``audiocnn ARGS``."""
    return measure_interleaved([(label, [sys.executable, "-m", "audiocnn", *args], env)], repeat)[0]


def measure_interleaved(jobs: list[tuple[str, list[str], dict[str, str]]], repeat: int) -> list[dict]:
    """One row per ``(label, command, env)``: ``repeat`` rounds, each running every command
    once in turn, so a change in the machine's load hits every row alike."""
    runs: dict[str, list[tuple[float, float, float, str]]] = {label: [] for label, _, _ in jobs}
    for _ in range(repeat):
        for label, cmd, env in jobs:
            wall, cpu, peak, stdout, _ = run_process(cmd, env)
            runs[label].append((wall, cpu, peak, stdout))
    rows = []
    for label, got in runs.items():
        walls = [g[0] for g in got]
        row = {
            "run": label,
            "wall_s": statistics.median(walls),
            "wall_min_s": min(walls),
            "cpu_s": statistics.median(g[1] for g in got),
            "peak_mib": max(g[2] for g in got),
            "stdout": got[-1][3],
        }
        print(
            f"  {label}: median {row['wall_s']:.2f} s (min {row['wall_min_s']:.2f}), CPU {row['cpu_s']:.2f} s, "
            f"peak {row['peak_mib']:.0f} MiB",
            file=sys.stderr,
            flush=True,
        )
        rows.append(row)
    return rows


def musicnn_env(python: str, env: dict[str, str]) -> dict[str, str]:
    """``env`` for running musicnn 0.1.0 under ``python``: its ``tf.compat.v1.layers`` need
    Keras 2, which TensorFlow >= 2.16 finds only as ``tf_keras`` with TF_USE_LEGACY_KERAS=1
    (TensorFlow 2.15 has it built in and must not be told)."""
    has = subprocess.run(
        [python, "-c", "import importlib.util as u; print(u.find_spec('tf_keras') is not None)"],
        capture_output=True,
        text=True,
    )
    legacy = {"TF_USE_LEGACY_KERAS": "1"} if has.stdout.strip() == "True" else {}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "2", **legacy}


TF_MODELS = {"musicnn-mtt": "MTT_musicnn", "musicnn-msd": "MSD_musicnn", "vgg-mtt": "MTT_vgg", "vgg-msd": "MSD_vgg"}


def musicnn_tagger_job(
    python: str | None, model: str, song: Path, k: int, env: dict[str, str]
) -> tuple[str, list[str], dict[str, str]] | str:
    """The TensorFlow musicnn tagger on ``song`` (its own command line, top ``k``) as a job
    of :func:`measure_interleaved`, or why it cannot run."""
    if python is None:
        return "not run: no --musicnn-python given"
    if model not in TF_MODELS:
        return f"not run: {model} is not one of musicnn's models"
    env = musicnn_env(python, env)
    probe = subprocess.run([python, "-c", "import tensorflow, musicnn.tagger"], capture_output=True, env=env)
    if probe.returncode != 0:
        return f"not run: {python} cannot import TensorFlow and musicnn.tagger"
    cmd = [python, "-m", "musicnn.tagger", str(song), "--model", TF_MODELS[model], "--topN", str(k), "--print"]
    return "TensorFlow musicnn tagger", cmd, env


def top_tags(stdout: str, k: int = 5) -> list[list[str]]:
    return [[t["tag"] for t in json.loads(line)["tags"][:k]] for line in stdout.splitlines() if line.strip()]


STAGES = ["start-up", "decode", "resample", "front-end", "network", "output"]

# A fresh process: interpreter, imports and the model ready (the engine's sessions or the
# torch model), as `tag` pays before its first song.
_STARTUP = """
import sys
from audiocnn.tagging import Tagger
Tagger(sys.argv[1], backend=sys.argv[2])
print("torch" in sys.modules)
"""


def median_s(fn, repeat: int) -> float:
    """Median seconds of ``repeat`` calls of ``fn`` after one call to warm up."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def stage_rows(model: str, song: Path, env: dict[str, str], repeat: int) -> list[dict]:
    """Seconds per stage of tagging ``song`` with each engine, each stage alone (median of
    ``repeat``), with the functions ``tag`` uses: decode (blocks at the file's own rate),
    resample (soxr to the model's rate, on top of decoding), front-end (the song's mel,
    block by block), network (every window, one at a time), output (the JSON line)."""
    import soundfile as sf

    from audiocnn.audio import iter_audio_blocks
    from audiocnn.fileio import json_text
    from audiocnn.tagging import Tagger
    from audiocnn.tagging.song import window_starts

    native = sf.info(str(song)).samplerate
    rows = []
    for backend in ("onnxruntime", "torch"):
        startup = [run_process([sys.executable, "-c", _STARTUP, model, backend], env) for _ in range(repeat)]
        tagger = Tagger(model, backend=backend)
        sr = tagger.sample_rate
        decode = median_s(lambda: list(iter_audio_blocks(song, native, 30.0)), repeat)
        both = median_s(lambda sr=sr: list(iter_audio_blocks(song, sr, 30.0)), repeat)
        blocks = list(iter_audio_blocks(song, sr, 30.0))

        def frontend(blocks=blocks, tagger=tagger):
            stream = tagger.backend.mel_stream()
            return np.concatenate([*(stream.push(b) for b in blocks), stream.finish()], axis=-1)

        mel = frontend()
        size = tagger.info.input_frames
        windows = [mel[None, :, s : s + size] for s in window_starts(mel.shape[-1], size, size)]
        network = median_s(lambda t=tagger, w=windows: [t.backend.run(x, True) for x in w], repeat)
        result = tagger.tag_file(song, top_k=5)
        output = median_s(lambda r=result: json_text(r.to_dict()), repeat)
        rows.append(
            {
                "engine": backend,
                "start-up": statistics.median(r[0] for r in startup),
                "torch imported": startup[0][3].strip() == "True",
                "decode": decode,
                "resample": max(0.0, both - decode),
                "front-end": median_s(frontend, repeat),
                "network": network,
                "windows": len(windows),
                "output": output,
            }
        )
    return rows


def print_stage_table(rows: list[dict], song_seconds: float) -> None:
    print(f"\nstage breakdown, {song_seconds:.0f} s song (seconds; network also per window in ms)")
    print("| engine | " + " | ".join(STAGES) + " | per window ms | sum | torch imported |")
    print("|---|" + "---:|" * (len(STAGES) + 2) + "---|")
    for r in rows:
        cells = " | ".join(f"{r[k]:.3f}" for k in STAGES)
        per = 1000 * r["network"] / max(1, r["windows"])
        total = sum(r[k] for k in STAGES)
        print(f"| {r['engine']} | {cells} | {per:.2f} | {total:.2f} | {'yes' if r['torch imported'] else 'no'} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "audiocnn-bench-tag")
    ap.add_argument("--data-dir", type=Path, default=None, help="audiocnn data dir")
    ap.add_argument("--song-seconds", type=float, default=318.0)
    ap.add_argument("--folder-seconds", type=float, default=60.0)
    ap.add_argument("--musicnn-python", default=None, help="a Python with TensorFlow and musicnn: the peer row")
    ap.add_argument("--quick", action="store_true", help="only the 318 s song and the folder, default settings")
    opts = ap.parse_args()

    env = bench_env(opts.data_dir, opts.work)
    src = source_audio()
    song = make_song(src, opts.work / f"song-{int(opts.song_seconds)}s.ogg", opts.song_seconds)
    folder = opts.work / f"folder-20x{int(opts.folder_seconds)}s"
    for i in range(20):
        make_song(src, folder / f"song{i:02d}.flac", opts.folder_seconds, shift=1.7 * i, gain=0.6 + 0.02 * i)

    # First use imports the pretrained checkpoint and exports it for ONNX Runtime: one-time steps, not timed.
    run_cli(["tag", str(src), "--model", opts.model, "--format", "json"], env)

    base = [sys.executable, "-m", "audiocnn", "tag", "--model", opts.model, "--format", "json", "--top-k", "5"]
    ort, torch_ = [*base, "--backend", "onnxruntime"], [*base, "--backend", "torch"]
    label = f"{opts.song_seconds:.0f} s song"
    jobs = [
        (f"{label}, ONNX Runtime (default)", [*ort, str(song)], env),
        (f"{label}, torch", [*torch_, str(song)], env),
    ]
    peer = musicnn_tagger_job(opts.musicnn_python, opts.model, song, 5, env)
    if not isinstance(peer, str):
        jobs.append((f"{label}, {peer[0]}", peer[1], peer[2]))
    rows = measure_interleaved(jobs, opts.repeat)
    folder_label = f"20 songs x {opts.folder_seconds:.0f} s"
    rows += measure_interleaved(
        [
            (f"{folder_label}, ONNX Runtime", [*ort, str(folder)], env),
            (f"{folder_label}, torch", [*torch_, str(folder)], env),
        ],
        opts.repeat,
    )
    stages = []
    if not opts.quick:
        for bs in ("8", "128"):
            rows.append(
                measure(
                    f"{label}, ONNX Runtime, --batch-size {bs}",
                    [*ort[3:], "--batch-size", bs, str(song)],
                    env,
                    opts.repeat,
                )
            )
        stages = stage_rows(opts.model, song, env, opts.repeat)
    print_tag_table(opts, rows, peer if isinstance(peer, str) else None)
    if stages:
        print_stage_table(stages, opts.song_seconds)
        from startup import print_startup_table, startup_rows

        print_startup_table(startup_rows(sys.executable, max(3, opts.repeat)))
    print(reference_note(opts.model, base[3:], env))


def print_tag_table(opts: argparse.Namespace, rows: list[dict], peer_note: str | None) -> None:
    cpu = os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\naudiocnn tag benchmark: model {opts.model}, top 5, {cpu} CPUs, load average {load:.1f} at the end, "
        f"median of {opts.repeat} interleaved runs, fresh process each"
    )
    tf = next((r for r in rows if "TensorFlow" in r["run"]), None)
    print("| run | wall s | min s | CPU s | peak MiB | wall / TF | memory / TF |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        song = tf is not None and r["run"].split(",")[0] == tf["run"].split(",")[0]
        speed = f"{r['wall_s'] / tf['wall_s']:.2f}x" if song else ""
        mem = f"{r['peak_mib'] / tf['peak_mib']:.2f}x" if song else ""
        print(
            f"| {r['run']} | {r['wall_s']:.2f} | {r['wall_min_s']:.2f} | {r['cpu_s']:.2f} | {r['peak_mib']:.0f} "
            f"| {speed} | {mem} |"
        )
    if peer_note:
        print(f"(TensorFlow musicnn tagger {peer_note})")


def reference_note(model: str, base: list[str], env: dict[str, str]) -> str:
    """Whether the top-5 tags of the reference chorale equal the TensorFlow reference taggram's."""
    ref_npz = reference_dir() / f"chorale.{'MTT' if 'mtt' in model else 'MSD'}_{model.split('-')[0]}.npz"
    if not ref_npz.is_file():
        return "no reference outputs found"
    ref = np.load(ref_npz)
    tf_top = [str(ref["tags"][i]) for i in np.argsort(-ref["taggram"].mean(axis=0))[:5]]
    _, _, _, out, _ = run_cli([*base, "--tail", "drop", str(reference_dir() / "chorale.flac")], env)
    ours = top_tags(out)[0]
    same = "same" if ours == tf_top else "DIFFERENT"
    return f"top-5 on chorale.flac: ours {ours} vs TensorFlow reference {tf_top}: {same}"


if __name__ == "__main__":
    main()
