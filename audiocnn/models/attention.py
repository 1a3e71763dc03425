"""``cnnsa``: a residual CNN front-end and a Transformer encoder over time (CNN + self-attention).

Source: M. Won, S. Chun, X. Serra, "Toward Interpretable Music Tagging with
Self-Attention", arXiv:1906.04972 (2019): shallow convolutions turn the spectrogram into a
sequence of time steps, stacked Transformer (BERT) encoders relate them, and the output
at a prepended [CLS] position decides the tags, so the attention of that position over
time shows which part of the audio led to a decision.

Setting we follow, and why: the model Won et al. 2020 ("Evaluation of CNN-based
automatic music tagging models", SMC 2020, arXiv:2006.00751) evaluated,
minzwon/sota-music-tagging-models ``training/model.py`` ``CNNSA`` with ``modules.py``
``Res_2d`` and ``attention_modules.py`` (BERT encoder and pooler): 16 kHz audio,
torchaudio log-mel (n_fft 512, hop 256, 128 mels up to 8 kHz, HTK, no filter
normalisation, reflect padding, dB), BatchNorm over the input, seven residual blocks
(widths 128, 128, 256, 256, 256, 256, 256; stride 2 in both axes for the first three,
then (2, 1): the pitch axis shrinks to one row, the time axis by 8), a fixed [CLS] vector
prepended (uniform random, not trained, as the reference), two BERT layers (hidden 256,
8 heads, feed-forward 1024, GELU, post-LayerNorm with eps 1e-12, attention dropout 0.5,
hidden dropout 0.4) without position embeddings (the reference adds none), the pooler
(dense + tanh on the [CLS] output), dropout 0.5, dense. Input: 15 s = 240,000 samples
(``training/main.py`` for attention) -> 938 frames -> 118 time steps.

Attention maps: :meth:`CNNSA.embed_with_attention` gives, with the embedding of the very
same forward pass, per example the attention rollout (Abnar & Zuidema 2020: heads
averaged, the residual path added as 0.5 I, layers multiplied) from the [CLS] position to
each time step, normalised to sum to 1 (:meth:`CNNSA.time_attention`: the rollout alone);
``audiocnn tag --attention DIR`` writes it per window.

Initialisation: PyTorch defaults (the reference leaves BERT's initialiser unused).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from audiocnn.errors import ModelError
from audiocnn.features.frontends import FrontendConfig
from audiocnn.models.base import ModelSpec, TaggingModel
from audiocnn.models.layers import (
    ResBlock2d,
    check_dropout,
    check_pools,
    check_positive_ints,
    mel_frontend,
    output_head,
    strided_size,
)
from audiocnn.models.registry import register_model

SAMPLE_RATE = 16000
INPUT_LENGTH = 240000  # 15 s at 16 kHz
DEFAULT_CHANNELS = (128, 128, 256, 256, 256, 256, 256)
DEFAULT_STRIDES = ((2, 2), (2, 2), (2, 2), (2, 1), (2, 1), (2, 1), (2, 1))
LAYER_NORM_EPS = 1e-12  # BERT's (TensorFlow-style) epsilon, as the reference

WON_2019 = (
    "Won et al. 2019, Toward interpretable music tagging with self-attention (arXiv:1906.04972); "
    "code: minzwon/sota-music-tagging-models CNNSA"
)


class EncoderLayer(nn.Module):
    """One BERT layer (post-LayerNorm): self-attention, then a GELU feed-forward, each
    with dropout, a residual connection and LayerNorm. Returns the attention too."""

    def __init__(self, hidden: int, heads: int, ffn: int, attention_dropout: float, hidden_dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.attention_dropout = nn.Dropout(attention_dropout)
        self.attention_out = nn.Linear(hidden, hidden)
        self.attention_norm = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.ffn_in = nn.Linear(hidden, ffn)
        self.ffn_out = nn.Linear(ffn, hidden)
        self.ffn_norm = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(hidden_dropout)
        self.gelu = nn.GELU()

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)  # (B, H, N, d_head)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        probs = torch.softmax(scores.float(), dim=-1).to(v.dtype)  # (B, H, N, N)
        context = (self.attention_dropout(probs) @ v).transpose(1, 2).reshape(x.shape)
        x = self.attention_norm(x + self.dropout(self.attention_out(context)))
        x = self.ffn_norm(x + self.dropout(self.ffn_out(self.gelu(self.ffn_in(x)))))
        return x, probs


def attention_rollout(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Rollout of per-layer attention ``(B, H, N, N)`` (input layer first) from position 0
    ([CLS]) to positions 1.. (the time steps): ``(B, N - 1)``, rows summing to 1."""
    rollout = None
    for probs in maps:
        a = probs.float().mean(dim=1)
        a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], device=a.device)
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    if rollout is None:
        raise ModelError("attention_rollout needs the attention of at least one layer")
    steps = rollout[:, 0, 1:]
    return steps / steps.sum(dim=-1, keepdim=True)


