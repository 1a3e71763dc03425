"""Decode time of a 30 s MP3 to 16 kHz mono: audiocnn.load_audio vs librosa.load.

    .venv/bin/python benchmarks/decode.py [--runs 9] [--seconds 30]

Prints a table of the median (and min) wall time over several runs, after one warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf


def make_mp3(path: Path, seconds: float, sr: int = 44100) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    y = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 0.5 * t)) / 2
    y = y + 0.05 * rng.standard_normal(t.shape)
    stereo = np.stack([y, np.roll(y, 100)], axis=1).astype(np.float32)
    sf.write(str(path), stereo, sr, format="MP3")


def timeit(fn, runs: int) -> list[float]:
    fn()  # warm-up (imports, caches)
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--sr", type=int, default=16000)
    args = ap.parse_args(argv)

    import librosa

    from audiocnn import load_audio

    with tempfile.TemporaryDirectory() as tmp:
        mp3 = Path(tmp) / "clip.mp3"
        make_mp3(mp3, args.seconds)
        ours = load_audio(mp3, args.sr)
        ref, _ = librosa.load(mp3, sr=args.sr, mono=True)
        diff = float(np.max(np.abs(ours - ref)))
        rows = [
            ("audiocnn.load_audio", timeit(lambda: load_audio(mp3, args.sr), args.runs)),
            ("librosa.load", timeit(lambda: librosa.load(mp3, sr=args.sr, mono=True), args.runs)),
        ]
    print(
        f"decode {args.seconds:.0f} s stereo 44.1 kHz MP3 -> {args.sr} Hz mono, {args.runs} runs "
        f"(max abs difference {diff:.2e})"
    )
    print(f"{'decoder':<22}{'median ms':>11}{'min ms':>9}{'x real time':>13}")
    for name, times in rows:
        med = statistics.median(times)
        print(f"{name:<22}{med * 1e3:>11.1f}{min(times) * 1e3:>9.1f}{args.seconds / med:>13.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
