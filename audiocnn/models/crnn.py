"""``crnn``: convolutional recurrent network, a 2D CNN front with a GRU over time.

Source: K. Choi, G. Fazekas, M. Sandler, K. Cho, "Convolutional Recurrent Neural Networks
for Music Classification", ICASSP 2017 (arXiv:1609.04243): four 3x3 conv layers with
(2,2), (3,3), (4,4), (4,4) max-pooling reduce a 96-mel spectrogram to one row, and a
two-layer GRU with 32 units summarises the remaining sequence over time; its last output
feeds the dense output layer.

Setting we follow, and why: the re-implementation evaluated by Won et al. 2020
("Evaluation of CNN-based automatic music tagging models", SMC 2020, arXiv:2006.00751),
minzwon/sota-music-tagging-models ``training/model.py`` ``CRNN`` with ``modules.py``
``Conv_2d``: 16 kHz audio, the same torchaudio log-mel front-end as the FCN there (n_fft
512, hop 256, 96 mels up to 8 kHz, HTK scale, no filter normalisation, reflect padding,
power -> dB), BatchNorm over the input, widths 64-128-128-128 (3x3 conv + BN + ReLU +
max-pool), GRU(128 -> 32, 2 layers), dropout 0.5, dense. Input: 29 s = 464,000 samples
(``training/main.py``: ``29 * 16000`` for crnn) -> 1,813 frames -> 96 x 1,813 -> after
the poolings 1 x 18: an 18-step sequence for the GRU.

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

DEFAULT_CHANNELS = (64, 128, 128, 128)
DEFAULT_POOLS = ((2, 2), (3, 3), (4, 4), (4, 4))
SAMPLE_RATE = 16000
INPUT_LENGTH = 464000  # 29 s at 16 kHz

CHOI_2017 = (
    "Choi et al. 2017, Convolutional recurrent neural networks for music classification "
    "(arXiv:1609.04243); code: minzwon/sota-music-tagging-models CRNN"
)


@register_model("crnn")
class CRNN(TaggingModel):
    """Choi et al. 2017 CRNN (minzwon's 16 kHz setting): 4 conv layers, then a 2-layer GRU.

    Input-length policy: **adaptive**. The poolings must reduce the mel axis to one row;
    the time axis becomes a sequence the GRU reads to its end, so any input of at least
    the product of the time poolings (96 frames = 24,320 samples = 1.52 s at 16 kHz) works;
    the native 464,000 samples (29 s) is the training length. Shorter inputs raise
    ModelError.

    Hyper-parameters: ``channels`` (64,128,128,128), ``pools`` (per-layer (freq, time)),
    ``rnn_units`` (32), ``rnn_layers`` (2), ``dropout`` (0.5), ``n_mels`` (96),
    ``input_length`` (464,000 samples).
    """

    spec = ModelSpec("mel", INPUT_LENGTH, SAMPLE_RATE, CHOI_2017)
    length_policy = "adaptive"

    def __init__(
        self,
        num_classes: int,
        task: str,
        *,
        frontend: FrontendConfig | None = None,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        pools: Sequence[Sequence[int]] = DEFAULT_POOLS,
        rnn_units: int = 32,
        rnn_layers: int = 2,
        dropout: float = 0.5,
        n_mels: int | None = None,
        input_length: int = INPUT_LENGTH,
    ) -> None:
        config = mel_frontend("crnn", frontend, n_mels, 96)
        super().__init__(num_classes, task, config)
        channels = check_positive_ints("channels", channels)
        pools_t = check_pools("crnn", pools, len(channels))
        rnn_units, rnn_layers = check_positive_ints("rnn_units/rnn_layers", (rnn_units, rnn_layers))
        dropout = check_dropout(dropout)
        rows = pooled_size(config.n_mels, [p[0] for p in pools_t])
        if rows != 1:
            raise ModelError(
                f"crnn: pools {[list(p) for p in pools_t]} reduce {config.n_mels} mel bins to {rows} rows, not 1",
                hint="adjust `pools` or `n_mels` together",
            )
        self._min_frames = 1
        for p in pools_t:
            self._min_frames *= p[1]
        if config.num_frames(int(input_length)) < self._min_frames:
            raise ModelError(
                f"crnn: input_length={input_length} gives {config.num_frames(int(input_length))} frames, "
                f"fewer than the {self._min_frames} the time poolings need"
            )
        self.init_kwargs = {
            "channels": list(channels),
            "pools": [list(p) for p in pools_t],
            "rnn_units": rnn_units,
            "rnn_layers": rnn_layers,
            "dropout": dropout,
            "n_mels": config.n_mels,
            "input_length": int(input_length),
        }
        self.input_bn = nn.BatchNorm2d(1)
        chans = [1, *channels]
        self.layers = nn.Sequential(*(ConvBlock2d(a, b, 3, p) for a, b, p in zip(chans[:-1], chans[1:], pools_t)))
        self.rnn = nn.GRU(channels[-1], rnn_units, rnn_layers, batch_first=True)
        self.embedding_dim = rnn_units
        self.head = output_head(rnn_units, num_classes, dropout)

    def forward_features(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.input_bn(feats.unsqueeze(1))
        x = self.layers(x)  # (B, C, 1, T')
        x = x.squeeze(2).transpose(1, 2)  # (B, T', C)
        # The recurrence runs in float32 (under autocast too): a bf16 GRU drifts over steps.
        with torch.autocast(device_type=x.device.type, enabled=False):
            out, _ = self.rnn(x.float())
        return out[:, -1]
