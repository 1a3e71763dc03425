"""VGG-style baseline on log-mel patches, as released with musicnn (``MTT_vgg``/``MSD_vgg``).

Pons, Serra. "musicnn: pre-trained convolutional neural networks for music audio tagging",
ISMIR-LBD 2019: the computer-vision baseline the musicnn models are compared against.
Layer sizes follow the authors' released code (musicnn 0.1.0, ``models.py``, ``vgg`` with
128 filters), so their pretrained weights load unchanged.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from audiocnn.constants import MULTI_LABEL
from audiocnn.errors import ModelError
from audiocnn.features.frontends import FrontendConfig, MelConfig
from audiocnn.models.base import ModelSpec, TaggingModel, coerce_frontend
from audiocnn.models.musicnn import (
    MUSICNN_INPUT_LENGTH,
    musicnn_frontend,
    pooled_conv_relu_bn,
    tf_batchnorm,
    tf_same_padding,
)
from audiocnn.models.registry import register_model

# (pool size, stride) per block as (time, freq); TF max-pooling with 'valid' padding.
VGG_POOLS: tuple[tuple[tuple[int, int], tuple[int, int]], ...] = (
    ((4, 1), (2, 2)),
    ((2, 2), (2, 2)),
    ((2, 2), (2, 2)),
    ((2, 2), (2, 2)),
    ((4, 4), (4, 4)),
)


def _pooled(n: int, size: int, stride: int) -> int:
    return (n - size) // stride + 1 if n >= size else 0


class _VGGBlock(nn.Module):
    """conv (TF 'same') -> ReLU -> BN -> max-pool (valid)."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int], pool, stride) -> None:
        super().__init__()
        pt, pf = tf_same_padding(kernel[0]), tf_same_padding(kernel[1])
        self.pad = (pf[0], pf[1], pt[0], pt[1])
        self.conv = nn.Conv2d(cin, cout, kernel_size=kernel)
        self.bn = tf_batchnorm(cout, 2)
        self.pool = nn.MaxPool2d(kernel_size=pool, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.pad)
        if self.training:
            return self.pool(self.bn(F.relu(self.conv(x))))
        return pooled_conv_relu_bn(x, self.conv, self.bn, self.pool)


