"""Tiny registered models and checkpoints for the tagging tests (test-only names)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from audiocnn.features.frontends import MelConfig, WaveformConfig
from audiocnn.models.base import ModelSpec, TaggingModel
from audiocnn.models.checkpoint import model_metadata, save_checkpoint
from audiocnn.models.registry import create_model, register_model

SR = 8000


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
