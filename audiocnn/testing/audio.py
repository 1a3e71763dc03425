"""Synthetic audio for tests and benchmarks: deterministic tones, written or encoded in
any format audiocnn reads."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf


def synth_tone(
    seconds: float = 2.0,
    sample_rate: int = 22050,
    freqs: tuple[float, ...] = (220.0, 330.0, 440.0),
    channels: int = 1,
    seed: int = 0,
) -> np.ndarray:
    """A deterministic chord plus a little noise, shape (frames,) or (frames, channels)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    y = sum(np.sin(2 * np.pi * f * t + i) for i, f in enumerate(freqs)) / (len(freqs) * 2)
    y = y + 0.01 * rng.standard_normal(t.shape)
    if channels == 1:
        return y.astype(np.float32)
    return np.stack([y * (0.5 + 0.5 * c / channels) for c in range(channels)], axis=1).astype(np.float32)


def write_audio(path: Path, y: np.ndarray, sample_rate: int, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), y, sample_rate, **kw)
    return path


def audio_bytes(fmt: str, *, seconds: float = 1.0, sr: int = 22050, seed: int = 0, channels: int = 1) -> bytes:
    """Encoded synthetic audio: fmt in au, wav, flac, ogg, mp3."""
    y = synth_tone(seconds, sr, freqs=(220.0 + 40 * seed, 330.0, 495.0), channels=channels, seed=seed)
    buf = io.BytesIO()
    kw = {
        "au": dict(format="AU", subtype="PCM_16"),
        "wav": dict(format="WAV", subtype="PCM_16"),
        "flac": dict(format="FLAC"),
        "ogg": dict(format="OGG", subtype="VORBIS"),
        "mp3": dict(format="MP3"),
    }[fmt]
    sf.write(buf, y, sr, **kw)
    return buf.getvalue()
