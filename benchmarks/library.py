"""Benchmark tagging a music library: `audiocnn tag DIR --output FILE -j N`, the musicnn
package's own Python API on the same folder, torch against ONNX Runtime, and where the time
of one song goes.

Made once under --work: a folder of ``--songs`` songs (default 50) of 30-300 s each, in
mixed formats (WAV, FLAC, MP3, OGG/Vorbis; 44.1 and 22.05 kHz; mono and stereo), cut from
the musicnn reference chorale (or the shipped example) looped.

Rows (each a fresh process, timed from start to exit; results file deleted first):

- ``-j 1`` and ``-j 2`` (the default engine: ONNX Runtime on a CPU): files/s, audio
  hours/s, wall and CPU time, the peak resident memory of the main process and of all its
  processes together (the decoding workers included; sampled every 20 ms from /proc);
- ``-j 2`` on the first fifth of the folder: peak memory against the whole folder (memory
  flat with the number of files);
- ``--backend torch``, ``-j 1`` and ``-j 2``;
- musicnn's API (``musicnn.tagger.top_tags`` per file, one process, the way its README
  shows), run by ``--musicnn-python`` (default: this interpreter) when it can import
  TensorFlow; otherwise the row says why it did not run. Each row also gives its files/s
  and peak memory as multiples of the API's. An interpreter for it::

      python3 -m venv /tmp/tf215 && /tmp/tf215/bin/pip install tensorflow-cpu==2.15.1 "numpy<2" librosa \
          && /tmp/tf215/bin/pip install --no-deps musicnn==0.1.0

  TensorFlow 2.15 (Keras 2 built in) reproduces musicnn's reference taggram of the chorale
  to 1.5e-7. Later TensorFlow with ``tf_keras`` and ``TF_USE_LEGACY_KERAS=1`` runs
  musicnn 0.1.0 too, but its tags are wrong (a taggram 0.51 away from
  the reference on the chorale, measured with TensorFlow 2.21): time it, don't trust it.
  The benchmark sets TF_USE_LEGACY_KERAS=1 only where ``tf_keras`` is installed.

Then in this process: the musicnn network on one 3 s window (median of 50 runs) and one
whole song (``Tagger.tag_file``, median of 3) with torch and with ONNX Runtime; the
network on 200 windows, one batch at a time on all of torch's threads (``-j 1``) against
one batch per thread at once (what ``-j N`` does on a CPU), both backends; and a per-song
breakdown: decode (soundfile), resample (soxr), front-end (log-mel), network.

Usage::

    .venv/bin/python benchmarks/library.py                  # the full benchmark (~15 min on 2 cores)
    .venv/bin/python benchmarks/library.py --quick          # 6 songs of 30-60 s, one run each
    .venv/bin/python benchmarks/library.py --export-zoo     # every architecture through ONNX export

This is not a test; numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from tag import (  # benchmarks/tag.py: this script's folder is on sys.path
    bench_env,
    median_s,
    musicnn_env,
    run_cli,
    source_audio,
)

from audiocnn.constants import DEFAULT_MODEL

FORMATS = [  # (suffix, soundfile format, subtype, sample rate, channels)
    ("wav", "WAV", "PCM_16", 44100, 2),
    ("flac", "FLAC", "PCM_16", 44100, 2),
    ("mp3", "MP3", "MPEG_LAYER_III", 44100, 2),
    ("ogg", "OGG", "VORBIS", 22050, 1),
]


def make_folder(folder: Path, n: int, lo: float, hi: float) -> list[Path]:
    """``n`` songs of ``lo``-``hi`` seconds (a fixed random draw), formats in turn."""
    src = source_audio()
    y, sr = sf.read(str(src), dtype="float32", always_2d=True)
    y = y.mean(axis=1)
    rng = np.random.default_rng(0)
    lengths = rng.uniform(lo, hi, n)
    paths = []
    for i, seconds in enumerate(lengths):
        suffix, fmt, subtype, rate, channels = FORMATS[i % len(FORMATS)]
        path = folder / f"album{i % 5}" / f"song{i:03d}.{suffix}"
        paths.append(path)
        if path.is_file():
            continue
        import soxr

        base = soxr.resample(y, sr, rate) if rate != sr else y
        total = int(seconds * rate)
        start = int(rng.uniform(0, len(base)))
        song = np.tile(base, total // len(base) + 2)[start : start + total] * (0.5 + 0.4 * (i % 7) / 6)
        if channels == 2:
            song = np.stack([song, np.roll(song, 37) * 0.9], axis=1)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp.{path.name}")
        song = np.clip(song, -1, 1)
        # in blocks: libsndfile's Vorbis encoder overflows its stack on one long write
        with sf.SoundFile(str(tmp), "w", rate, channels, subtype, format=fmt) as fh:
            for k in range(0, len(song), 1 << 16):
                fh.write(song[k : k + (1 << 16)])
        os.replace(tmp, path)
    return paths


class TreeMemory:
    """Peak summed RSS of this process's descendants, sampled from /proc."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval, self.peak_kib = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            parents, rss = {}, {}
            for d in os.listdir("/proc"):
                if not d.isdigit():
                    continue
                try:
                    with open(f"/proc/{d}/stat") as fh:
                        parents[int(d)] = int(fh.read().rsplit(")", 1)[1].split()[1])
                    with open(f"/proc/{d}/status") as fh:
                        rss[int(d)] = next((int(x.split()[1]) for x in fh if x.startswith("VmRSS:")), 0)
                except (OSError, ValueError, IndexError):
                    continue

            total = sum(v for p, v in rss.items() if p != me and _descends(p, me, parents))
            self.peak_kib = max(self.peak_kib, total)
            self._stop.wait(self.interval)


