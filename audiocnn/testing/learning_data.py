"""Synthetic "instrument" clips that can only be told apart by listening to their timbre.

Each source type is a note whose *timbre* sets its class: the harmonic envelope (all
harmonics, odd only, a formant), the attack and decay, inharmonic partials, or pitched
noise. Everything a shortcut could use is randomised per clip: pitch (over more than an
octave, the same range for every class), onset time, loudness (a 20 dB range) and a
background noise at a random SNR. Single-label clips hold one source; multi-label clips
mix one to three different sources, so each tag must be heard inside a mixture.

Used by the learning checks (``tests/models/test_learning.py``) and by
``benchmarks/learning_calibration.py``, which calibrates their bars against shuffled
labels. Run as a script it writes a folder dataset (audio + ``labels.csv``) for trying
``audiocnn prepare folder`` / ``audiocnn train`` by hand.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import soundfile as sf

SOURCES = ("pluck", "reed", "bowed", "bell", "breath", "brass")


def _harmonic_tone(rng: np.random.Generator, t: np.ndarray, f0: float, amps: np.ndarray) -> np.ndarray:
    phases = rng.uniform(0, 2 * np.pi, len(amps))
    y = np.zeros_like(t)
    for k, (a, ph) in enumerate(zip(amps, phases), start=1):
        if a and k * f0 < 0.45 * (1.0 / (t[1] - t[0])):  # stay below Nyquist
            y += a * np.sin(2 * np.pi * k * f0 * t + ph)
    return y


def _envelope(t: np.ndarray, attack: float, decay: float | None) -> np.ndarray:
    env = np.clip(t / max(attack, 1e-4), 0.0, 1.0)
    if decay is not None:
        env = env * np.exp(-np.maximum(t - attack, 0.0) / decay)
    return env


def _source(kind: str, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """One note of ``kind``, ``n`` samples, random pitch, unit peak before loudness."""
    t = np.arange(n) / sr
    f0 = float(rng.uniform(150.0, 420.0))
    k = np.arange(1, 16)
    if kind == "pluck":  # sharp attack, fast decay, bright full spectrum
        y = _harmonic_tone(rng, t, f0, 1.0 / k) * _envelope(t, 0.003, 0.25)
    elif kind == "reed":  # odd harmonics only, sustained
        y = _harmonic_tone(rng, t, f0, np.where(k % 2 == 1, 1.0 / k, 0.0)) * _envelope(t, 0.05, None)
    elif kind == "bowed":  # slow attack, dark spectrum with vibrato
        vib = 1.0 + 0.006 * np.sin(2 * np.pi * 5.5 * t)
        y = _harmonic_tone(rng, t * vib, f0, 1.0 / k**2) * _envelope(t, 0.3, None)
    elif kind == "bell":  # inharmonic partials, percussive
        ratios = np.array([1.0, 2.76, 5.40, 8.93])
        y = sum(np.sin(2 * np.pi * r * f0 * t + rng.uniform(0, 6)) / (i + 1) for i, r in enumerate(ratios))
        y = y * _envelope(t, 0.002, 0.6)
    elif kind == "breath":  # band-passed noise around the "pitch", no harmonics
        spec = np.fft.rfft(rng.standard_normal(n))
        f = np.fft.rfftfreq(n, 1.0 / sr)
        spec *= np.exp(-0.5 * ((f - 4 * f0) / (1.5 * f0)) ** 2)
        y = np.fft.irfft(spec, n) * _envelope(t, 0.15, None)
    elif kind == "brass":  # strong formant around 1.2 kHz, medium attack
        formant = np.exp(-0.5 * ((k * f0 - 1200.0) / 400.0) ** 2) + 0.1
        y = _harmonic_tone(rng, t, f0, formant) * _envelope(t, 0.06, None)
    else:
        raise ValueError(f"unknown source {kind!r}")
    return y / (np.abs(y).max() + 1e-9)


def make_clip(kinds: list[str], rng: np.random.Generator, seconds: float, sr: int) -> np.ndarray:
    """A mixture of ``kinds`` (random onset, loudness) over background noise."""
    n = int(seconds * sr)
    y = np.zeros(n)
    for kind in kinds:
        onset = int(rng.uniform(0.0, 0.3) * n)
        note = _source(kind, rng, n - onset, sr) * 10 ** (rng.uniform(-20.0, 0.0) / 20)
        y[onset:] += note
    rms = np.sqrt(np.mean(y**2)) + 1e-9
    snr_db = rng.uniform(10.0, 30.0)
    y = y + rng.standard_normal(n) * rms * 10 ** (-snr_db / 20)
    return (0.9 * y / (np.abs(y).max() + 1e-9)).astype(np.float32)


def clip_labels(task: str, index: int, rng: np.random.Generator, sources: tuple[str, ...]) -> list[str]:
    """Balanced classes for single-label; 1-3 distinct sources for multi-label."""
    if task == "single-label":
        return [sources[index % len(sources)]]
    k = int(rng.integers(1, 4))
    first = sources[index % len(sources)]
    others = [s for s in sources if s != first]
    return [first] + list(rng.choice(others, size=k - 1, replace=False))


def write_folder(
    root: Path,
    task: str,
    *,
    counts: dict[str, int],
    seconds: float = 2.0,
    sr: int = 8000,
    seed: int = 0,
    sources: tuple[str, ...] = SOURCES,
) -> Path:
    """Write clips and ``labels.csv`` (path, labels, split) under ``root``; returns the CSV."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    i = 0
    for split, n in counts.items():
        for _ in range(n):
            labels = clip_labels(task, i, rng, sources)
            rel = f"{split}/{i:04d}.wav"
            (root / split).mkdir(exist_ok=True)
            sf.write(str(root / rel), make_clip(labels, rng, seconds, sr), sr, subtype="PCM_16")
            rows.append((rel, ";".join(labels), split))
            i += 1
    csv_path = root / "labels.csv"
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "labels", "split"])
        w.writerows(rows)
    return csv_path


def shuffle_labels(csv_path: Path, seed: int, out: Path) -> Path:
    """The same clips and splits with the label column permuted across clips (a control:
    nothing is left to learn, so a model's test score is chance)."""
    with open(csv_path, newline="") as fh:
        rows = list(csv.reader(fh))
    head, body = rows[0], rows[1:]
    perm = np.random.default_rng(seed).permutation(len(body))
    labels = [body[j][1] for j in perm]
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(head)
        w.writerows([[r[0], lab, r[2]] for r, lab in zip(body, labels)])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--task", choices=("single-label", "multi-label"), default="single-label")
    ap.add_argument("--train", type=int, default=126)
    ap.add_argument("--valid", type=int, default=18)
    ap.add_argument("--test", type=int, default=36)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--sample-rate", type=int, default=16000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    csv_path = write_folder(
        a.out,
        a.task,
        counts={"train": a.train, "valid": a.valid, "test": a.test},
        seconds=a.seconds,
        sr=a.sample_rate,
        seed=a.seed,
    )
    print(csv_path)


if __name__ == "__main__":
    main()
