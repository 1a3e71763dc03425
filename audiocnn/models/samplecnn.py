"""Sample-level CNNs on raw waveforms: ``samplecnn`` and ``samplecnn-se``.

Sources
-------
``samplecnn``: J. Lee, J. Park, K. L. Kim, J. Nam, "Sample-level Deep Convolutional Neural
Networks for Music Auto-tagging Using Raw Waveforms", SMC 2017 (arXiv:1703.01789), the
3^9 model. Layer sizes and initialisation follow tae-jun/sample-cnn
``sample_cnn/model.py`` (Keras, by a co-author of the follow-up paper); the same stack is
in kyungyunlee/sampleCNN-pytorch and minzwon/sota-music-tagging-models ``SampleCNN``:

    59049 samples -> conv3 stride 3, 128 (valid) + BN + ReLU        -> 19683 x 128
    9 x [conv3 'same' + BN + ReLU + maxpool3], widths
        128, 128, 256, 256, 256, 256, 256, 256, 512                 -> 1 x 512
    conv1, 512 + BN + ReLU -> dropout 0.5 -> dense(num_classes)

``samplecnn-se``: T. Kim, J. Lee, J. Nam, "Sample-level CNN Architectures for Music
Auto-tagging Using Raw Waveforms", ICASSP 2018 (arXiv:1710.10451), the "SE + multi"
model (MTAT ROC-AUC .9111 in its README). Follows the authors' code tae-jun/resemul
``model.py``: the same stem and nine blocks, each followed by squeeze-and-excitation
with an *amplifying* ratio of 16 (GAP -> Dense(16C, ReLU) -> Dense(C, sigmoid) -> scale),
then multi-level feature aggregation: global max pooling of the last three blocks'
outputs, concatenated (256 + 256 + 512 = 1024), Dense(1024) + BN + ReLU, dropout 0.5,
dense(num_classes). (minzwon's ``SampleCNNSE`` is the residual "ReSE" variant with
ratio 1; it is not this model.)

Defaults: 22,050 Hz as in both papers (59049 samples = 2.68 s). Convolutions use
he_uniform, dense layers glorot_uniform, zero biases (the Keras references); BatchNorm
uses PyTorch defaults.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from audiocnn.errors import ModelError
from audiocnn.features.frontends import FrontendConfig
from audiocnn.models.base import ModelSpec, TaggingModel
from audiocnn.models.layers import (
    ConvBlock1d,
    SqueezeExcitation1d,
    check_dropout,
    check_positive_ints,
    keras_init_,
    output_head,
    waveform_frontend,
)
from audiocnn.models.registry import register_model

DEFAULT_BLOCKS = (128, 128, 256, 256, 256, 256, 256, 256, 512)
SAMPLE_RATE = 22050

LEE_2017 = (
    "Lee et al. 2017, Sample-level deep CNNs for music auto-tagging using raw waveforms "
    "(arXiv:1703.01789); code: tae-jun/sample-cnn"
)
KIM_2018 = (
    "Kim et al. 2018, Sample-level CNN architectures for music auto-tagging using raw "
    "waveforms (arXiv:1710.10451), SE+multi; code: tae-jun/resemul"
)


def _native_length(stem_stride: int, pool: int, n_blocks: int, input_length: int | None, name: str) -> int:
    """A sample-level net maps stride * pool**blocks samples onto one frame."""
    native = stem_stride * pool**n_blocks
    if input_length is not None and int(input_length) != native:
        raise ModelError(
            f"{name}: input_length={input_length} does not fit the architecture, which maps "
            f"{stem_stride} * {pool}^{n_blocks} = {native} samples onto one frame",
            hint="change `blocks`, `pool` or `stem_stride` instead",
        )
    return native


class _SampleLevelBase(TaggingModel):
    def _build_stem_and_blocks(
        self, stem_channels: int, stem_stride: int, blocks: Sequence[int], kernel_size: int, pool: int
    ) -> None:
        self.stem = nn.Sequential(
            nn.Conv1d(1, stem_channels, stem_stride, stride=stem_stride),
            nn.BatchNorm1d(stem_channels),
            nn.ReLU(inplace=True),
        )
        chans = [stem_channels, *blocks]
        self.blocks = nn.ModuleList(ConvBlock1d(a, b, kernel_size, pool) for a, b in zip(chans[:-1], chans[1:]))

    def init_output_layer(self, layer: nn.Linear) -> None:
        keras_init_(layer)


@register_model("samplecnn")
class SampleCNN(_SampleLevelBase):
    """Lee et al. 2017 sample-level 3^9 CNN on 59,049 raw samples (2.68 s at 22,050 Hz).

    Input-length policy: **fixed**. The nine poolings reduce exactly
    ``stem_stride * pool**len(blocks)`` samples to one frame that feeds the dense layer;
    any other length raises ModelError (windowing is the caller's job).

    Hyper-parameters (kwargs, paper values as defaults): ``blocks`` (widths of the
    conv3+pool3 blocks), ``stem_channels`` (128), ``stem_stride`` (3), ``kernel_size`` (3),
    ``pool`` (3), ``final_channels`` (512, the conv1 layer), ``dropout`` (0.5).
    ``input_length`` is implied by the layers; passing a different one is an error.
    """

    spec = ModelSpec("waveform", 59049, SAMPLE_RATE, LEE_2017)
    length_policy = "fixed"

    def __init__(
        self,
        num_classes: int,
        task: str,
        *,
        frontend: FrontendConfig | None = None,
        blocks: Sequence[int] = DEFAULT_BLOCKS,
        stem_channels: int = 128,
        stem_stride: int = 3,
        kernel_size: int = 3,
        pool: int = 3,
        final_channels: int = 512,
        dropout: float = 0.5,
        input_length: int | None = None,
    ) -> None:
        super().__init__(num_classes, task, waveform_frontend("samplecnn", frontend, SAMPLE_RATE))
        blocks = check_positive_ints("blocks", blocks)
        stem_channels, stem_stride, kernel_size, pool, final_channels = check_positive_ints(
            "stem_channels/stem_stride/kernel_size/pool/final_channels",
            (stem_channels, stem_stride, kernel_size, pool, final_channels),
        )
        dropout = check_dropout(dropout)
        self._native_length = _native_length(stem_stride, pool, len(blocks), input_length, "samplecnn")
        self.init_kwargs = {
            "blocks": list(blocks),
            "stem_channels": stem_channels,
            "stem_stride": stem_stride,
            "kernel_size": kernel_size,
            "pool": pool,
            "final_channels": final_channels,
            "dropout": dropout,
        }
        self._build_stem_and_blocks(stem_channels, stem_stride, blocks, kernel_size, pool)
        self.final = ConvBlock1d(blocks[-1], final_channels, kernel_size=1, pool=1)
        self.embedding_dim = final_channels
        self.head = output_head(final_channels, num_classes, dropout)
        keras_init_(self)

    def forward_features(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.stem(feats.unsqueeze(1))
        for block in self.blocks:
            x = block(x)
        x = self.final(x)  # (B, C, 1)
        return x.flatten(1)


@register_model("samplecnn-se")
class SampleCNNSE(_SampleLevelBase):
    """Kim et al. 2018 sample-level CNN with SE blocks and multi-level aggregation.

    Input-length policy: **adaptive**. Each aggregated block output is max-pooled over
    its whole time axis, so any input of at least the native 59,049 samples works (a
    longer one yields more frames per block before the global pooling). Fewer samples
    leave the last block with no frame and raise ModelError.

    Hyper-parameters: ``blocks``, ``stem_channels``, ``stem_stride``, ``kernel_size``,
    ``pool`` as for ``samplecnn``; ``amplifying_ratio`` (16); ``multi_level`` (3: number of
    last blocks aggregated, 1 = last block only); ``dropout`` (0.5); ``input_length``
    (training chunk, default and minimum ``stem_stride * pool**len(blocks)``).
    """

    spec = ModelSpec("waveform", 59049, SAMPLE_RATE, KIM_2018)
    length_policy = "adaptive"

    def __init__(
        self,
        num_classes: int,
        task: str,
        *,
        frontend: FrontendConfig | None = None,
        blocks: Sequence[int] = DEFAULT_BLOCKS,
        stem_channels: int = 128,
        stem_stride: int = 3,
        kernel_size: int = 3,
        pool: int = 3,
        amplifying_ratio: int = 16,
        multi_level: int = 3,
        dropout: float = 0.5,
        input_length: int | None = None,
    ) -> None:
        super().__init__(num_classes, task, waveform_frontend("samplecnn-se", frontend, SAMPLE_RATE))
        blocks = check_positive_ints("blocks", blocks)
        stem_channels, stem_stride, kernel_size, pool, amplifying_ratio, multi_level = check_positive_ints(
            "stem_channels/stem_stride/kernel_size/pool/amplifying_ratio/multi_level",
            (stem_channels, stem_stride, kernel_size, pool, amplifying_ratio, multi_level),
        )
        if multi_level > len(blocks):
            raise ModelError(f"samplecnn-se: multi_level={multi_level} exceeds the {len(blocks)} blocks")
        dropout = check_dropout(dropout)
        minimum = stem_stride * pool ** len(blocks)
        native = minimum if input_length is None else int(input_length)
        if native < minimum:
            raise ModelError(
                f"samplecnn-se: input_length={native} is shorter than the {minimum} samples "
                "the blocks need to leave one frame"
            )
        self._native_length = native
        self._min_frames = minimum
        self.init_kwargs = {
            "blocks": list(blocks),
            "stem_channels": stem_channels,
            "stem_stride": stem_stride,
            "kernel_size": kernel_size,
            "pool": pool,
            "amplifying_ratio": amplifying_ratio,
            "multi_level": multi_level,
            "dropout": dropout,
            "input_length": native,
        }
        self._build_stem_and_blocks(stem_channels, stem_stride, blocks, kernel_size, pool)
        self.se = nn.ModuleList(SqueezeExcitation1d(c, amplifying_ratio) for c in blocks)
        self.multi_level = multi_level
        agg = sum(blocks[-multi_level:])
        self.fc = nn.Sequential(nn.Linear(agg, agg), nn.BatchNorm1d(agg), nn.ReLU(inplace=True))
        self.embedding_dim = agg
        self.head = output_head(agg, num_classes, dropout)
        keras_init_(self)

    def forward_features(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.stem(feats.unsqueeze(1))
        first_kept = len(self.blocks) - self.multi_level
        pooled = []
        for i, (block, se) in enumerate(zip(self.blocks, self.se)):
            x = se(block(x))
            if i >= first_kept:
                pooled.append(x.amax(dim=-1))
        return self.fc(torch.cat(pooled, dim=1))