def _descends(pid: int, ancestor: int, parents: dict[int, int]) -> bool:
    for _ in range(64):
        if pid not in parents:
            return False
        pid = parents[pid]
        if pid == ancestor:
            return True
    return False


def timed_run(label: str, args: list[str], env: dict, repeat: int, audio_s: float, n: int, out: Path | None) -> dict:
    walls, cpus, peaks, trees = [], [], [], []
    for _ in range(repeat):
        if out is not None:
            out.unlink(missing_ok=True)
        with TreeMemory() as tree:
            wall, cpu, peak, _, _ = run_cli(args, env)
        walls.append(wall)
        cpus.append(cpu)
        peaks.append(peak)
        trees.append(tree.peak_kib / 1024)
    wall = statistics.median(walls)
    row = {
        "run": label,
        "files": n,
        "wall_s": wall,
        "cpu_s": statistics.median(cpus),
        "files_per_s": n / wall,
        "audio_h_per_s": audio_s / 3600 / wall,
        "peak_main_mib": max(peaks),
        "peak_all_mib": max(max(trees), max(peaks)),
    }
    print(f"  {label}: {wall:.1f} s, {row['files_per_s']:.2f} files/s", file=sys.stderr, flush=True)
    return row


def musicnn_api_row(python: str, files: list[Path], audio_s: float, repeat: int) -> dict | str:
    """musicnn's own API over the folder in one process, or why it cannot run."""
    env = musicnn_env(python, dict(os.environ))
    probe = subprocess.run([python, "-c", "import tensorflow, musicnn.tagger"], capture_output=True, text=True, env=env)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return f"not run: {python} cannot import TensorFlow + musicnn.tagger ({last[:90]})"
    code = (
        "import sys\nfrom musicnn.tagger import top_tags\n"
        "for f in sys.argv[1:]:\n    top_tags(f, model='MTT_musicnn', topN=5, print_tags=False)\n"
    )
    walls, peaks, cpus = [], [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [python, "-c", code, *map(str, files)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
        )
        _, status, usage = os.wait4(proc.pid, 0)
        walls.append(time.perf_counter() - t0)
        peaks.append(usage.ru_maxrss / 1024)
        cpus.append(usage.ru_utime + usage.ru_stime)
        if os.waitstatus_to_exitcode(status) != 0:
            return f"not run: the musicnn API failed with exit code {os.waitstatus_to_exitcode(status)}"
    wall = statistics.median(walls)
    return {
        "run": "musicnn API (TensorFlow), 1 process",
        "files": len(files),
        "wall_s": wall,
        "cpu_s": statistics.median(cpus),
        "files_per_s": len(files) / wall,
        "audio_h_per_s": audio_s / 3600 / wall,
        "peak_main_mib": max(peaks),
        "peak_all_mib": max(peaks),
    }


def backends_rows(model: str, song: Path, repeat: int) -> list[tuple[str, float, float]]:
    """(what, torch s, onnxruntime s): one window of the network, one whole song."""
    import torch

    from audiocnn.tagging import Tagger

    torch_tagger = Tagger(model)
    ort_tagger = Tagger(model, backend="onnxruntime")
    m = torch_tagger.model
    window = np.random.default_rng(0).standard_normal((1, *m.feature_shape())).astype(np.float32)

    def torch_window() -> None:
        with torch.inference_mode():
            m.predict_proba(m(torch.from_numpy(window), from_features=True))

    def ort_window() -> None:
        ort_tagger.backend.run(window, True)

    return [
        (
            f"one {m.input_seconds:.2f} s window (network)",
            median_s(torch_window, 50 * repeat),
            median_s(ort_window, 50 * repeat),
        ),
        (
            f"one {sf.info(str(song)).duration:.0f} s song (tag_file)",
            median_s(lambda: torch_tagger.tag_file(song), repeat),
            median_s(lambda: ort_tagger.tag_file(song), repeat),
        ),
    ]


def streams_rows(model: str, windows: int = 200) -> list[tuple[str, int, float, float]]:
    """(backend, threads, ms per window with one batch at a time on all threads, ms per window
    with one batch per thread at once): what ``-j N`` on a CPU changes for the network."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from audiocnn.tagging import Tagger

    threads = torch.get_num_threads()
    rows = []
    shape = Tagger(model).model.feature_shape()
    for name in ("torch", "onnxruntime"):
        tagger = Tagger(model, backend=name, num_threads=threads)
        window = np.random.default_rng(0).standard_normal(shape).astype(np.float32)

        def one(_: int, t: Tagger = tagger, w: np.ndarray = window) -> None:
            t.score([w], True, (), False)

        serial = median_s(lambda: [one(i) for i in range(windows)], 1) / windows
        with tagger.backend.threads_per_stream(threads), ThreadPoolExecutor(threads) as pool:
            at_once = median_s(lambda: list(pool.map(one, range(windows))), 1) / windows
        rows.append((name, threads, serial, at_once))
    return rows


def breakdown(model: str, files: list[Path]) -> list[dict]:
    """Seconds per stage for each song: decode, resample, front-end, network."""
    import torch

    from audiocnn.audio import resample
    from audiocnn.features.frontends import MelStream
    from audiocnn.tagging import Tagger

    tagger = Tagger(model)
    m, frames = tagger.model, tagger.model.input_frames
    rows = []
    for path in files:
        t0 = time.perf_counter()
        data, native = sf.read(str(path), dtype="float32", always_2d=True)
        y = data.mean(axis=1, dtype=np.float32)
        t1 = time.perf_counter()
        y = resample(y, native, tagger.sample_rate)
        t2 = time.perf_counter()
        stream = MelStream(m.frontend)
        mel = np.concatenate([stream.push(y), stream.finish()], axis=-1)
        t3 = time.perf_counter()
        with torch.inference_mode():
            for i in range(mel.shape[-1] // frames):
                m.predict_proba(m(torch.from_numpy(mel[None, :, i * frames : (i + 1) * frames]), from_features=True))
        t4 = time.perf_counter()
        rows.append(
            {
                "song": f"{path.parent.name}/{path.name}",
                "seconds": len(y) / tagger.sample_rate,
                "decode": t1 - t0,
                "resample": t2 - t1,
                "frontend": t3 - t2,
                "network": t4 - t3,
            }
        )
    return rows


def print_tables(runs: list, backends: list, streams: list, stages: list, header: str) -> None:
    print(f"\n{header}\n")
    print(
        "| run | files | wall s | CPU s | files/s | audio h/s | peak MiB (main) | peak MiB (all processes) "
        "| files/s / API | memory (all) / API |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    api = next((r for r in runs if isinstance(r, dict) and r["run"].startswith("musicnn API")), None)
    for r in runs:
        if isinstance(r, str):
            print(f"| musicnn API (TensorFlow), 1 process | | {r} | | | | | | | |")
            continue
        whole = api is not None and r["files"] == api["files"]
        speed = f"{r['files_per_s'] / api['files_per_s']:.2f}x" if whole else ""
        mem = f"{r['peak_all_mib'] / api['peak_all_mib']:.2f}x" if whole else ""
        print(
            f"| {r['run']} | {r['files']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['files_per_s']:.2f} | "
            f"{r['audio_h_per_s']:.3f} | {r['peak_main_mib']:.0f} | {r['peak_all_mib']:.0f} | {speed} | {mem} |"
        )
    print("\n| torch vs onnxruntime | torch ms | onnxruntime ms | speed-up |")
    print("|---|---:|---:|---:|")
    for what, t, o in backends:
        print(f"| {what} | {1000 * t:.1f} | {1000 * o:.1f} | {t / o:.2f}x |")
    print(
        "\n| network, 200 windows | one batch at a time on all threads, ms/window "
        "| one batch per thread at once, ms/window | speed-up |"
    )
    print("|---|---:|---:|---:|")
    for name, threads, serial, at_once in streams:
        print(f"| {name}, {threads} threads | {1000 * serial:.1f} | {1000 * at_once:.1f} | {serial / at_once:.2f}x |")
    print("\n| song | audio s | decode s | resample s | front-end s | network s |")
    print("|---|---:|---:|---:|---:|---:|")
    keys = ("decode", "resample", "frontend", "network")
    for s in stages:
        print(f"| {s['song']} | {s['seconds']:.0f} | " + " | ".join(f"{s[k]:.3f}" for k in keys) + " |")
    tot = {k: sum(s[k] for s in stages) for k in keys}
    all_s = sum(tot.values()) or 1.0
    audio = sum(s["seconds"] for s in stages)
    print(
        f"| **all {len(stages)} songs** | {audio:.0f} | "
        + " | ".join(f"{tot[k]:.2f} ({100 * tot[k] / all_s:.0f}%)" for k in keys)
        + " |"
    )


def export_zoo(work: Path) -> None:
    """Export every architecture (random weights) and print its largest ONNX difference."""
    from audiocnn.models.checkpoint import model_metadata, save_checkpoint
    from audiocnn.models.registry import create_model, list_models
    from audiocnn.tagging.export import export_onnx

    print("| architecture | time axis | largest abs difference |\n|---|---|---:|")
    for name in list_models():
        if name.startswith("test-"):
            continue
        m = create_model(name, num_classes=10, task="multi-label")
        ckpt = save_checkpoint(work / "zoo" / f"{name}.safetensors", m, model_metadata(m, [f"t{i}" for i in range(10)]))
        rep = export_onnx(ckpt, work / "zoo" / f"{name}.onnx")
        print(f"| {name} | {'dynamic' if rep.dynamic_time else 'fixed'} | {rep.max_abs_diff:.1e} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--songs", type=int, default=50)
    ap.add_argument("--min-seconds", type=float, default=30.0)
    ap.add_argument("--max-seconds", type=float, default=300.0)
    ap.add_argument("--repeat", type=int, default=1, help="runs per row (median)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "audiocnn-bench-library")
    ap.add_argument("--data-dir", type=Path, default=None, help="audiocnn data dir")
    ap.add_argument("--musicnn-python", default=sys.executable, help="a Python with TensorFlow and musicnn")
    ap.add_argument("--quick", action="store_true", help="6 songs of 30-60 s: a check that everything runs")
    ap.add_argument("--export-zoo", action="store_true", help="only: export every architecture to ONNX and check it")
    opts = ap.parse_args()
    if opts.export_zoo:
        export_zoo(opts.work)
        return
    if opts.quick:
        opts.songs, opts.max_seconds = 6, 60.0

    env = bench_env(opts.data_dir, opts.work)
    folder = opts.work / f"library-{opts.songs}x{opts.min_seconds:.0f}-{opts.max_seconds:.0f}s"
    print(f"making {opts.songs} songs under {folder} ...", file=sys.stderr, flush=True)
    files = make_folder(folder, opts.songs, opts.min_seconds, opts.max_seconds)
    audio_s = sum(sf.info(str(f)).duration for f in files)
    run_cli(["tag", str(files[0]), "--model", opts.model], env)  # imports the pretrained model once

    out = opts.work / "out.jsonl"
    base = ["tag", str(folder), "--model", opts.model, "--output", str(out)]
    fifth = max(1, len(files) // 5)
    part = opts.work / "fifth"
    part.mkdir(exist_ok=True)
    for f in files[:fifth]:
        link = part / f.name
        if not link.exists():
            link.symlink_to(f)
    part_s = sum(sf.info(str(f)).duration for f in files[:fifth])
    runs = [
        timed_run("audiocnn -j 1 (ONNX Runtime)", base, env, opts.repeat, audio_s, len(files), out),
        timed_run("audiocnn -j 2 (ONNX Runtime)", [*base, "-j", "2"], env, opts.repeat, audio_s, len(files), out),
        timed_run(
            f"audiocnn -j 2, first {fifth} of the files",
            ["tag", str(part), "--model", opts.model, "--output", str(out), "-j", "2"],
            env,
            opts.repeat,
            part_s,
            fifth,
            out,
        ),
        timed_run(
            "audiocnn -j 1 --backend torch",
            [*base, "--backend", "torch"],
            env,
            opts.repeat,
            audio_s,
            len(files),
            out,
        ),
        timed_run(
            "audiocnn -j 2 --backend torch",
            [*base, "-j", "2", "--backend", "torch"],
            env,
            opts.repeat,
            audio_s,
            len(files),
            out,
        ),
        musicnn_api_row(opts.musicnn_python, files, audio_s, opts.repeat),
    ]
    longest = max(files, key=lambda f: sf.info(str(f)).duration)
    backends = backends_rows(opts.model, longest, max(1, opts.repeat) * 3)
    streams = streams_rows(opts.model)
    stages = breakdown(opts.model, files)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    header = (
        f"audiocnn library benchmark: model {opts.model}, {len(files)} songs, {audio_s / 3600:.2f} h of audio "
        f"({opts.min_seconds:.0f}-{opts.max_seconds:.0f} s; wav/flac/mp3/ogg), {os.cpu_count()} CPUs, "
        f"load average {load:.1f} at the end, median of {opts.repeat} run(s), fresh process each"
    )
    print_tables(runs, backends, streams, stages, header)


if __name__ == "__main__":
    main()
