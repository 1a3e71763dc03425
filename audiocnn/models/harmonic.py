"""``harmonic-cnn``: learnable harmonic band-pass filters feeding a short-chunk 2D CNN.

Source: M. Won, S. Chun, O. Nieto, X. Serra, "Data-driven Harmonic Filters for Audio
Representation Learning", ICASSP 2020. A power spectrogram is filtered by triangular
band-pass filters whose centre frequencies are stacked in harmonic relation: band ``k``
of harmonic ``h`` sits at ``h * f_k``, the base frequencies ``f_k`` evenly spaced in
MIDI pitch (``semitone_scale`` per semitone) from C1 up to the note nearest
``sample_rate / (2 * n_harmonic)``. Each filter's bandwidth is the equivalent rectangular
bandwidth scaled by a learnable quality factor, ``(0.1079 f + 24.7) / Q``. The
``n_harmonic`` filtered maps become the channels of a (harmonic, pitch, time) tensor, so a
3x3 convolution sees a pitch and its overtones at once.

Setting we follow, and why: the model Won et al. 2020 ("Evaluation of CNN-based
automatic music tagging models", SMC 2020, arXiv:2006.00751) evaluated,
minzwon/sota-music-tagging-models ``training/model.py`` ``HarmonicCNN`` with
``modules.py`` ``HarmonicSTFT`` (``learn_bw='only_Q'``), ``Conv_2d`` and ``Res_2d_mp``:
16 kHz audio, |STFT|^2 with n_fft 512, hop 256, Hann window, reflect padding; 6
harmonics x 2 bands per semitone -> 6 x 128 filters (C1 .. E6 base pitches), Q
initialised at 1 and learned, centre frequencies fixed; power -> dB; BatchNorm over the
6 channels; then conv(6->128) + 3 residual blocks (128) + conv(128->256) + 2 residual
blocks (256), each followed by 2x2 max-pooling (the last two 2x3), global max pooling
over time, Dense(256) + BN + ReLU, dropout 0.5, dense. Input: 80,000 samples (5 s,
``training/main.py`` for hcnn) -> 313 frames.

``learn_f0=True`` also learns the centre frequencies (the option of the authors' paper
code, minzwon/data-driven-harmonic-filters ``HarmonicConv(learn_f0=...)``; it adds
``n_harmonic * bands`` parameters). After training, ``audiocnn train`` writes the
initial and learned filters (centre and band edges) into the run folder
(``harmonic_filters.png`` and ``.csv``).

The STFT is computed as a real DFT (frames times window times a cos/sin basis, in
float32) rather than with the complex ``torch.stft``, so the whole model, filters
included, exports to ONNX. Initialisation: PyTorch defaults, as the reference.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from audiocnn.errors import ModelError
from audiocnn.features.frontends import FrontendConfig, power_frames, real_dft_basis
from audiocnn.models.base import ModelSpec, TaggingModel
from audiocnn.models.layers import (
    ConvBlock2d,
    ResPoolBlock2d,
    check_dropout,
    check_pools,
    check_positive_ints,
    output_head,
    pooled_size,
    waveform_frontend,
)
from audiocnn.models.registry import register_model

SAMPLE_RATE = 16000
INPUT_LENGTH = 80000  # 5 s at 16 kHz
DEFAULT_CHANNELS = (128, 128, 128, 128, 256, 256, 256)
DEFAULT_POOLS = ((2, 2), (2, 2), (2, 2), (2, 2), (2, 2), (2, 3), (2, 3))
ERB_ALPHA, ERB_BETA = 0.1079, 24.7  # bandwidth = (alpha * f + beta) / Q
LOWEST_MIDI = 24  # C1

WON_2020_HCNN = (
    "Won et al. 2020, Data-driven harmonic filters for audio representation learning (ICASSP 2020); "
    "code: minzwon/sota-music-tagging-models HarmonicCNN"
)


def midi_to_hz(midi: np.ndarray) -> np.ndarray:
    return 440.0 * 2.0 ** ((np.asarray(midi, dtype=np.float64) - 69.0) / 12.0)


def harmonic_centres(sample_rate: int, n_harmonic: int, semitone_scale: int) -> tuple[np.ndarray, int]:
    """``(centre frequencies in Hz, bands per harmonic)``: base pitches from C1 to the note
    nearest ``sample_rate / (2 n_harmonic)`` (so the top harmonic stays below Nyquist),
    ``semitone_scale`` per semitone, then each harmonic's multiple, harmonic-major."""
    top_hz = sample_rate / (2 * n_harmonic)
    top_midi = int(np.round(12 * (np.log2(top_hz) - np.log2(440.0)) + 69))
    bands = (top_midi - LOWEST_MIDI) * semitone_scale
    if bands < 1:
        raise ModelError(
            f"harmonic-cnn: {n_harmonic} harmonics at {sample_rate} Hz leave no pitch above C1 "
            f"(the top harmonic must stay below {sample_rate / 2:g} Hz)"
        )
    base = midi_to_hz(np.linspace(LOWEST_MIDI, top_midi, bands + 1)[:-1])
    return np.concatenate([base * (h + 1) for h in range(n_harmonic)]), bands


