"""Common base of every tagging model: front-end + backbone + head, one activation rule.

Input-length policy
-------------------
Every model class declares ``length_policy``:

``"fixed"``
    The network only has a meaning at its native length (it flattens a fixed-size map
    into a dense layer). Any other length is a :class:`~audiocnn.errors.ModelError`
    naming the expected and the received length. Long audio is cut into windows of
    ``input_length`` samples by the caller (the tagger does this).
``"adaptive"``
    The time axis is pooled globally, so any input of at least ``min_input_length``
    samples works; the native ``input_length`` is the training chunk. Shorter inputs
    are a :class:`ModelError`.

A class that leaves ``length_policy`` as ``None`` gets no check from the base class (it
must then check its input itself); the registry-wide tests require a policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from audiocnn.constants import SINGLE_LABEL
from audiocnn.errors import ModelError
from audiocnn.features.frontends import FrontendConfig, MelConfig, WaveformConfig, build_frontend, config_from_dict

LENGTH_POLICIES = ("fixed", "adaptive")


@dataclass(frozen=True)
class ModelSpec:
    """What a model family declares once: its input and where it comes from."""

    input_kind: str  # "waveform" or "mel"
    input_length: int  # native input length in samples at ``sample_rate``
    sample_rate: int
    reference: str  # paper (and public code) the layer sizes follow

    @property
    def input_seconds(self) -> float:
        return self.input_length / self.sample_rate


class TaggingModel(nn.Module):
    """Base class. Subclasses set ``spec``, build ``self.frontend_config`` and implement
    ``forward_features`` (front-end output -> penultimate embedding) and ``self.head``.

    ``model(waveform)`` runs end to end; ``model(features, from_features=True)`` skips the
    front-end (for training from a precomputed feature store).

    ``self.head`` holds the output layer(s) that map the embedding to logits; its last
    ``nn.Linear`` is the output layer that :meth:`reset_head` replaces.
    """

    spec: ModelSpec
    registry_name: str = ""
    #: "fixed" or "adaptive" (see the module docstring); None = the class checks itself.
    length_policy: str | None = None

    def __init__(self, num_classes: int, task: str, frontend_config: FrontendConfig) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.task = task
        self.frontend_config = frontend_config
        self.frontend = build_frontend(frontend_config)
        self.init_kwargs: dict[str, Any] = {}
        # Native length in samples when the architecture fixes it (else init_kwargs/spec).
        self._native_length: int | None = None
        # Smallest accepted number of front-end frames for "adaptive" models.
        self._min_frames: int | None = None

    # ----------------------------------------------------------------- input geometry
    @property
    def input_length(self) -> int:
        """Native input length in samples (at ``sample_rate``)."""
        if self._native_length is not None:
            return int(self._native_length)
        return int(self.init_kwargs.get("input_length", self.spec.input_length))

    @property
    def sample_rate(self) -> int:
        return int(self.frontend_config.sample_rate)

    @property
    def input_seconds(self) -> float:
        return self.input_length / self.sample_rate

    @property
    def input_frames(self) -> int:
        """Native input length in front-end frames (samples for waveform models)."""
        return self.frontend_config.num_frames(self.input_length)

    @property
    def min_input_frames(self) -> int:
        """Fewest front-end frames the model accepts (== input_frames when fixed)."""
        if self.length_policy == "adaptive" and self._min_frames is not None:
            return int(self._min_frames)
        return self.input_frames

    @property
    def min_input_length(self) -> int:
        """Fewest samples the model accepts end to end."""
        if self.length_policy != "adaptive":
            return self.input_length
        return samples_for_frames(self.frontend_config, self.min_input_frames)

    def feature_shape(self, frames: int | None = None) -> tuple[int, ...]:
        """Shape of one example's front-end output (without batch)."""
        frames = self.input_frames if frames is None else frames
        if isinstance(self.frontend_config, MelConfig):
            return (self.frontend_config.n_mels, frames)
        return (frames,)

    def check_features(self, feats: torch.Tensor) -> None:
        """Raise ModelError when ``feats`` (front-end output) breaks the length policy."""
        if self.length_policy is None:
            return
        name = self.registry_name or type(self).__name__
        want = self.feature_shape()
        if feats.dim() != len(want) + 1 or tuple(feats.shape[1:-1]) != want[:-1]:
            kind = "mel features" if len(want) == 2 else "waveforms"
            dims = ", ".join(str(d) for d in want[:-1])
            shape = f"(batch, {dims + ', ' if dims else ''}time)"
            raise ModelError(f"{name} expects {kind} of shape {shape}, got {tuple(feats.shape)}")
        frames = int(feats.shape[-1])
        unit = "frames" if len(want) == 2 else "samples"
        if self.length_policy == "fixed" and frames != self.input_frames:
            raise ModelError(
                f"{name} takes exactly {self.input_frames} {unit} per example "
                f"({self.input_length} samples = {self.input_seconds:.2f} s at {self.sample_rate} Hz), "
                f"got {frames}",
                hint="cut the audio into windows of model.input_length samples; `audiocnn tag` does this",
            )
        if self.length_policy == "adaptive" and frames < self.min_input_frames:
            raise ModelError(
                f"{name} needs at least {self.min_input_frames} {unit} per example "
                f"({self.min_input_length} samples = {self.min_input_length / self.sample_rate:.2f} s "
                f"at {self.sample_rate} Hz), got {frames}",
                hint="pad short clips or use longer windows",
            )

    # ----------------------------------------------------------------------- forward
    def forward_features(self, feats: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def embed(self, x: torch.Tensor, *, from_features: bool = False) -> torch.Tensor:
        """Penultimate features (before the output layer)."""
        if not from_features:
            x = self.frontend(x)
        self.check_features(x)
        return self.forward_features(x)

    def forward(self, x: torch.Tensor, *, from_features: bool = False) -> torch.Tensor:
        """Logits of shape (batch, num_classes)."""
        return self.head(self.embed(x, from_features=from_features))

    def predict_proba(self, logits: torch.Tensor) -> torch.Tensor:
        return logits_to_proba(logits, self.task)

    # ------------------------------------------------------------- transfer learning
    def _output_layer(self) -> tuple[nn.Module, str, nn.Linear]:
        """(parent module, attribute name, layer) of the last nn.Linear of the head."""
        head = self.head
        if isinstance(head, nn.Linear):
            return self, "head", head
        found = None
        for qualname, module in head.named_modules():
            if isinstance(module, nn.Linear) and qualname:
                found = (qualname, module)
        if found is None:
            raise ModelError(f"{type(self).__name__}.head has no nn.Linear output layer to reset")
        qualname, layer = found
        parent_name, _, attr = qualname.rpartition(".")
        parent = head.get_submodule(parent_name) if parent_name else head
        return parent, attr, layer

    def init_output_layer(self, layer: nn.Linear) -> None:
        """Initialise a fresh output layer; subclasses follow their reference code."""
        layer.reset_parameters()

    def reset_head(self, num_classes: int) -> None:
        """Replace the output layer by a freshly initialised ``num_classes``-way one.

        For transfer learning: the backbone keeps its weights, ``num_classes`` follows.
        """
        if int(num_classes) < 1:
            raise ModelError(f"num_classes must be >= 1, got {num_classes}")
        parent, attr, old = self._output_layer()
        new = nn.Linear(
            old.in_features,
            int(num_classes),
            bias=old.bias is not None,
            device=old.weight.device,
            dtype=old.weight.dtype,
        )
        self.init_output_layer(new)
        setattr(parent, attr, new)
        self.num_classes = int(num_classes)

    def head_parameters(self) -> Iterator[nn.Parameter]:
        return self.head.parameters()

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter except the head's and the front-end's (what one freezes)."""
        skip = {id(p) for p in self.head.parameters()} | {id(p) for p in self.frontend.parameters()}
        for p in self.parameters():
            if id(p) not in skip:
                yield p


def samples_for_frames(config: FrontendConfig, frames: int) -> int:
    """Fewest input samples for which ``config`` yields at least ``frames`` frames."""
    frames = max(int(frames), 1)
    if isinstance(config, WaveformConfig):
        return frames
    if config.center:
        samples = (frames - 1) * config.hop_length
        if config.pad_mode == "reflect":  # reflect padding needs more than n_fft//2 samples
            samples = max(samples, config.n_fft // 2 + 1)
        return max(samples, 1)
    return (frames - 1) * config.hop_length + config.n_fft


def coerce_frontend(frontend: Any) -> FrontendConfig | None:
    """Accept a front-end config object or its dict form (as YAML/JSON configs give it)."""
    if frontend is None or isinstance(frontend, (MelConfig, WaveformConfig)):
        return frontend
    if isinstance(frontend, dict):
        return config_from_dict(frontend)
    raise ModelError(f"frontend must be a front-end config or a mapping, got {type(frontend).__name__}")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def logits_to_proba(logits: torch.Tensor, task: str) -> torch.Tensor:
    """The one place that maps logits to probabilities: softmax or independent sigmoids."""
    logits = logits.float()
    if task == SINGLE_LABEL:
        return torch.softmax(logits, dim=-1)
    return torch.sigmoid(logits)
