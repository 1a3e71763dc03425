"""``fcn``: fully convolutional network on a 29.1 s log-mel spectrogram.

Source: K. Choi, G. Fazekas, M. Sandler, "Automatic Tagging Using Deep Convolutional
Neural Networks", ISMIR 2016 (arXiv:1606.00298), FCN-5 pooling layout
(2x4, 2x4, 2x4, 3x5, 4x4) over a 96-mel input.

Setting we follow, and why: the re-implementation in minzwon/sota-music-tagging-models
``training/model.py`` ``FCN`` (Won et al. 2020, "Evaluation of CNN-based automatic music
tagging models"): 16 kHz audio, n_fft 512, hop 256, 96 mels up to 8 kHz (torchaudio's HTK
mel scale, no filter normalisation, reflect padding), power -> dB, BatchNorm over the
input, widths 64-128-128-128-64, 3x3 convs + BN + ReLU + max-pool, dropout 0.5, dense.
It is the FCN that was evaluated on the same MTAT split and front-end conventions as the
short-chunk models here, and 16 kHz lets one resampled copy of a dataset serve every
spectrogram model in the zoo. Input: 29.1 s = 465,600 samples -> 1,819 frames.

Choi's original Keras model (keunwoochoi/music-auto_tagging-keras
``music_tagger_cnn.py``: 12 kHz, 96 x 1366 input, widths 32-128-128-192-256, ELU) is the
same class with ``channels=[32, 128, 128, 192, 256], activation="elu",
input_length=349440`` and ``frontend=MelConfig(sample_rate=12000, n_fft=512,
hop_length=256, n_mels=96)``.

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
    check_dropout,
    check_pools,
    check_positive_ints,
    mel_frontend,
    output_head,
    pooled_size,
)
from audiocnn.models.registry import register_model

DEFAULT_CHANNELS = (64, 128, 128, 128, 64)
DEFAULT_POOLS = ((2, 4), (2, 4), (2, 4), (3, 5), (4, 4))
SAMPLE_RATE = 16000
INPUT_LENGTH = 465600  # 29.1 s at 16 kHz

CHOI_2016 = (
    "Choi et al. 2016, Automatic tagging using deep convolutional neural networks "
    "(arXiv:1606.00298); code: minzwon/sota-music-tagging-models FCN"
)


@register_model("fcn")
class FCN(TaggingModel):
    """Choi et al. 2016 FCN (minzwon's 16 kHz FCN-5 setting) on 29.1 s of 96-mel log-mel.

    Input-length policy: **fixed**. The five max-poolings must reduce the mel axis and
    the 1,819-frame time axis to exactly 1x1 before the dense layer; any other number of
    frames raises ModelError. ``input_length`` (samples) and ``pools`` must agree, which
    is checked when the model is built.

    Hyper-parameters: ``channels`` (64,128,128,128,64), ``pools`` (per-layer (freq, time)),
    ``kernel_size`` (3), ``activation`` ("relu"; Choi used "elu"), ``dropout`` (0.5),
    ``n_mels`` (96), ``input_length`` (465,600 samples = 29.1 s at 16 kHz).
    """

    spec = ModelSpec("mel", INPUT_LENGTH, SAMPLE_RATE, CHOI_2016)
    length_policy = "fixed"

    def __init__(
        self,
        num_classes: int,
        task: str,
        *,
        frontend: FrontendConfig | None = None,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        pools: Sequence[Sequence[int]] = DEFAULT_POOLS,
        kernel_size: int = 3,
        activation: str = "relu",
        dropout: float = 0.5,
        n_mels: int | None = None,
        input_length: int = INPUT_LENGTH,
    ) -> None:
        config = mel_frontend("fcn", frontend, n_mels, 96)
        super().__init__(num_classes, task, config)
        channels = check_positive_ints("channels", channels)
        pools_t = check_pools("fcn", pools, len(channels))
        dropout = check_dropout(dropout)
        self.init_kwargs = {
            "channels": list(channels),
            "pools": [list(p) for p in pools_t],
            "kernel_size": int(kernel_size),
            "activation": activation,
            "dropout": dropout,
            "n_mels": config.n_mels,
            "input_length": int(input_length),
        }
        freq = pooled_size(config.n_mels, [p[0] for p in pools_t])
        time = pooled_size(self.input_frames, [p[1] for p in pools_t])
        if (freq, time) != (1, 1):
            raise ModelError(
                f"fcn: pools {[list(p) for p in pools_t]} reduce a {config.n_mels} x {self.input_frames} "
                f"mel input (input_length={input_length}) to {freq} x {time}, not 1 x 1",
                hint="adjust `pools`, `n_mels` or `input_length` together",
            )
        self.input_bn = nn.BatchNorm2d(1)
        chans = [1, *channels]
        self.layers = nn.Sequential(
            *(ConvBlock2d(a, b, kernel_size, p, activation) for a, b, p in zip(chans[:-1], chans[1:], pools_t))
        )
        self.embedding_dim = channels[-1]
        self.head = output_head(channels[-1], num_classes, dropout)

    def forward_features(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.input_bn(feats.unsqueeze(1))
        x = self.layers(x)
        return x.flatten(1)
