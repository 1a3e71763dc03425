"""Short-chunk CNNs: ``shortchunk-cnn`` and ``shortchunk-resnet``.

Source: M. Won, A. Ferraro, D. Bogdanov, X. Serra, "Evaluation of CNN-based Automatic
Music Tagging Models", SMC 2020 (arXiv:2006.00751); layer sizes exactly as
minzwon/sota-music-tagging-models ``training/model.py`` ``ShortChunkCNN`` and
``ShortChunkCNN_Res`` with ``modules.py`` ``Conv_2d`` / ``Res_2d``. MTAT ROC-AUC reported:
.9126 (CNN) and .9129 (ResNet).

Input: 59,049 samples at 16 kHz (3.69 s) -> 128-mel dB spectrogram, n_fft 512, hop 256
(torchaudio defaults: HTK mel scale, no filter normalisation, reflect padding, up to
8 kHz) -> 128 x 231 frames -> BatchNorm over the input ->

* ``shortchunk-cnn``: 7 x [3x3 conv + BN + ReLU + 2x2 max-pool], widths
  128, 128, 256, 256, 256, 256, 512 (``n_channels`` x 1,1,2,2,2,2,4);
* ``shortchunk-resnet``: 7 residual blocks (two 3x3 convs, stride 2, strided 3x3
  shortcut + BN), same widths;

-> global max pool over time -> Dense(512) + BN + ReLU -> dropout 0.5 -> dense.
Initialisation: PyTorch defaults, as the reference.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from audiocnn.errors import ModelError
from audiocnn.features.frontends import FrontendConfig
from audiocnn.models.base import ModelSpec, TaggingModel
from audiocnn.models.layers import (
    ConvBlock2d,
    ResBlock2d,
    check_dropout,
    check_positive_ints,
    mel_frontend,
    output_head,
    pooled_size,
    strided_size,
)
from audiocnn.models.registry import register_model

SAMPLE_RATE = 16000
INPUT_LENGTH = 59049  # 3.69 s at 16 kHz
WIDTH_MULTIPLIERS = (1, 1, 2, 2, 2, 2, 4)
WON_2020 = (
    "Won et al. 2020, Evaluation of CNN-based automatic music tagging models "
    "(arXiv:2006.00751); code: minzwon/sota-music-tagging-models {cls}"
)


class _ShortChunkBase(TaggingModel):
    """Shared plumbing: mel front-end, input BN, 7 stages, global max pool, dense head."""

    length_policy = "adaptive"
    residual = False

    def __init__(
        self,
        num_classes: int,
        task: str,
        *,
        frontend: FrontendConfig | None = None,
        n_channels: int = 128,
        channels: Sequence[int] | None = None,
        kernel_size: int = 3,
        dropout: float = 0.5,
        n_mels: int | None = None,
        input_length: int = INPUT_LENGTH,
    ) -> None:
        name = self.registry_name or type(self).__name__
        config = mel_frontend(name, frontend, n_mels, 128)
        super().__init__(num_classes, task, config)
        if channels is None:
            (n_channels,) = check_positive_ints("n_channels", (n_channels,))
            channels = [n_channels * m for m in WIDTH_MULTIPLIERS]
        channels = check_positive_ints("channels", channels)
        kernel_size = int(kernel_size)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ModelError(f"{name}: kernel_size must be odd and positive, got {kernel_size}")
        dropout = check_dropout(dropout)
        n = len(channels)
        # Frequency must shrink to exactly one row; the time axis is max-pooled globally.
        if self.residual:  # stride-2 'same' convs: ceil halving
            rows = strided_size(config.n_mels, [2] * n)
            mel_range = f"1..{2**n}"
        else:  # 2x2 max-pooling: floor halving
            rows = pooled_size(config.n_mels, [2] * n)
            mel_range = f"{2**n}..{2 ** (n + 1) - 1}"
        if rows != 1:
            raise ModelError(
                f"{name}: {n} stages reduce {config.n_mels} mel bins to {rows} rows, not 1; "
                f"use n_mels in {mel_range} or change the number of stages"
            )
        # Shortest input: one 2^n-frame block, below which the stages have nothing to pool.
        self._min_frames = 2**n
        if config.num_frames(int(input_length)) < self._min_frames:
            raise ModelError(
                f"{name}: input_length={input_length} gives {config.num_frames(int(input_length))} frames, "
                f"fewer than the {self._min_frames} the {n} stages need"
            )
        self.init_kwargs = {
            "channels": list(channels),
            "kernel_size": kernel_size,
            "dropout": dropout,
            "n_mels": config.n_mels,
            "input_length": int(input_length),
        }
        self.input_bn = nn.BatchNorm2d(1)
        chans = [1, *channels]
        if self.residual:
            stages = [ResBlock2d(a, b, kernel_size, stride=2) for a, b in zip(chans[:-1], chans[1:])]
        else:
            stages = [ConvBlock2d(a, b, kernel_size, pool=2) for a, b in zip(chans[:-1], chans[1:])]
        self.layers = nn.Sequential(*stages)
        width = channels[-1]
        self.fc = nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True))
        self.embedding_dim = width
        self.head = output_head(width, num_classes, dropout)

    def forward_features(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.input_bn(feats.unsqueeze(1))
        x = self.layers(x)  # (B, C, 1, T')
        x = x.amax(dim=(2, 3))  # global max pool (freq axis is already 1)
        return self.fc(x)


@register_model("shortchunk-cnn")
class ShortChunkCNN(_ShortChunkBase):
    """Won et al. 2020 short-chunk CNN (VGG-ish, 3x3 convs, 2x2 pooling) on 3.69 s of 128-mel.

    Input-length policy: **adaptive**. The time axis is max-pooled globally after the
    seven stages, so any input of at least 128 frames (32,512 samples = 2.03 s at 16 kHz)
    works; the native 59,049 samples is the training chunk. Shorter inputs raise
    ModelError. The mel axis must be ``n_mels`` (128) bins.

    Hyper-parameters: ``n_channels`` (128; widths are n x 1,1,2,2,2,2,4) or an explicit
    ``channels`` list, ``kernel_size`` (3), ``dropout`` (0.5), ``n_mels`` (128),
    ``input_length`` (59,049 samples).
    """

    spec = ModelSpec("mel", INPUT_LENGTH, SAMPLE_RATE, WON_2020.format(cls="ShortChunkCNN"))
    residual = False


@register_model("shortchunk-resnet")
class ShortChunkResNet(_ShortChunkBase):
    """Won et al. 2020 short-chunk CNN with residual blocks (stride-2 3x3 convs).

    Input-length policy: **adaptive**, as ``shortchunk-cnn``: global max pooling over
    time, at least 128 frames (32,512 samples = 2.03 s at 16 kHz), native 59,049 samples.

    Hyper-parameters: ``n_channels`` (128) or ``channels``, ``kernel_size`` (3),
    ``dropout`` (0.5), ``n_mels`` (128), ``input_length`` (59,049 samples).
    """

    spec = ModelSpec("mel", INPUT_LENGTH, SAMPLE_RATE, WON_2020.format(cls="ShortChunkCNN_Res"))
    residual = True
