"""Building blocks shared by the model families, plus small geometry and init helpers.

Block layouts follow the public reference code named at each class; where references
disagree, the model module says which one it follows.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from audiocnn.errors import ModelError
from audiocnn.features.frontends import FrontendConfig, MelConfig, WaveformConfig
from audiocnn.models.base import coerce_frontend


def pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    a, b = value
    return (int(a), int(b))


def activation(name: str) -> nn.Module:
    """ReLU (Won et al. 2020, Lee et al. 2017) or ELU (Choi et al. 2016)."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "elu":
        return nn.ELU(inplace=True)
    raise ModelError(f"activation must be 'relu' or 'elu', got {name!r}")


class ConvBlock1d(nn.Module):
    """conv(k, 'same') -> BN -> ReLU -> maxpool(p): the sample-level block (Lee et al. 2017)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, pool: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_ch, out_ch, kernel_size, padding=kernel_size // 2)
        self.bn = nn.BatchNorm1d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool1d(pool) if pool > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.relu(self.bn(self.conv(x))))


class SqueezeExcitation1d(nn.Module):
    """SE with an *amplifying* ratio (Kim et al. 2018; tae-jun/resemul ``se_fn``).

    Global average over time -> Dense(C*ratio, ReLU) -> Dense(C, sigmoid) -> rescale
    channels. Unlike SENet's reduction ratio, the hidden layer is wider than C.
    """

    def __init__(self, channels: int, amplifying_ratio: int = 16) -> None:
        super().__init__()
        hidden = channels * amplifying_ratio
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=-1)
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))
        return x * s.unsqueeze(-1)


class ConvBlock2d(nn.Module):
    """conv(3x3, 'same') -> BN -> activation -> maxpool: minzwon ``Conv_2d``, Choi's FCN block."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int | Sequence[int] = 3,
        pool: int | Sequence[int] = 2,
        act: str = "relu",
    ) -> None:
        super().__init__()
        k = pair(kernel_size)
        self.conv = nn.Conv2d(in_ch, out_ch, k, padding=(k[0] // 2, k[1] // 2))
        self.bn = nn.BatchNorm2d(out_ch)
        self.act = activation(act)
        self.pool = nn.MaxPool2d(pair(pool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.bn(self.conv(x))))


class ResBlock2d(nn.Module):
    """Two 3x3 convs with a strided residual (minzwon ``Res_2d``).

    ``conv3x3(stride)-BN-ReLU-conv3x3-BN`` plus a shortcut, ReLU after the sum. The
    shortcut is a strided 3x3 conv + BN whenever the stride or width changes, as in the
    reference (not the 1x1 projection of the ResNet paper).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int | Sequence[int] = 2) -> None:
        super().__init__()
        s = pair(stride)
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(in_ch, out_ch, kernel_size, stride=s, padding=pad)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, kernel_size, padding=pad)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module
        if s != (1, 1) or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size, stride=s, padding=pad),
                nn.BatchNorm2d(out_ch),
            )
        else:
            self.shortcut = nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + self.shortcut(x))


class ResPoolBlock2d(nn.Module):
    """Two 3x3 convs with an identity shortcut, then ReLU and max-pooling (minzwon
    ``Res_2d_mp``, the Harmonic CNN's block): ``conv-BN-ReLU-conv-BN``, plus the input,
    ReLU, maxpool. The shortcut adds the input unchanged, so widths in and out are equal."""

    def __init__(self, channels: int, pool: int | Sequence[int] = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(pair(pool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.pool(self.relu(out + x))


def output_head(in_features: int, num_classes: int, dropout: float) -> nn.Sequential:
    """Dropout then the output layer, the layout every reference here uses."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_classes))


def pooled_size(size: int, pools: Sequence[int]) -> int:
    """Length left after successive non-overlapping max-poolings (floor, like MaxPool)."""
    for p in pools:
        size //= p
    return size


def strided_size(size: int, strides: Sequence[int]) -> int:
    """Length left after successive 'same'-padded strided convs (ceil division)."""
    for s in strides:
        size = -(-size // s)
    return size


def check_positive_ints(name: str, values: Sequence[int]) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise ModelError(f"{name} must be a list of positive integers, got {values!r}") from None
    if not out or any(v < 1 for v in out):
        raise ModelError(f"{name} must be a non-empty list of positive integers, got {list(values)!r}")
    return out


def check_pools(name: str, pools: Sequence[int | Sequence[int]], n_layers: int) -> tuple[tuple[int, int], ...]:
    """One positive ``[freq, time]`` pool (or stride) per layer, as pairs."""
    try:
        out = tuple(pair(p) for p in pools)
    except (TypeError, ValueError):
        raise ModelError(f"{name}: pools must be a list of [freq, time] pairs, got {pools!r}") from None
    if len(out) != n_layers or any(min(p) < 1 for p in out):
        raise ModelError(f"{name}: need one positive [freq, time] pool per layer ({n_layers}), got {pools!r}")
    return out


def check_dropout(p: float) -> float:
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ModelError(f"dropout must be in [0, 1), got {p}")
    return p


def keras_init_(module: nn.Module) -> None:
    """Keras initialisers as in the SampleCNN references (tae-jun/sample-cnn, resemul):
    he_uniform for convolutions, glorot_uniform for dense layers, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def won2020_mel(sample_rate: int = 16000, n_mels: int = 96) -> MelConfig:
    """torchaudio MelSpectrogram + AmplitudeToDB defaults as minzwon's models use them."""
    return MelConfig(
        sample_rate=sample_rate,
        n_fft=512,
        hop_length=256,
        n_mels=n_mels,
        f_min=0.0,
        f_max=8000.0 if sample_rate >= 16000 else None,
        htk=True,
        norm=None,
        power=2.0,
        center=True,
        pad_mode="reflect",
        compression="db",
        amin=1e-10,
    )


def waveform_frontend(name: str, frontend: FrontendConfig | None, default_rate: int) -> WaveformConfig:
    """The model's waveform config: ``frontend`` if given, else raw audio at ``default_rate``."""
    frontend = coerce_frontend(frontend)
    if frontend is None:
        return WaveformConfig(sample_rate=default_rate)
    if not isinstance(frontend, WaveformConfig):
        raise ModelError(f"{name} takes raw waveforms; got a {frontend.kind!r} front-end config")
    return frontend


def mel_frontend(name: str, frontend: FrontendConfig | None, n_mels: int | None, default_mels: int) -> MelConfig:
    """The model's mel config: ``frontend`` if given (checked against ``n_mels``), else Won 2020's."""
    frontend = coerce_frontend(frontend)
    if frontend is None:
        return won2020_mel(n_mels=int(n_mels or default_mels))
    if not isinstance(frontend, MelConfig):
        raise ModelError(f"{name} takes a log-mel spectrogram; got a {frontend.kind!r} front-end config")
    if n_mels is not None and int(n_mels) != frontend.n_mels:
        raise ModelError(f"{name}: n_mels={n_mels} disagrees with the front-end's n_mels={frontend.n_mels}")
    return frontend
