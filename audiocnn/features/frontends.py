"""Feature front-ends as torch modules, each described by a small frozen config.

The configs are the identity of a feature: the on-disk store and checkpoints key on
``config.hash``, so two extractions agree exactly when their configs are equal.

``MelFrontend`` is ``torch.stft`` + librosa's mel filterbank (recomputed in numpy by
``mel_filterbank``, identical to ``librosa.filters.mel``) and matches
``librosa.feature.melspectrogram`` with the same parameters (tested to 1e-5 relative).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch
from torch import nn

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


def _hz_to_mel(f: np.ndarray, htk: bool) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    if htk:
        return 2595.0 * np.log10(1.0 + f / 700.0)
    f_sp = 200.0 / 3  # Slaney: linear below 1 kHz, logarithmic above
    mels = f / f_sp
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    log_part = min_log_mel + np.log(np.maximum(f, min_log_hz) / min_log_hz) / logstep
    return np.where(f >= min_log_hz, log_part, mels)


def _mel_to_hz(m: np.ndarray, htk: bool) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if htk:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(
    sample_rate: int,
    n_fft: int,
    n_mels: int,
    f_min: float = 0.0,
    f_max: float | None = None,
    htk: bool = False,
    norm: str | None = "slaney",
) -> np.ndarray:
    """Triangular mel filters, shape (n_mels, 1 + n_fft // 2), float64.

    The same filters as ``librosa.filters.mel`` (tested to 1e-6), computed here so that
    building a front-end does not import librosa and scipy.signal, which costs seconds of
    start-up in ``audiocnn tag``.
    """
    f_max = sample_rate / 2.0 if f_max is None else float(f_max)
    fft_freqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    mel_pts = np.linspace(_hz_to_mel(f_min, htk), _hz_to_mel(f_max, htk), n_mels + 2)
    mel_f = _mel_to_hz(mel_pts, htk)
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_freqs)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    if norm == "slaney":
        weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return weights


def real_dft_basis(window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The one-sided DFT of ``len(window)`` samples as two real matrices, window applied:
    ``(cos, sin)``, each ``(n_fft, n_fft // 2 + 1)`` in float64. A spectrogram made of plain
    matrix products (:func:`power_frames`) exports to ONNX, where ``torch.stft``'s complex
    output does not."""
    n = window.shape[0]
    angle = 2 * np.pi * torch.outer(torch.arange(n, dtype=torch.float64), torch.arange(n // 2 + 1, dtype=torch.float64))
    angle = angle / n
    w = window.to(torch.float64)[:, None]
    return torch.cos(angle) * w, torch.sin(angle) * w


def power_frames(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, hop_length: int) -> torch.Tensor:
    """|DFT|^2 of the frames of ``x`` (batch, samples; already padded), ``hop_length`` apart,
    with the basis of :func:`real_dft_basis`: (batch, frames, bins)."""
    n = cos.shape[0]
    frames = (x.shape[-1] - n) // hop_length + 1
    index = torch.arange(frames, device=x.device)[:, None] * hop_length + torch.arange(n, device=x.device)
    seg = x[:, index]
    re, im = seg @ cos, seg @ sin
    return re * re + im * im


class WaveformFrontend(nn.Module):
    """Identity on ``(batch, samples)``; optional per-example unit-RMS normalisation."""

    def __init__(self, config: WaveformConfig) -> None:
        super().__init__()
        self.config = config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3 and x.shape[1] == 1:
            x = x[:, 0]
        if x.dim() != 2:
            raise ValueError(f"waveform front-end expects (batch, samples), got {tuple(x.shape)}")
        if self.config.normalize:
            rms = x.float().pow(2).mean(dim=-1, keepdim=True).clamp_min(1e-12).sqrt()
            x = x / rms.to(x.dtype)
        return x


class MelFrontend(nn.Module):
    """``(batch, samples)`` -> ``(batch, n_mels, frames)`` float32 log-mel, outside autocast."""

    def __init__(self, config: MelConfig) -> None:
        super().__init__()
        self.config = config
        win = config.win_length or config.n_fft
        window = torch.hann_window(win, periodic=True, dtype=torch.float64)
        if win < config.n_fft:  # centre the window in n_fft like librosa.util.pad_center
            left = (config.n_fft - win) // 2
            window = torch.nn.functional.pad(window, (left, config.n_fft - win - left))
        fb = mel_filterbank(
            config.sample_rate,
            config.n_fft,
            config.n_mels,
            config.f_min,
            config.f_max,
            config.htk,
            config.norm,
        )
        # Kept in float64: on CPU the whole front-end runs in float64 (2.5x the cost of
        # float32, still ~800x real time on one core) so quiet bins match librosa to 1e-5
        # relative; float32 FFT error is relative to the frame's energy, not the bin's.
        # On GPUs (and MPS, which has no float64) it runs in float32.
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("mel_fb", torch.from_numpy(fb), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        if x.dim() == 3 and x.shape[1] == 1:
            x = x[:, 0]
        if x.dim() != 2:
            raise ValueError(f"mel front-end expects (batch, samples), got {tuple(x.shape)}")
        dtype = torch.float64 if x.device.type == "cpu" else torch.float32
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.to(dtype)
            if c.center and c.pad_mode == "constant":
                pad = c.n_fft // 2
                x = torch.nn.functional.pad(x, (pad, pad))
                center = False
            else:
                center = c.center
            spec = torch.stft(
                x,
                n_fft=c.n_fft,
                hop_length=c.hop_length,
                win_length=c.n_fft,
                window=self.window.to(dtype),
                center=center,
                pad_mode=c.pad_mode,
                return_complex=True,
            )
            mag = spec.abs()
            if c.power != 1.0:
                mag = mag.pow(c.power)
            mel = torch.matmul(self.mel_fb.to(dtype), mag)
            return self.compress(mel).float()

    def compress(self, mel: torch.Tensor) -> torch.Tensor:
        c = self.config
        if c.fp16_before_log:
            mel = mel.half().to(mel.dtype)
        if c.compression == "db":
            out = 10.0 * torch.log10(mel.clamp_min(c.amin))
            if c.top_db is not None:
                peak = out.amax(dim=(-2, -1), keepdim=True)
                out = torch.maximum(out, peak - c.top_db)
            return out
        if c.compression == "log1p":
            return torch.log1p(mel)
        if c.compression == "log10_10000":
            return torch.log10(10000.0 * mel + 1.0)
        return mel


# numpy names of the torch.stft padding modes a stream can reproduce at the signal's ends
# ("circular" needs the end of the signal before its start).
_NP_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}


class MelStream:
    """A mel front-end applied to one long signal block by block, frame for frame equal
    to applying it to the whole signal.

    Memory stays bounded by one block: the signal's two ends get the centre padding
    here, once, and a ``center=False`` copy of the front-end (same buffers, same code)
    runs over the whole frames each block completes. ``push`` returns the compressed
    frames a block completes, ``(n_mels, frames)``; ``finish`` those left at the end. Per-example
    ``top_db`` clipping needs
    the whole signal's peak: it is left out of ``push`` and applied by ``clip_top_db``.
    """

    def __init__(self, frontend: MelFrontend, device: torch.device | str = "cpu") -> None:
        c = frontend.config
        if not self.supports(c):
            raise ConfigError(f"mel pad_mode {c.pad_mode!r} cannot be streamed")
        self.config, self.device = c, torch.device(device)
        self._fe = copy.copy(frontend)
        self._fe.config = dataclasses.replace(c, center=False, top_db=None)
        self.pad = c.n_fft // 2 if c.center else 0
        self._np_mode = _NP_PAD_MODES.get(c.pad_mode, "constant")
        self._started = self.pad == 0
        self._head = np.zeros(0, np.float32)  # raw samples waiting for the left pad
        self._tail = np.zeros(0, np.float32)  # last pad+1 raw samples, for the right pad
        self._buf = np.zeros(0, np.float32)  # padded-domain samples not yet framed
        self.samples = 0  # input samples pushed so far
        self.peak = 0  # largest buffer held, in samples

    @staticmethod
    def supports(config: MelConfig) -> bool:
        return not config.center or config.pad_mode in _NP_PAD_MODES

    def push(self, y: np.ndarray) -> np.ndarray:
        """The next block of the signal; returns the frames it completes."""
        pad = self.pad
        self.samples += y.shape[0]
        if pad:
            self._tail = np.concatenate([self._tail, y])[-(pad + 1) :]
        if not self._started:
            self._head = np.concatenate([self._head, y])
            if self._head.shape[0] <= pad:  # the left pad reflects pad+1 samples
                return np.zeros((self.config.n_mels, 0), np.float32)
            y = self._left_padded()
        return self._frames(y)

    def finish(self) -> np.ndarray:
        """The end of the signal: pads it and returns the remaining frames."""
        y = self._left_padded() if not self._started else np.zeros(0, np.float32)
        if self.pad and self.samples:
            right = np.pad(self._tail, (0, self.pad), mode=self._np_mode)[-self.pad :]
            y = np.concatenate([y, right.astype(np.float32)])
        return self._frames(y)

    def _left_padded(self) -> np.ndarray:
        pad = self.pad
        left = (
            np.pad(self._head[: pad + 1], (pad, 0), mode=self._np_mode)[:pad]
            if self._head.size
            else np.zeros(0, np.float32)
        )
        y = np.concatenate([left.astype(np.float32), self._head])
        self._head = np.zeros(0, np.float32)
        self._started = True
        return y

    def _frames(self, y: np.ndarray) -> np.ndarray:
        c = self.config
        buf = np.concatenate([self._buf, y]) if self._buf.shape[0] else y
        self.peak = max(self.peak, buf.shape[0])
        n = 0 if buf.shape[0] < c.n_fft else (buf.shape[0] - c.n_fft) // c.hop_length + 1
        if n == 0:
            self._buf = buf
            return np.zeros((c.n_mels, 0), np.float32)
        seg = np.ascontiguousarray(buf[: (n - 1) * c.hop_length + c.n_fft], dtype=np.float32)
        self._buf = buf[n * c.hop_length :]
        with torch.inference_mode():
            return self._fe(torch.from_numpy(seg).to(self.device)[None])[0].float().cpu().numpy()

    def clip_top_db(self, mel: np.ndarray) -> np.ndarray:
        """The config's ``top_db`` clipping over the whole signal's frames (no-op without)."""
        c = self.config
        if c.compression != "db" or c.top_db is None or mel.size == 0:
            return mel
        return np.maximum(mel, mel.max() - np.float32(c.top_db))


def build_frontend(config: FrontendConfig) -> nn.Module:
    """The torch module computing ``config``'s feature."""
    if isinstance(config, WaveformConfig):
        return WaveformFrontend(config)
    if isinstance(config, MelConfig):
        return MelFrontend(config)
    raise ConfigError(f"not a front-end config: {config!r}")


def even_chunk_starts(length: int, size: int, n: int) -> np.ndarray:
    """Starts of ``n`` windows of ``size`` frames spread evenly over ``length`` frames, the
    first at 0 and the last ending at the end (the papers' song-level protocol). One rule
    for training's validation chunks and ``tag --chunks`` / ``evaluate --eval-chunks``."""
    room = max(0, int(length) - int(size))
    return np.rint(np.linspace(0, room, int(n))).astype(np.int64)