@register_model("vgg")
class VGG(TaggingModel):
    """Five 3x3 conv blocks over a fixed 3 s log-mel patch, one dense output layer.

    Defaults are exactly musicnn 0.1.0's ``MTT_vgg``/``MSD_vgg``: input batch-norm (1
    channel) on the log-mel laid out ``(time, mel)``; five blocks of 128 filters 3x3
    (TF 'same' padding), ReLU then BN (eps 1e-3, decay 0.99), max-pooling (time x freq)
    4x1 stride 2x2, then 2x2/2 three times, then 4x4/4; dropout 0.25 after pools 1-4.
    For 187 frames x 96 mels the pooled map is 2 x 1 x 128; it is flattened in TF's
    (time, freq, channel) order into the 256-d *penultimate* embedding, then dropout 0.5 and
    a dense ``num_classes`` layer.

    Hyper-parameters (kwargs): ``filters`` (128), ``kernel_size`` ((3, 3) as (time, freq);
    non-square and even sizes are padded like TF's 'same'), ``dropout`` (0.25, after pools
    1-4), ``dense_dropout`` (0.5), ``input_length`` (samples; fixes the dense layer size).

    Input-length policy: ``fixed``. The dense layer sees the whole pooled map, so the model
    takes exactly ``input_frames`` frames (187 for the default 47871-sample window, musicnn's 3 s
    patch; see :class:`audiocnn.models.musicnn.MusiCNN` for how windows map onto musicnn's
    patches). Any other length raises ModelError: window longer audio and pad shorter audio
    to ``input_length`` samples first (the tagger does both).
    """

    spec = ModelSpec(
        input_kind="mel",
        input_length=MUSICNN_INPUT_LENGTH,
        sample_rate=16000,
        reference=(
            "Pons & Serra, musicnn: pre-trained CNNs for music audio tagging (ISMIR-LBD 2019), "
            "VGG baseline of github.com/jordipons/musicnn models.py (MTT_vgg)"
        ),
    )

    length_policy = "fixed"

    def __init__(
        self,
        num_classes: int = 50,
        task: str = MULTI_LABEL,
        *,
        frontend: FrontendConfig | None = None,
        filters: int = 128,
        kernel_size: Sequence[int] = (3, 3),
        dropout: float = 0.25,
        dense_dropout: float = 0.5,
        input_length: int | None = None,
    ) -> None:
        config = coerce_frontend(frontend) or musicnn_frontend()
        if not isinstance(config, MelConfig):
            raise ModelError("vgg needs a mel front-end (frontend: {kind: mel, ...})")
        super().__init__(num_classes, task, config)
        kernel = tuple(int(k) for k in kernel_size)
        if len(kernel) != 2 or min(kernel) < 1:
            raise ModelError(f"kernel_size must be two positive ints (time, freq), got {list(kernel_size)}")
        if filters < 1:
            raise ModelError(f"filters must be >= 1, got {filters}")
        for p in (dropout, dense_dropout):
            if not 0.0 <= p < 1.0:
                raise ModelError(f"dropout must be in [0, 1), got {p}")
        if input_length is not None:
            self.init_kwargs["input_length"] = int(input_length)  # read by self.input_frames
        frames, mels = self.input_frames, config.n_mels
        t, f = frames, mels
        for (pt, pf), (st, sf) in VGG_POOLS:
            t, f = _pooled(t, pt, st), _pooled(f, pf, sf)
        if t < 1 or f < 1:
            raise ModelError(
                f"vgg needs a larger input: {frames} frames x {mels} mels pool away to nothing "
                f"(default is {musicnn_frontend().num_frames(MUSICNN_INPUT_LENGTH)} x 96)"
            )
        blocks = []
        cin = 1
        for pool, stride in VGG_POOLS:
            blocks.append(_VGGBlock(cin, filters, kernel, pool, stride))
            cin = filters
        self.bn_input = tf_batchnorm(1, 2)
        self.blocks = nn.ModuleList(blocks)
        self.drops = nn.ModuleList(nn.Dropout(dropout) for _ in range(len(blocks) - 1))
        self.head = nn.Sequential(nn.Dropout(dense_dropout), nn.Linear(filters * t * f, num_classes))
        self.frames, self.n_mels = frames, mels
        self.embedding_dim = filters * t * f

        self.init_kwargs = {
            "filters": int(filters),
            "kernel_size": list(kernel),
            "dropout": float(dropout),
            "dense_dropout": float(dense_dropout),
        }
        if input_length is not None:
            self.init_kwargs["input_length"] = int(input_length)

    def _layers(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_features(feats)
        x = self.bn_input(feats.transpose(1, 2).unsqueeze(1))  # (B, 1, T, F): TF's layout
        out: dict[str, torch.Tensor] = {}
        for i, block in enumerate(self.blocks):
            if i > 0:
                x = self.drops[i - 1](x)
            x = block(x)
            out[f"pool{i + 1}"] = x
        out["penultimate"] = x.permute(0, 2, 3, 1).flatten(1)  # TF flattens (time, freq, channel)
        return out

    def forward_features(self, feats: torch.Tensor) -> torch.Tensor:
        return self._layers(feats)["penultimate"]

    def extract_features(self, x: torch.Tensor, *, from_features: bool = False) -> dict[str, torch.Tensor]:
        """Pooled maps ``pool1``..``pool5`` (``(B, filters, time, freq)``), the flattened
        ``penultimate`` (= :meth:`embed`) and ``logits``. musicnn's extractor reports
        ``pool5`` per patch as ``(time, channels)`` rows: ``pool5.permute(0, 2, 3, 1)``."""
        if not from_features:
            x = self.frontend(x)
        out = self._layers(x)
        out["logits"] = self.head(out["penultimate"])
        return out
