"""Feature extraction and random-crop reading: the audiocnn store vs one .npy per clip.

    .venv/bin/python benchmarks/features.py [--clips 200] [--seconds 30] [--rate 44100]
        [--channels 2] [--jobs 1,2] [--mel] [--reads 3000] [--crop 59049]

Builds a synthetic corpus of MP3 clips (soundfile's LAME encoder; ``--unique`` distinct
encodings copied under different names, so corpus creation stays cheap; decoding cost
does not depend on the content), then times:

(a) ``open_dataset_store`` (``audiocnn features``: waveform, 16 kHz int16) at each ``--jobs`` value,
(b) the usual baseline: ``librosa.load(sr=16000)`` + ``np.save`` of one file per clip,
    in one process, [with ``--mel``: also mel store vs librosa.load + melspectrogram +
    power_to_db + np.save],
(c) random crops of ``--crop`` samples: ``FeatureStore.read`` vs ``np.load`` of per-clip
    ``.npy`` files (whole file, and ``mmap_mode="r"`` as the best per-file loader does),
    plus ``StoreDataset`` through a ``DataLoader`` with 2 workers.

All files are read once before timing (warm page cache for every contender). Prints one
table; the numbers depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf


def make_corpus(root: Path, clips: int, unique: int, seconds: float, rate: int, channels: int) -> Path:
    from audiocnn.datasets.manifest import Clip, Manifest, write_manifest

    raw = root / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    for u in range(min(unique, clips)):
        f0 = 110 * 2 ** (u / 12)
        y = sum(np.sin(2 * np.pi * f0 * h * t + u) / h for h in (1, 2, 3, 5))
        y = 0.2 * y * (1 + 0.5 * np.sin(2 * np.pi * 0.3 * t))
        y = y + 0.05 * rng.standard_normal(t.shape)
        y = np.stack([np.roll(y, 50 * c) for c in range(channels)], axis=1) if channels > 1 else y
        sf.write(str(raw / f"u{u}.mp3"), y.astype(np.float32), rate, format="MP3")
    records = []
    for i in range(clips):
        name = f"clip{i:05d}.mp3"
        shutil.copyfile(raw / f"u{i % unique}.mp3", raw / name)
        split = "train" if i % 10 < 8 else ("valid" if i % 10 == 8 else "test")
        records.append(
            Clip(id=f"clip{i:05d}", path=name, duration=seconds, sample_rate=rate, labels=["x"], split=split)
        )
    for u in range(min(unique, clips)):
        (raw / f"u{u}.mp3").unlink()
    write_manifest(Manifest(name="bench", dataset="folder", task="single-label", labels=["x"], clips=records), root)
    return root


def warm(paths) -> None:
    for p in paths:
        with open(p, "rb") as fh:
            while fh.read(1 << 20):
                pass


def naive_waveform(paths, out: Path, sr: int) -> None:
    import librosa

    out.mkdir(parents=True, exist_ok=True)
    for p in paths:
        y, _ = librosa.load(p, sr=sr, mono=True)
        np.save(out / (Path(p).stem + ".npy"), y)


def naive_mel(paths, out: Path, sr: int) -> None:
    import librosa

    out.mkdir(parents=True, exist_ok=True)
    for p in paths:
        y, _ = librosa.load(p, sr=sr, mono=True)
        m = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=512, hop_length=256, n_mels=96)
        np.save(out / (Path(p).stem + ".npy"), librosa.power_to_db(m, ref=1.0).astype(np.float32))


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (extraction workers)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class Timer:
    """Wall and CPU seconds of a block. CPU time is what survives a busy shared machine."""

    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = cpu_seconds() - self.cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=200)
    ap.add_argument("--unique", type=int, default=16, help="distinct MP3 encodings in the corpus")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rate", type=int, default=44100, help="MP3 sample rate (44100: FMA; 16000: MTAT)")
    ap.add_argument("--channels", type=int, default=2)
    ap.add_argument("--jobs", default="1,2")
    ap.add_argument("--mel", action="store_true", help="also time the mel store vs a librosa mel baseline")
    ap.add_argument("--reads", type=int, default=3000)
    ap.add_argument("--crop", type=int, default=59049, help="crop in samples (SampleCNN 3^10)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)

    import torch
    from torch.utils.data import DataLoader

    from audiocnn.audio import load_audio
    from audiocnn.datasets.manifest import Manifest, read_manifest, write_manifest
    from audiocnn.features.frontends import build_frontend
    from audiocnn.features.store import StoreDataset, default_frontend
    from audiocnn.training.data import open_dataset_store

    torch.set_num_threads(1)
    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="audiocnn-bench-"))
    rows: list[tuple[str, str, str, str]] = []
    try:
        ds = make_corpus(tmp / "bench", args.clips, args.unique, args.seconds, args.rate, args.channels)
        manifest = read_manifest(ds)
        paths = [str(manifest.audio_path(c)) for c in manifest.clips]
        warm(paths)
        n = len(paths)
        jobs_list = [int(j) for j in args.jobs.split(",")]
        # warm-up: imports and first-call costs stay out of every timing
        naive_waveform(paths[:1], tmp / "warm", 16000)
        naive_mel(paths[:1], tmp / "warm", 16000)
        build_frontend(default_frontend("mel"))
        warm_ds = tmp / "warm_ds"
        write_manifest(
            Manifest(
                name="warm",
                dataset="folder",
                task="single-label",
                labels=["x"],
                clips=manifest.clips[:1],
                audio_root=str(manifest.audio_dir()),
            ),
            warm_ds,
        )
        open_dataset_store(warm_ds, default_frontend("waveform"), jobs=1, progress=False)
        wave = default_frontend("waveform")

        def row(name: str, t: Timer, items: int, unit: str, note: str = "") -> None:
            rows.append((name, f"{items / t.wall:9.1f} {unit}/s", f"{t.cpu / items * 1e3:9.2f} ms", note))

        ours_cpu = {}
        for j in jobs_list:
            shutil.rmtree(ds / "features", ignore_errors=True)
            with Timer() as t:
                store = open_dataset_store(ds, wave, jobs=j, progress=False)
            ours_cpu[j] = t.cpu / n
            row(
                f"(a) audiocnn features --kind waveform -j {j}",
                t,
                n,
                "clips",
                f"{n / t.wall / j:.1f} clips/s/core wall",
            )
        with Timer() as t:
            naive_waveform(paths, tmp / "npy_wave", 16000)
        base_cpu = t.cpu / n
        row("(b) librosa.load + np.save, one .npy per clip", t, n, "clips", f"{n / t.wall:.1f} clips/s/core wall")
        with Timer() as t:
            for p in paths:
                load_audio(p, 16000)
        row("    floor: decoding alone (load_audio, nothing written)", t, n, "clips")
        if 1 in ours_cpu:
            rows.append(("    (a) -j 1 vs (b), per core (CPU time)", f"{base_cpu / ours_cpu[1]:8.2f}x", "", ""))
        if args.mel:
            with Timer() as t_ours:
                open_dataset_store(ds, default_frontend("mel"), jobs=1, progress=False)
            row("(a) audiocnn features --kind mel -j 1", t_ours, n, "clips")
            with Timer() as t_naive:
                naive_mel(paths, tmp / "npy_mel", 16000)
            row("(b) librosa.load + melspectrogram + np.save", t_naive, n, "clips")
            rows.append(("    (a) mel vs (b) mel, per core (CPU time)", f"{t_naive.cpu / t_ours.cpu:8.2f}x", "", ""))

        # (c) random crops, as a training loader draws them
        rng = np.random.default_rng(0)
        ids = store.clip_ids("train")
        lengths = store.lengths("train")
        crop = args.crop
        picks = rng.integers(0, len(ids), size=args.reads)
        starts = [int(rng.integers(0, max(1, lengths[i] - crop))) for i in picks]
        npy = [str(tmp / "npy_wave" / f"{ids[i]}.npy") for i in picks]

        def from_store(k: int) -> np.ndarray:
            return store.read("train", int(picks[k]), starts[k], crop)

        def from_npy(k: int) -> np.ndarray:
            return np.load(npy[k])[starts[k] : starts[k] + crop]

        def from_npy_mmap(k: int) -> np.ndarray:
            return np.array(np.load(npy[k], mmap_mode="r")[starts[k] : starts[k] + crop])

        for name, fn in (
            ("FeatureStore.read (int16 mmap slice)", from_store),
            ("per-clip .npy, np.load", from_npy),
            ("per-clip .npy, np.load(mmap_mode='r')", from_npy_mmap),
        ):
            fn(0)
            with Timer() as t:
                for k in range(args.reads):
                    fn(k)
            row(f"(c) random crop: {name}", t, args.reads, "crops", "1 process")
        dset = StoreDataset(store, "train", crop_frames=crop, seed=0)
        loader = DataLoader(dset, batch_size=32, shuffle=True, num_workers=2, persistent_workers=True)
        for _ in loader:  # warm-up epoch (worker start)
            pass
        count = 0
        wall, main_cpu = time.perf_counter(), time.process_time()
        while count < args.reads:
            for x, _y in loader:
                count += x.shape[0]
        t = Timer()
        t.wall, t.cpu = time.perf_counter() - wall, time.process_time() - main_cpu
        row(
            "(c) StoreDataset + DataLoader(batch 32, 2 workers)",
            t,
            count,
            "crops",
            f"CPU = main process only: ceiling {count / t.cpu:.0f} crops/s",
        )
    finally:
        if not args.workdir:
            shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"corpus: {args.clips} x {args.seconds:g} s MP3, {args.rate} Hz, {args.channels} ch "
        f"({args.unique} distinct encodings); cpus available: {len(os.sched_getaffinity(0))}"
    )
    width = max(len(r[0]) for r in rows) + 2
    print(f"{'measurement':<{width}}{'wall rate':>18}{'CPU/item':>13}  note")
    for name, rate, cpu, note in rows:
        print(f"{name:<{width}}{rate:>18}{cpu:>13}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