@register_model("cnnsa")
class CNNSA(TaggingModel):
    """Won et al. 2019 CNN + self-attention (minzwon's setting) on 15 s of 128-mel log-mel.

    Input-length policy: **adaptive**. The stride-2 blocks shrink the pitch axis to one
    row; the time axis becomes a sequence of any length for the encoder, so any input of
    at least the product of the time strides (8 frames = 1,792 samples = 0.11 s at 16 kHz)
    works; the native 240,000 samples (15 s) is the training chunk. Shorter inputs raise
    ModelError.

    Hyper-parameters: ``channels`` (128,128,256,256,256,256,256; the last is the encoder's
    width), ``strides`` (per-block (pitch, time)), ``attention_layers`` (2),
    ``attention_heads`` (8), ``ffn_dim`` (1024), ``attention_dropout`` (0.5),
    ``hidden_dropout`` (0.4), ``dropout`` (0.5), ``n_mels`` (128), ``input_length``
    (240,000 samples).
    """

    spec = ModelSpec("mel", INPUT_LENGTH, SAMPLE_RATE, WON_2019)
    length_policy = "adaptive"

    def __init__(
        self,
        num_classes: int,
        task: str,
        *,
        frontend: FrontendConfig | None = None,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        strides: Sequence[Sequence[int]] = DEFAULT_STRIDES,
        attention_layers: int = 2,
        attention_heads: int = 8,
        ffn_dim: int = 1024,
        attention_dropout: float = 0.5,
        hidden_dropout: float = 0.4,
        dropout: float = 0.5,
        n_mels: int | None = None,
        input_length: int = INPUT_LENGTH,
    ) -> None:
        config = mel_frontend("cnnsa", frontend, n_mels, 128)
        super().__init__(num_classes, task, config)
        channels = check_positive_ints("channels", channels)
        strides_t = check_pools("cnnsa", strides, len(channels))
        layers, heads, ffn_dim = check_positive_ints(
            "attention_layers/attention_heads/ffn_dim", (attention_layers, attention_heads, ffn_dim)
        )
        hidden = channels[-1]
        if hidden % heads:
            raise ModelError(f"cnnsa: the encoder width {hidden} (last channel) is not a multiple of {heads} heads")
        dropouts = [check_dropout(p) for p in (attention_dropout, hidden_dropout, dropout)]
        rows = strided_size(config.n_mels, [s[0] for s in strides_t])
        if rows != 1:
            shown = [list(s) for s in strides_t]
            raise ModelError(f"cnnsa: strides {shown} reduce {config.n_mels} mel bins to {rows} rows, not 1")
        self._min_frames = int(np.prod([s[1] for s in strides_t]))
        if config.num_frames(int(input_length)) < self._min_frames:
            raise ModelError(f"cnnsa: input_length={input_length} gives fewer than {self._min_frames} frames")
        self.init_kwargs = {
            "channels": list(channels),
            "strides": [list(s) for s in strides_t],
            "attention_layers": layers,
            "attention_heads": heads,
            "ffn_dim": ffn_dim,
            "attention_dropout": dropouts[0],
            "hidden_dropout": dropouts[1],
            "dropout": dropouts[2],
            "n_mels": config.n_mels,
            "input_length": int(input_length),
        }
        self.input_bn = nn.BatchNorm2d(1)
        chans = [1, *channels]
        self.layers = nn.Sequential(*(ResBlock2d(a, b, 3, s) for a, b, s in zip(chans[:-1], chans[1:], strides_t)))
        # the reference's fixed [CLS] vector: numpy's seed-0 uniform draw, never trained
        cls = np.random.RandomState(0).random_sample((1, hidden)).astype(np.float32)
        self.register_buffer("cls", torch.from_numpy(cls))
        self.encoder = nn.ModuleList(
            EncoderLayer(hidden, heads, ffn_dim, dropouts[0], dropouts[1]) for _ in range(layers)
        )
        self.pooler = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh())
        self.embedding_dim = hidden
        self.head = output_head(hidden, num_classes, dropouts[2])

    def _encode(self, feats: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.input_bn(feats.unsqueeze(1))
        x = self.layers(x).squeeze(2).transpose(1, 2)  # (B, T', C)
        x = torch.cat([self.cls.to(x.dtype).expand(x.shape[0], 1, -1), x], dim=1)
        maps = []
        for layer in self.encoder:
            x, probs = layer(x)
            maps.append(probs)
        return x, maps

    def forward_features(self, feats: torch.Tensor) -> torch.Tensor:
        return self.pooler(self._encode(feats)[0][:, 0])

    def embed_with_attention(
        self, x: torch.Tensor, *, from_features: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embedding, attention rollout from [CLS] to each time step)`` of one forward
        pass: ``(batch, hidden)`` and ``(batch, time steps)``, rows summing to 1."""
        if not from_features:
            x = self.frontend(x)
        self.check_features(x)
        out, maps = self._encode(x)
        return self.pooler(out[:, 0]), attention_rollout(maps)

    def time_attention(self, x: torch.Tensor, *, from_features: bool = False) -> torch.Tensor:
        """Attention rollout from [CLS] to each time step: ``(batch, time steps)``."""
        return self.embed_with_attention(x, from_features=from_features)[1]
