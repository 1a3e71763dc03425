"""musicnn: musically motivated CNN front-end + dense 1-D residual mid-end + pooling back-end.

Pons, Serra. "musicnn: pre-trained convolutional neural networks for music audio tagging",
ISMIR-LBD 2019; Pons et al. "End-to-end learning for music audio tagging at scale",
ISMIR 2018. Layer sizes follow the authors' released code (musicnn 0.1.0, ``models.py``,
``build_musicnn`` as used for ``MTT_musicnn``/``MSD_musicnn``), so their pretrained weights
load unchanged (``audiocnn pretrained import musicnn``).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from audiocnn.constants import MULTI_LABEL
from audiocnn.errors import ModelError
from audiocnn.features.frontends import FrontendConfig, MelConfig
from audiocnn.models.base import ModelSpec, TaggingModel, coerce_frontend
from audiocnn.models.registry import register_model

# TensorFlow's batch-norm defaults (tf.compat.v1.layers.batch_normalization), which the
# pretrained weights were trained with: eps 1e-3, moving-average decay 0.99.
TF_BN_EPS = 1e-3
TF_BN_MOMENTUM = 0.01

# musicnn frames the whole song once (16 kHz, hop 256, centred frames) and cuts it into
# non-overlapping 187-frame patches (librosa.time_to_frames(3 s) + 1). A window of
# 187 * 256 - 1 samples is the longest one our centred front-end turns into exactly 187
# frames; see MusiCNN's docstring for how windows map onto musicnn's patches.
MUSICNN_FRAMES = 187
MUSICNN_HOP = 256
MUSICNN_INPUT_LENGTH = MUSICNN_FRAMES * MUSICNN_HOP - 1


def musicnn_frontend(**overrides: Any) -> MelConfig:
    """musicnn's input: librosa mel (16 kHz, n_fft 512, hop 256, 96 slaney mels, power 2,
    centred with zero padding), rounded to float16, then ``log10(10000 * mel + 1)``."""
    params: dict[str, Any] = dict(
        sample_rate=16000,
        n_fft=512,
        hop_length=MUSICNN_HOP,
        n_mels=96,
        f_min=0.0,
        f_max=None,
        htk=False,
        norm="slaney",
        power=2.0,
        center=True,
        pad_mode="constant",
        compression="log10_10000",
        fp16_before_log=True,
    )
    params.update(overrides)
    return MelConfig(**params)


def tf_batchnorm(num_features: int, dims: int) -> nn.Module:
    cls = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}[dims]
    return cls(num_features, eps=TF_BN_EPS, momentum=TF_BN_MOMENTUM)


def tf_same_padding(kernel: int) -> tuple[int, int]:
    """TensorFlow 'same' padding for stride 1: the extra pixel of an even kernel goes after."""
    total = kernel - 1
    return total // 2, total - total // 2


def pooled_conv_relu_bn(x: torch.Tensor, conv: nn.Conv2d, bn: nn.Module, pool) -> torch.Tensor:
    """``pool(bn(relu(conv(x))))`` for a max-type ``pool`` and BN in inference mode.

    BN with running statistics is a per-channel affine map ``a*v + c``, and
    ``max(a*relu(z) + c) = a*relu(max z) + c`` for ``a >= 0`` (``min z`` for ``a < 0``).
    Flipping the sign of the filters whose ``a < 0`` turns both into one max, so pooling
    runs on the raw conv output and the full-size ReLU/BN maps are never built (exact up
    to float rounding of the affine map).
    """
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    sign = torch.where(scale >= 0, 1.0, -1.0).to(x.dtype)
    z = F.conv2d(x, conv.weight * sign[:, None, None, None], conv.bias * sign)
    peak = pool(z)
    view = (-1,) + (1,) * (peak.dim() - 2)
    return F.relu(peak * sign.view(view)) * scale.view(view) + shift.view(view)


class _FreqPooledConv(nn.Module):
    """conv (time x freq kernel) -> ReLU -> BN -> max over the whole frequency axis.

    Input ``(B, 1, T, F)``; output ``(B, filters, T)``. Time is padded so length is kept:
    symmetric ``(k-1)/2`` for odd kernels, TF 'same' rules for even ones. Frequency is
    'valid' (the max-pool over all remaining bins makes its padding irrelevant for musicnn's
    timbral filters; temporal filters are 1 bin wide).
    """

    def __init__(self, filters: int, time: int, freq: int) -> None:
        super().__init__()
        self.pad = tf_same_padding(time)
        self.conv = nn.Conv2d(1, filters, kernel_size=(time, freq))
        self.bn = tf_batchnorm(filters, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 0, self.pad[0], self.pad[1]))
        if self.training:
            return self.bn(F.relu(self.conv(x))).amax(dim=3)
        return pooled_conv_relu_bn(x, self.conv, self.bn, lambda z: z.amax(dim=3))


class _MidendConv(nn.Module):
    """1-D conv over time spanning all channels (musicnn's 'dense' mid-end layer)."""

    def __init__(self, in_channels: int, filters: int, kernel: int) -> None:
        super().__init__()
        self.pad = tf_same_padding(kernel)
        self.conv = nn.Conv1d(in_channels, filters, kernel_size=kernel)
        self.bn = tf_batchnorm(filters, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.relu(self.conv(F.pad(x, self.pad))))


@register_model("musicnn")
class MusiCNN(TaggingModel):
    """musicnn (Pons et al.): timbral + temporal front-end, residual mid-end, mean/max back-end.

    Defaults are exactly musicnn 0.1.0's ``MTT_musicnn``/``MSD_musicnn``:

    * input batch-norm (1 channel) on the log-mel ``(B, 96 mels, T)``;
    * timbral filters: 204 filters of 7 frames x ``int(0.4*96)=38`` and x ``int(0.7*96)=67``
      mel bins (valid in frequency, time padded 3+3), ReLU, BN, max over frequency;
    * temporal filters: 51 filters each of 128, 64 and 32 frames x 1 bin, TF 'same' time
      padding (63+64, 31+32, 15+16), ReLU, BN, max over frequency -> 561 channels;
    * mid-end: three 1-D convs of 64 filters, 7 frames, ReLU then BN, the 2nd and 3rd
      residual; front-end and mid-end outputs concatenated -> 753 channels;
    * back-end: max and mean over time, interleaved per channel (TF flattens
      ``[max, mean]`` per channel) -> BN(1506) -> dropout 0.5 -> dense 200 + ReLU -> BN
      (the *penultimate* embedding) -> dropout 0.5 -> dense ``num_classes``.

    All BN layers use TF's eps 1e-3 and decay 0.99 (torch momentum 0.01).

    Hyper-parameters (kwargs): ``timbral_filters`` (204), ``timbral_time`` (7 frames),
    ``timbral_freq_ratios`` ((0.4, 0.7): fraction of the mel axis each timbral kernel spans),
    ``temporal_filters`` (51), ``temporal_lengths`` ((128, 64, 32) frames),
    ``midend_filters`` (64; musicnn's "big" MSD model uses 512), ``midend_kernel`` (7),
    ``backend_units`` (200; "big": 500), ``dropout`` (0.5), ``input_length`` (samples).

    Input-length policy: ``adaptive``. The network is convolutional in time with global
    mean/max pooling, so longer inputs give one prediction for the whole input (musicnn
    itself allows other patch lengths); it was trained on 3 s patches (``input_length`` =
    47871 samples = 187 frames), which is what the tagger windows songs into and where
    predictions are best calibrated. Inputs shorter than the shortest temporal filter
    (32 frames, about 0.5 s) are a ModelError. The mel axis must have the front-end's
    ``n_mels`` bins (at least the widest timbral kernel).

    Framing versus musicnn: musicnn computes one mel spectrogram of the whole song and cuts
    patches of 187 frames, patch *k* holding the frames centred on samples
    ``256 * (187k + i)``. Our window of 47871 samples starting at sample ``47872 k`` gives
    the same 187 frame centres; only the first and last frame differ (they see zero padding
    instead of the neighbouring audio), which moves per-window scores by up to ~0.03 on
    real music. Windows hopped by 47872 samples reproduce musicnn's patch grid. For exact
    parity (taggram within 1e-5), either compute the mel of the whole song with this
    model's front-end and cut 187-frame patches, or give each window 256 samples
    (``n_fft // 2``) of real audio on both sides (zeros at the song's ends), i.e. 48384
    samples from ``47872 k - 256``, and keep frames ``1..187`` of its 190; both then go
    through ``from_features=True``.
    """

    spec = ModelSpec(
        input_kind="mel",
        input_length=MUSICNN_INPUT_LENGTH,
        sample_rate=16000,
        reference=(
            "Pons & Serra, musicnn: pre-trained CNNs for music audio tagging (ISMIR-LBD 2019); "
            "layers of github.com/jordipons/musicnn models.py (MTT_musicnn)"
        ),
    )

    length_policy = "adaptive"

    def __init__(
        self,
        num_classes: int = 50,
        task: str = MULTI_LABEL,
        *,
        frontend: FrontendConfig | None = None,
        timbral_filters: int = 204,
        timbral_time: int = 7,
        timbral_freq_ratios: Sequence[float] = (0.4, 0.7),
        temporal_filters: int = 51,
        temporal_lengths: Sequence[int] = (128, 64, 32),
        midend_filters: int = 64,
        midend_kernel: int = 7,
        backend_units: int = 200,
        dropout: float = 0.5,
        input_length: int | None = None,
    ) -> None:
        config = coerce_frontend(frontend) or musicnn_frontend()
        if not isinstance(config, MelConfig):
            raise ModelError("musicnn needs a mel front-end (frontend: {kind: mel, ...})")
        super().__init__(num_classes, task, config)
        n_mels = config.n_mels
        ratios = [float(r) for r in timbral_freq_ratios]
        lengths = [int(k) for k in temporal_lengths]
        widths = [int(r * n_mels) for r in ratios]
        if not ratios and not lengths:
            raise ModelError("musicnn needs at least one timbral or temporal filter shape")
        if any(not 1 <= w <= n_mels for w in widths):
            raise ModelError(
                f"timbral_freq_ratios {ratios} give kernel widths {widths}; each must be 1..{n_mels} mel bins"
            )
        if any(k < 1 for k in lengths) or timbral_time < 1 or midend_kernel < 1:
            raise ModelError("kernel lengths must be >= 1 frame")
        if min(timbral_filters, temporal_filters, midend_filters, backend_units) < 1:
            raise ModelError("filter and unit counts must be >= 1")
        if not 0.0 <= dropout < 1.0:
            raise ModelError(f"dropout must be in [0, 1), got {dropout}")
        if input_length is not None and config.num_frames(int(input_length)) < 1:
            raise ModelError(f"input_length {input_length} samples gives no frames")

        self.bn_input = tf_batchnorm(1, 2)
        self.timbral = nn.ModuleList(_FreqPooledConv(timbral_filters, timbral_time, w) for w in widths)
        self.temporal = nn.ModuleList(_FreqPooledConv(temporal_filters, k, 1) for k in lengths)
        front_channels = timbral_filters * len(widths) + temporal_filters * len(lengths)
        self.midend = nn.ModuleList(
            [
                _MidendConv(front_channels, midend_filters, midend_kernel),
                _MidendConv(midend_filters, midend_filters, midend_kernel),
                _MidendConv(midend_filters, midend_filters, midend_kernel),
            ]
        )
        pooled = 2 * (front_channels + 3 * midend_filters)
        self.bn_pool = tf_batchnorm(pooled, 1)
        self.drop_pool = nn.Dropout(dropout)
        self.dense = nn.Linear(pooled, backend_units)
        self.bn_dense = tf_batchnorm(backend_units, 1)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(backend_units, num_classes))
        self.n_mels = n_mels
        self.embedding_dim = backend_units
        self._min_frames = min(lengths) if lengths else max(timbral_time, midend_kernel)

        self.init_kwargs = {
            "timbral_filters": int(timbral_filters),
            "timbral_time": int(timbral_time),
            "timbral_freq_ratios": ratios,
            "temporal_filters": int(temporal_filters),
            "temporal_lengths": lengths,
            "midend_filters": int(midend_filters),
            "midend_kernel": int(midend_kernel),
            "backend_units": int(backend_units),
            "dropout": float(dropout),
        }
        if input_length is not None:
            self.init_kwargs["input_length"] = int(input_length)

    def _layers(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_features(feats)
        x = self.bn_input(feats.transpose(1, 2).unsqueeze(1))  # (B, 1, T, F): TF's layout
        timbral = [block(x) for block in self.timbral]
        temporal = [block(x) for block in self.temporal]
        front = torch.cat(timbral + temporal, dim=1)  # (B, C, T)
        c1 = self.midend[0](front)
        c2 = self.midend[1](c1) + c1
        c3 = self.midend[2](c2) + c2
        mid = torch.cat([front, c1, c2, c3], dim=1)
        max_pool = mid.amax(dim=2)
        mean_pool = mid.mean(dim=2)
        pooled = torch.stack([max_pool, mean_pool], dim=2).flatten(1)  # TF order: per channel
        hidden = self.bn_dense(F.relu(self.dense(self.drop_pool(self.bn_pool(pooled)))))
        return {
            "timbral": torch.cat(timbral, dim=1) if timbral else front[:, :0],
            "temporal": torch.cat(temporal, dim=1) if temporal else front[:, :0],
            "cnn1": c1,
            "cnn2": c2,
            "cnn3": c3,
            "mean_pool": mean_pool,
            "max_pool": max_pool,
            "penultimate": hidden,
        }

    def forward_features(self, feats: torch.Tensor) -> torch.Tensor:
        return self._layers(feats)["penultimate"]

    def extract_features(self, x: torch.Tensor, *, from_features: bool = False) -> dict[str, torch.Tensor]:
        """musicnn's named intermediate outputs (same names as its extractor) plus ``logits``.

        ``timbral``/``temporal``/``cnn1..3`` are ``(B, channels, T)``; ``mean_pool`` and
        ``max_pool`` ``(B, 753)``; ``penultimate`` ``(B, 200)`` (= :meth:`embed`).
        """
        if not from_features:
            x = self.frontend(x)
        out = self._layers(x)
        out["logits"] = self.head(out["penultimate"])
        return out
