"""Tiny registered models (test-only names) and checkpoints for tests and benchmarks.

Importing this module registers them: ``test-tiny-mel`` and ``test-tiny-wave`` train in
seconds; ``test-probe-wave``, ``test-probe-mel`` and ``test-fixed-mel`` give predictable
scores; ``test-slow-mel`` scores like ``test-probe-mel`` but sleeps
``$AUDIOCNN_TEST_SLOW_WINDOW_S`` seconds per batch, so that a run can be killed part-way."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import nn

from audiocnn.features.frontends import MelConfig, WaveformConfig
from audiocnn.models.base import ModelSpec, TaggingModel
from audiocnn.models.checkpoint import model_metadata, save_checkpoint
from audiocnn.models.registry import _REGISTRY, create_model, register_model

SR = 8000
TINY_MEL = MelConfig(sample_rate=SR, n_fft=256, hop_length=128, n_mels=16)
SLOW_ENV = "AUDIOCNN_TEST_SLOW_WINDOW_S"


@register_model("test-probe-wave")
class ProbeWave(TaggingModel):
    """Embedding = (window mean, window power); head = identity. Outputs are predictable."""

    spec = ModelSpec("waveform", SR, SR, "test")

    def __init__(self, num_classes: int, task: str, *, frontend=None, input_length: int = SR) -> None:
        super().__init__(num_classes, task, frontend or WaveformConfig(sample_rate=SR))
        self.init_kwargs = {"input_length": int(input_length)}
        self.head = nn.Linear(2, num_classes)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()
            for i in range(num_classes):
                self.head.weight[i, i % 2] = 1.0 + i // 2

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x.mean(-1), x.pow(2).mean(-1)], dim=-1)


@register_model("test-probe-mel")
class ProbeMel(TaggingModel):
    """Embedding = per-band mean of the log-mel patch; any patch length works."""

    spec = ModelSpec("mel", SR, SR, "test")

    def __init__(self, num_classes: int, task: str, *, frontend=None, input_length: int = SR) -> None:
        super().__init__(
            num_classes,
            task,
            frontend or MelConfig(sample_rate=SR, n_fft=256, hop_length=128, n_mels=16, compression="log10_10000"),
        )
        self.init_kwargs = {"input_length": int(input_length)}
        self.head = nn.Linear(self.frontend_config.n_mels, num_classes)

    def forward_features(self, feats: torch.Tensor) -> torch.Tensor:
        return feats.mean(dim=-1)


@register_model("test-fixed-mel")
class FixedMel(TaggingModel):
    """Takes exactly ``input_frames`` frames (like VGG): other window lengths fail."""

    spec = ModelSpec("mel", SR // 2, SR, "test")

    def __init__(self, num_classes: int, task: str, *, frontend=None) -> None:
        super().__init__(
            num_classes,
            task,
            frontend or MelConfig(sample_rate=SR, n_fft=256, hop_length=128, n_mels=8, compression="log1p"),
        )
        self.init_kwargs = {}
        self.head = nn.Linear(8 * self.input_frames, num_classes)

    def forward_features(self, feats: torch.Tensor) -> torch.Tensor:
        return feats.flatten(1)


class TinyMel(TaggingModel):
    """conv1d over 16 mels -> BN -> ReLU -> global max -> dropout + linear."""

    spec = ModelSpec(input_kind="mel", input_length=SR, sample_rate=SR, reference="tests")
    length_policy = "adaptive"

    def __init__(self, num_classes: int, task: str, *, frontend=None, channels: int = 8) -> None:
        super().__init__(num_classes, task, frontend or TINY_MEL)
        self._min_frames = 3
        self.conv = nn.Conv1d(self.frontend_config.n_mels, channels, 3, padding=1)
        self.bn = nn.BatchNorm1d(channels)
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(channels, num_classes))
        self.init_kwargs = {"channels": channels}

    def forward_features(self, feats: torch.Tensor) -> torch.Tensor:
        x = feats / 40.0  # dB range down to ~unit scale
        return torch.relu(self.bn(self.conv(x))).amax(dim=-1)


class TinyWave(TaggingModel):
    """strided conv over the waveform -> BN -> ReLU -> global mean -> linear."""

    spec = ModelSpec(input_kind="waveform", input_length=SR // 2, sample_rate=SR, reference="tests")
    length_policy = "adaptive"

    def __init__(self, num_classes: int, task: str, *, frontend=None) -> None:
        super().__init__(num_classes, task, frontend or WaveformConfig(sample_rate=SR))
        self._min_frames = 64
        self.conv = nn.Conv1d(1, 6, 16, stride=8)
        self.bn = nn.BatchNorm1d(6)
        self.head = nn.Linear(6, num_classes)
        self.init_kwargs = {}

    def forward_features(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(feats.unsqueeze(1)))).mean(dim=-1)


def register_tiny_models() -> None:
    for name, cls in (("test-tiny-mel", TinyMel), ("test-tiny-wave", TinyWave)):
        if _REGISTRY.get(name) is None:
            register_model(name)(cls)


register_tiny_models()


@register_model("test-slow-mel")
class SlowMel(ProbeMel):
    """ProbeMel that sleeps per batch when $AUDIOCNN_TEST_SLOW_WINDOW_S is set, so that a
    run can be killed part-way; without it, the same scores as fast as ProbeMel."""

    def forward_features(self, feats: torch.Tensor) -> torch.Tensor:
        time.sleep(float(os.environ.get(SLOW_ENV, "0")))
        return super().forward_features(feats)


def make_checkpoint(
    path: Path,
    name: str = "test-probe-mel",
    labels: list[str] | None = None,
    task: str = "multi-label",
    seed: int = 0,
    **kw,
) -> Path:
    labels = labels or ["rock", "jazz", "piano", "vocal"]
    torch.manual_seed(seed)
    model = create_model(name, num_classes=len(labels), task=task, **kw)
    return save_checkpoint(path, model, model_metadata(model, labels))
