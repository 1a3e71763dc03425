"""Feature front-ends as torch modules, each described by a small frozen config.

The configs (:mod:`audiocnn.features.configs`, torch-free) are the identity of a feature:
the on-disk store and checkpoints key on ``config.hash``, so two extractions agree exactly
when their configs are equal.

``MelFrontend`` is ``torch.stft`` + librosa's mel filterbank (recomputed in numpy by
``mel_filterbank``, identical to ``librosa.filters.mel``) and matches
``librosa.feature.melspectrogram`` with the same parameters (tested to 1e-5 relative).
"""

from __future__ import annotations

import copy
import dataclasses
import functools

import numpy as np
import torch
from torch import nn

from audiocnn.errors import ConfigError
from audiocnn.features.configs import (  # noqa: F401  (the configs, re-exported beside their modules)
    COMPRESSIONS,
    MAX_N_FFT,
    MAX_N_MELS,
    SAMPLE_RATES,
    FrontendConfig,
    MelConfig,
    WaveformConfig,
    config_from_dict,
    config_hash,
    even_chunk_starts,
)
from audiocnn.features.streaming import FrameStream


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


class MelStream(FrameStream):
    """:class:`FrameStream` with the frames computed by a torch :class:`MelFrontend`: a
    ``center=False`` copy of it (same buffers, same code) on ``device``."""

    def __init__(self, frontend: MelFrontend, device: torch.device | str = "cpu") -> None:
        c = frontend.config
        self.device = torch.device(device)
        inner = copy.copy(frontend)
        inner.config = dataclasses.replace(c, center=False, top_db=None)
        # a function of the copy, not a method of the stream: no reference cycle keeps a
        # finished song's stream alive until the garbage collector runs
        super().__init__(c, functools.partial(_torch_frames, inner, self.device))


def _torch_frames(frontend: MelFrontend, device: torch.device, seg: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return frontend(torch.from_numpy(seg).to(device)[None])[0].float().cpu().numpy()


def build_frontend(config: FrontendConfig) -> nn.Module:
    """The torch module computing ``config``'s feature."""
    if isinstance(config, WaveformConfig):
        return WaveformFrontend(config)
    if isinstance(config, MelConfig):
        return MelFrontend(config)
    raise ConfigError(f"not a front-end config: {config!r}")
