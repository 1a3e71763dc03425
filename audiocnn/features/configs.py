"""Front-end configs: the identity of a feature, without torch.

The configs are the identity of a feature: the on-disk store and checkpoints key on
``config.hash``, so two extractions agree exactly when their configs are equal. This
module imports no torch, so reading a config (the ONNX Runtime tagger, ``audiocnn models``)
stays light; the torch modules computing them are in :mod:`audiocnn.features.frontends`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from audiocnn.errors import ConfigError

COMPRESSIONS = ("none", "db", "log1p", "log10_10000")


#: bounds of a front-end config: outside them a feature means nothing (a sample rate of
#: 1 Hz) or cannot be held (10 MHz audio, a mel filterbank of 100,000 bands)
SAMPLE_RATES = (1000, 384_000)
MAX_N_FFT = 16384  # 0.7 s at 22.05 kHz
MAX_N_MELS = 1024


def _check_size(name: str, value: Any, low: int, high: int, why: str = "") -> None:
    """ConfigError unless ``value`` is a whole number in [low, high] (``why`` says the bound)."""
    whole = isinstance(value, (int, float, np.integer)) and not isinstance(value, bool) and float(value).is_integer()
    if not whole or not low <= value <= high:
        raise ConfigError(f"{name} must be a whole number in [{low}, {high}]{why}, got {value!r}")


class _ConfigBase:
    """Serialisation and identity shared by the front-end configs."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @property
    def hash(self) -> str:
        return config_hash(self)  # type: ignore[arg-type]


@dataclass(frozen=True)
class WaveformConfig(_ConfigBase):
    """Raw waveform input at ``sample_rate``; ``normalize`` scales each example to unit RMS."""

    sample_rate: int = 16000
    normalize: bool = False
    kind: str = "waveform"

    def __post_init__(self) -> None:
        if self.kind != "waveform":
            raise ConfigError(f"WaveformConfig.kind must be 'waveform', got {self.kind!r}")
        _check_size("sample_rate", self.sample_rate, *SAMPLE_RATES)

    def num_frames(self, num_samples: int) -> int:
        return int(num_samples)


@dataclass(frozen=True)
class MelConfig(_ConfigBase):
    """Mel spectrogram parameters (librosa names and meanings).

    ``compression``: ``db`` = ``10*log10(max(x, amin))`` like ``librosa.power_to_db`` with
    ref=1 (and ``top_db`` clipping per example when set); ``log1p`` = ``log(1 + x)``;
    ``log10_10000`` = ``log10(10000*x + 1)`` as musicnn does. ``fp16_before_log`` rounds the
    mel power to float16 before compression, which musicnn's input pipeline does.
    """

    sample_rate: int = 16000
    n_fft: int = 512
    hop_length: int = 256
    win_length: int | None = None
    n_mels: int = 96
    f_min: float = 0.0
    f_max: float | None = None
    htk: bool = False
    norm: str | None = "slaney"
    power: float = 2.0
    center: bool = True
    pad_mode: str = "constant"
    compression: str = "db"
    amin: float = 1e-10
    top_db: float | None = None
    fp16_before_log: bool = False
    kind: str = "mel"

    def __post_init__(self) -> None:
        if self.kind != "mel":
            raise ConfigError(f"MelConfig.kind must be 'mel', got {self.kind!r}")
        if self.compression not in COMPRESSIONS:
            raise ConfigError(f"mel compression must be one of {', '.join(COMPRESSIONS)}, got {self.compression!r}")
        if self.norm not in (None, "slaney"):
            raise ConfigError(f"mel norm must be 'slaney' or null, got {self.norm!r}")
        _check_size("sample_rate", self.sample_rate, *SAMPLE_RATES)
        _check_size("n_fft", self.n_fft, 2, MAX_N_FFT)
        _check_size("hop_length", self.hop_length, 1, MAX_N_FFT)
        if self.win_length is not None:
            _check_size("win_length", self.win_length, 1, self.n_fft, " (at most n_fft)")
        bins = self.n_fft // 2 + 1
        why = f" (n_fft={self.n_fft} gives {bins} frequency bins)" if bins < MAX_N_MELS else ""
        _check_size("n_mels", self.n_mels, 1, min(MAX_N_MELS, bins), why)
        f_max = self.f_max if self.f_max is not None else self.sample_rate / 2
        if not 0 <= self.f_min < f_max <= self.sample_rate / 2:
            raise ConfigError(f"need 0 <= f_min < f_max <= sample_rate/2, got f_min={self.f_min}, f_max={f_max}")

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for ``num_samples`` input samples."""
        if self.center:
            return 1 + int(num_samples) // self.hop_length
        return 1 + (int(num_samples) - self.n_fft) // self.hop_length


FrontendConfig = Union[WaveformConfig, MelConfig]


def config_hash(config: FrontendConfig) -> str:
    """Stable 10-hex-digit identity of a front-end config (canonical JSON, sha1)."""
    canonical = json.dumps(_canonical(config.to_dict()), sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(canonical.encode()).hexdigest()[:10]


def _canonical(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, float) and v.is_integer():
            v = int(v)  # 8000 and 8000.0 are the same setting
        out[k] = v
    return out


def config_from_dict(d: dict[str, Any]) -> FrontendConfig:
    """Rebuild a config from ``to_dict()`` output (YAML/JSON); rejects unknown keys."""
    if not isinstance(d, dict):
        raise ConfigError(f"front-end config must be a mapping, got {type(d).__name__}")
    kind = d.get("kind")
    cls = {"waveform": WaveformConfig, "mel": MelConfig}.get(kind)  # type: ignore[arg-type]
    if cls is None:
        raise ConfigError(f"front-end kind must be 'waveform' or 'mel', got {kind!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown {kind} front-end option(s): {', '.join(unknown)}")
    return cls(**d)


def even_chunk_starts(length: int, size: int, n: int) -> np.ndarray:
    """Starts of ``n`` windows of ``size`` frames spread evenly over ``length`` frames, the
    first at 0 and the last ending at the end (the papers' song-level protocol). One rule
    for training's validation chunks and ``tag --chunks`` / ``evaluate --eval-chunks``."""
    room = max(0, int(length) - int(size))
    return np.rint(np.linspace(0, room, int(n))).astype(np.int64)