class HarmonicFilterbank(nn.Module):
    """Waveform ``(batch, samples)`` -> harmonic log-power ``(batch, n_harmonic, bands, frames)``."""

    def __init__(
        self,
        sample_rate: int,
        n_fft: int,
        hop_length: int,
        n_harmonic: int,
        semitone_scale: int,
        bw_q: float,
        learn_q: bool,
        learn_f0: bool,
    ) -> None:
        super().__init__()
        self.sample_rate, self.n_fft, self.hop_length = sample_rate, n_fft, hop_length
        self.n_harmonic = n_harmonic
        centres, self.bands = harmonic_centres(sample_rate, n_harmonic, semitone_scale)
        f0 = torch.tensor(centres, dtype=torch.float32)
        q = torch.tensor([float(bw_q)], dtype=torch.float32)
        # learned ones are parameters; fixed ones non-persistent buffers (rebuilt from the kwargs)
        for name, value, learn in (("f0", f0, learn_f0), ("bw_q", q, learn_q)):
            if learn:
                self.register_parameter(name, nn.Parameter(value))
            else:
                self.register_buffer(name, value, persistent=False)
        k = n_fft // 2 + 1
        self.register_buffer("fft_hz", torch.linspace(0, sample_rate // 2, k), persistent=False)
        cos, sin = real_dft_basis(torch.hann_window(n_fft, periodic=True, dtype=torch.float64))
        self.register_buffer("cos", cos.float(), persistent=False)
        self.register_buffer("sin", sin.float(), persistent=False)

    def bandwidths(self) -> torch.Tensor:
        return (ERB_ALPHA * self.f0 + ERB_BETA) / self.bw_q

    def filters(self) -> torch.Tensor:
        """Triangles of height 1 and base ``bandwidths()`` around ``f0``: (fft bins, bands)."""
        half = self.bandwidths()[None] / 2
        return torch.clamp(1 - (self.fft_hz[:, None] - self.f0[None]).abs() / half, min=0)

    def power_spectrogram(self, x: torch.Tensor) -> torch.Tensor:
        """|STFT|^2 as ``torchaudio.transforms.Spectrogram(n_fft, hop)``: (batch, frames, bins)."""
        pad = self.n_fft // 2
        x = nn.functional.pad(x[:, None], (pad, pad), mode="reflect")[:, 0]
        return power_frames(x, self.cos, self.sin, self.hop_length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            power = self.power_spectrogram(x.float())
            banded = (power @ self.filters()).transpose(1, 2)  # (batch, bands, frames)
            b, _, t = banded.shape
            stacked = banded.reshape(b, self.n_harmonic, self.bands, t)
            return 10.0 * torch.log10(stacked.clamp_min(1e-10))

    def num_frames(self, samples: int) -> int:
        return 1 + int(samples) // self.hop_length


@register_model("harmonic-cnn")
class HarmonicCNN(TaggingModel):
    """Won et al. 2020 Harmonic CNN on 5 s of 16 kHz audio (learnable harmonic filters).

    Input kind: **waveform**; the harmonic filterbank is part of the network (its
    bandwidth is trained), so the feature store holds waveforms.

    Input-length policy: **adaptive**. The seven poolings must reduce the pitch axis to one
    row; the time axis is max-pooled globally, so any input giving at least the product
    of the time poolings in frames (288 frames = 73,472 samples = 4.59 s at 16 kHz) works;
    the native 80,000 samples is the training chunk. Shorter inputs raise ModelError.

    Hyper-parameters: ``channels`` (128,128,128,128,256,256,256: a conv block where the
    width changes, a residual block where it stays), ``pools`` (per-layer (pitch, time)),
    ``n_harmonic`` (6), ``semitone_scale`` (2), ``n_fft`` (512), ``hop_length`` (256),
    ``bw_q`` (1.0, initial quality factor), ``learn_q`` (True), ``learn_f0`` (False),
    ``dropout`` (0.5), ``input_length`` (80,000 samples).
    """

    spec = ModelSpec("waveform", INPUT_LENGTH, SAMPLE_RATE, WON_2020_HCNN)
    length_policy = "adaptive"

    def __init__(
        self,
        num_classes: int,
        task: str,
        *,
        frontend: FrontendConfig | None = None,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        pools: Sequence[Sequence[int]] = DEFAULT_POOLS,
        n_harmonic: int = 6,
        semitone_scale: int = 2,
        n_fft: int = 512,
        hop_length: int = 256,
        bw_q: float = 1.0,
        learn_q: bool = True,
        learn_f0: bool = False,
        dropout: float = 0.5,
        input_length: int = INPUT_LENGTH,
    ) -> None:
        super().__init__(num_classes, task, waveform_frontend("harmonic-cnn", frontend, SAMPLE_RATE))
        channels = check_positive_ints("channels", channels)
        pools_t = check_pools("harmonic-cnn", pools, len(channels))
        n_harmonic, semitone_scale, n_fft, hop_length = check_positive_ints(
            "n_harmonic/semitone_scale/n_fft/hop_length", (n_harmonic, semitone_scale, n_fft, hop_length)
        )
        if not (isinstance(bw_q, (int, float)) and math.isfinite(bw_q) and bw_q > 0):
            raise ModelError(f"harmonic-cnn: bw_q must be a positive number, got {bw_q!r}")
        dropout = check_dropout(dropout)
        self.init_kwargs = {
            "channels": list(channels),
            "pools": [list(p) for p in pools_t],
            "n_harmonic": n_harmonic,
            "semitone_scale": semitone_scale,
            "n_fft": n_fft,
            "hop_length": hop_length,
            "bw_q": float(bw_q),
            "learn_q": bool(learn_q),
            "learn_f0": bool(learn_f0),
            "dropout": dropout,
            "input_length": int(input_length),
        }
        self.harmonic = HarmonicFilterbank(
            self.sample_rate, n_fft, hop_length, n_harmonic, semitone_scale, bw_q, bool(learn_q), bool(learn_f0)
        )
        self._check_geometry(pools_t, int(input_length))
        self.harmonic_bn = nn.BatchNorm2d(n_harmonic)
        chans = [n_harmonic, *channels]
        self.layers = nn.Sequential(
            *(
                ResPoolBlock2d(b, p) if a == b else ConvBlock2d(a, b, 3, p)
                for a, b, p in zip(chans[:-1], chans[1:], pools_t)
            )
        )
        width = channels[-1]
        self.fc = nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True))
        self.embedding_dim = width
        self.head = output_head(width, num_classes, dropout)

    def _check_geometry(self, pools: tuple[tuple[int, int], ...], input_length: int) -> None:
        fb = self.harmonic
        rows = pooled_size(fb.bands, [p[0] for p in pools])
        if rows != 1:
            raise ModelError(
                f"harmonic-cnn: pools {[list(p) for p in pools]} reduce {fb.bands} pitch bands to {rows} rows, "
                "not 1 (the bands follow sample_rate, n_harmonic and semitone_scale)",
                hint="adjust `pools`, `n_harmonic` or `semitone_scale` together",
            )
        frames = int(np.prod([p[1] for p in pools]))
        # the fewest samples giving that many frames (reflect padding needs n_fft // 2 + 1)
        self._min_frames = max((frames - 1) * fb.hop_length, fb.n_fft // 2 + 1)
        if input_length < self._min_frames:
            raise ModelError(
                f"harmonic-cnn: input_length={input_length} samples give {fb.num_frames(input_length)} frames, "
                f"fewer than the {frames} the time poolings need"
            )

    def forward_features(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.harmonic_bn(self.harmonic(feats))
        x = self.layers(x)  # (B, C, 1, T')
        x = x.amax(dim=(2, 3))  # global max pool over time (the pitch axis is already 1)
        return self.fc(x)

    def filter_summary(self, learned: bool = True) -> dict[str, Any]:
        """Centre frequencies and bandwidths (Hz, harmonic-major) of the filters, as learned
        (``learned=True``) or as initialised from the kwargs."""
        fb = self.harmonic
        if learned:
            f0 = fb.f0.detach().float().cpu().numpy()
            bw = fb.bandwidths().detach().float().cpu().numpy()
        else:
            f0, _ = harmonic_centres(fb.sample_rate, fb.n_harmonic, self.init_kwargs["semitone_scale"])
            bw = (ERB_ALPHA * f0 + ERB_BETA) / self.init_kwargs["bw_q"]
        return {
            "n_harmonic": fb.n_harmonic,
            "bands": fb.bands,
            "f0_hz": np.asarray(f0, dtype=np.float64),
            "bandwidth_hz": np.asarray(bw, dtype=np.float64),
            "q": float(fb.bw_q.detach().float().cpu()[0]) if learned else float(self.init_kwargs["bw_q"]),
        }
