"""Experiment configuration: dataclasses are the schema, YAML gives values, ``--set`` overrides.

A config file is a YAML mapping whose keys are the fields of :class:`TrainConfig`
(nested mappings for :class:`ScheduleConfig`, :class:`EarlyStoppingConfig` and
:class:`AugmentConfig`, e.g. ``augment.mixup.p=0.5``). Overrides
use dotted names (``schedule.patience=5``, ``model_kwargs.n_mels=128``); values are parsed
as YAML scalars, so ``lr=1e-4``, ``amp=bf16``, ``init=null`` and ``freeze_backbone=true``
all mean what they look like. Unknown keys are an error that lists the valid ones, so a
typo never silently trains with the default. YAML aliases are allowed as long as the
document expands to at most 100,000 values (:data:`MAX_YAML_VALUES`; a "billion laughs"
file is refused before anything copies it), and a key given twice is an error.

The resolved config (every field, defaults filled in) is written to ``<run_dir>/config.yaml``
and is what ``--resume`` and ``evaluate`` read back.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from audiocnn.constants import TASKS
from audiocnn.errors import ConfigError
from audiocnn.fileio import atomic_write_bytes

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "plateau", "skip", "cosine", "step")
AMP_MODES = ("none", "auto", "bf16", "fp16")
MONITORS = ("auto", "roc_auc_macro", "pr_auc_macro", "accuracy", "balanced_accuracy", "valid_loss")
CLASS_WEIGHTING = ("none", "balanced")


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, stepped once per epoch after validation.

    ``constant``: keep ``lr``. ``plateau``: multiply the lr by ``factor`` after ``patience``
    epochs without improvement of the monitored metric (Lee et al. 2017 SampleCNN: 0.2,
    patience 3); with ``restore_best`` the best weights are reloaded at each drop, as in
    their staged training. ``skip``: Won et al. 2020 - ``adam_epochs`` epochs of Adam at
    ``lr``, then SGD (nesterov, momentum 0.9) through ``sgd_lrs``, ``sgd_epochs`` epochs each,
    reloading the best weights at each switch. ``cosine``: cosine decay to ``min_lr`` over
    the run. ``step``: multiply by ``factor`` every ``step_epochs``. ``warmup_epochs``
    ramps the lr linearly up over the first epochs (any schedule).
    """

    name: str = "constant"
    factor: float = 0.2
    patience: int = 3
    min_lr: float = 0.0
    restore_best: bool = False
    step_epochs: int = 30
    warmup_epochs: int = 0
    adam_epochs: int = 80
    sgd_epochs: int = 20
    sgd_lrs: list[float] = field(default_factory=lambda: [1e-3, 1e-4, 1e-5])


@dataclass
class EarlyStoppingConfig:
    """Stop after ``patience`` epochs without improvement of the monitored metric
    (``min_delta`` is the smallest change that counts), counted from the last lr stage
    change of a plateau/skip schedule. Off when ``enabled`` is false."""

    enabled: bool = False
    patience: int = 10
    min_delta: float = 0.0


@dataclass
class GainConfig:
    """Random gain, uniform in [min_db, max_db], per example with probability ``p``."""

    p: float = 0.0
    min_db: float = -6.0
    max_db: float = 6.0


@dataclass
class PolarityConfig:
    """Polarity inversion (the waveform times -1) with probability ``p``."""

    p: float = 0.0


@dataclass
class NoiseConfig:
    """Additive white noise at a signal-to-noise ratio uniform in [min_snr_db, max_snr_db]."""

    p: float = 0.0
    min_snr_db: float = 10.0
    max_snr_db: float = 40.0


@dataclass
class PitchShiftConfig:
    """Pitch shift by a uniform number of semitones in [-semitones, semitones] (data workers)."""

    p: float = 0.0
    semitones: float = 2.0


@dataclass
class TimeStretchConfig:
    """Time stretch (tempo, not pitch) by a rate uniform in [min_rate, max_rate] (data workers)."""

    p: float = 0.0
    min_rate: float = 0.9
    max_rate: float = 1.1


@dataclass
class TimeMaskConfig:
    """SpecAugment time masks: ``count`` masks of up to ``max_width`` frames (PANNs: 2 x 64)."""

    p: float = 0.0
    count: int = 2
    max_width: int = 64


@dataclass
class FreqMaskConfig:
    """SpecAugment frequency masks: ``count`` masks of up to ``max_width`` mel bins (PANNs: 2 x 8)."""

    p: float = 0.0
    count: int = 2
    max_width: int = 8


@dataclass
class MixupConfig:
    """Mixup of a batch with a shuffled copy of itself, with probability ``p`` per batch; the
    weight is Beta(alpha, alpha), folded so each clip keeps the larger share."""

    p: float = 0.0
    alpha: float = 0.4


@dataclass
class AugmentConfig:
    """Training-time augmentation (training/augment.py), every transform off by default
    (``p: 0``); evaluation never augments. Gain, polarity and noise act on waveform batches
    on the training device, pitch shift and time stretch on waveform crops in the data
    workers; a mel model with any of them trains from a waveform store and computes its
    mel front-end on the device. Masks act on mel batches; mixup on any batch."""

    gain: GainConfig = field(default_factory=GainConfig)
    polarity: PolarityConfig = field(default_factory=PolarityConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    pitch_shift: PitchShiftConfig = field(default_factory=PitchShiftConfig)
    time_stretch: TimeStretchConfig = field(default_factory=TimeStretchConfig)
    time_mask: TimeMaskConfig = field(default_factory=TimeMaskConfig)
    freq_mask: FreqMaskConfig = field(default_factory=FreqMaskConfig)
    mixup: MixupConfig = field(default_factory=MixupConfig)

    def on(self, *names: str) -> bool:
        """Whether any of the named transforms (default: all) has a probability above 0."""
        return any(getattr(self, n).p > 0 for n in (names or [f.name for f in dataclasses.fields(self)]))

    @property
    def waveform(self) -> bool:
        """Whether a transform needs the waveform (so a mel model trains from waveforms)."""
        return self.on("gain", "polarity", "noise", "pitch_shift", "time_stretch")

    @property
    def in_workers(self) -> bool:
        return self.on("pitch_shift", "time_stretch")

    @property
    def on_device(self) -> bool:
        return self.on("gain", "polarity", "noise", "time_mask", "freq_mask", "mixup")

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            p = getattr(self, f.name).p
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"config key 'augment.{f.name}.p' must be in [0, 1], got {p}")
        pairs = (
            ("gain.min_db", self.gain.min_db, "gain.max_db", self.gain.max_db),
            ("noise.min_snr_db", self.noise.min_snr_db, "noise.max_snr_db", self.noise.max_snr_db),
            ("time_stretch.min_rate", self.time_stretch.min_rate, "time_stretch.max_rate", self.time_stretch.max_rate),
        )
        for lo_key, lo, hi_key, hi in pairs:
            if lo > hi:
                raise ConfigError(f"config key 'augment.{lo_key}' ({lo}) must be <= 'augment.{hi_key}' ({hi})")
        if self.time_stretch.min_rate <= 0:
            raise ConfigError(
                f"config key 'augment.time_stretch.min_rate' must be > 0, got {self.time_stretch.min_rate}"
            )
        if self.pitch_shift.semitones < 0:
            raise ConfigError(
                f"config key 'augment.pitch_shift.semitones' must be >= 0, got {self.pitch_shift.semitones}"
            )
        for name in ("time_mask", "freq_mask"):
            m = getattr(self, name)
            if m.count < 0 or m.max_width < 0:
                raise ConfigError(f"config keys 'augment.{name}.count' and '.max_width' must be >= 0")
        if self.mixup.alpha <= 0:
            raise ConfigError(f"config key 'augment.mixup.alpha' must be > 0, got {self.mixup.alpha}")


@dataclass
class TrainConfig:
    """Everything one training run depends on. See ``configs/*.yaml`` for the papers' values."""

    dataset: str = ""
    split_scheme: Optional[str] = None  # None: whatever the prepared manifest uses
    model: str = ""
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    task: Optional[str] = None  # None: the dataset's task
    epochs: int = 200
    batch_size: int = 16
    optimizer: str = "adam"
    lr: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    seed: int = 0
    amp: str = "auto"  # auto: bf16 (or fp16 + grad scaler) on a GPU, off on CPU
    workers: int = 2
    eval_chunks: int = 16
    eval_batch_size: int = 4  # clips per validation batch (each with eval_chunks crops)
    # training batches whose average replaces BatchNorm running statistics before each
    # validation (training/batchnorm.py); 0 keeps the running averages of the steps
    bn_stats_batches: int = 64
    crop_frames: Optional[int] = None  # None: the model's native input length
    init: Optional[str] = None  # checkpoint path or pretrained model name
    freeze_backbone: bool = False
    # with freeze_backbone: the last N blocks of the backbone train too (0: the head only)
    unfreeze_blocks: int = 0
    # a frozen backbone's embeddings are computed once per clip and chunk and cached
    # (training/embeddings.py), so an epoch trains the head only; false: run the network
    embedding_cache: bool = True
    embedding_chunks: int = 8  # cached chunks per training clip (an epoch draws one per clip)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # off unless a transform's p > 0
    monitor: str = "auto"  # auto: roc_auc_macro (multi-label) / accuracy (single-label)
    label_smoothing: float = 0.0
    class_weighting: str = "none"
    grad_clip: Optional[float] = None
    max_steps_per_epoch: Optional[int] = None
    compile: bool = False
    channels_last: bool = False
    tensorboard: bool = True

    def validate(self) -> TrainConfig:
        """Check values that a type alone cannot; raises ConfigError naming the key."""
        _check_finite(self)
        if not self.dataset:
            raise ConfigError("config key 'dataset' is required", hint="add `--set dataset=NAME`")
        if not self.model and not self.init:
            raise ConfigError(
                "config key 'model' is required (or 'init' to start from a checkpoint)", hint="see `audiocnn models`"
            )
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule.name", self.schedule.name, SCHEDULES)
        _choice("amp", self.amp, AMP_MODES)
        _choice("monitor", self.monitor, MONITORS)
        _choice("class_weighting", self.class_weighting, CLASS_WEIGHTING)
        if self.task is not None:
            _choice("task", self.task, TASKS)
        for key in ("epochs", "batch_size", "eval_chunks", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key {key!r} must be >= 1, got {getattr(self, key)}")
        if self.workers < 0:
            raise ConfigError(f"config key 'workers' must be >= 0, got {self.workers}")
        if self.unfreeze_blocks < 0 or self.embedding_chunks < 1:
            raise ConfigError(
                f"config keys 'unfreeze_blocks' must be >= 0 and 'embedding_chunks' >= 1, "
                f"got {self.unfreeze_blocks} and {self.embedding_chunks}"
            )
        if self.bn_stats_batches < 0:
            raise ConfigError(f"config key 'bn_stats_batches' must be >= 0, got {self.bn_stats_batches}")
        if self.lr <= 0:
            raise ConfigError(f"config key 'lr' must be > 0, got {self.lr}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"config key 'label_smoothing' must be in [0, 1), got {self.label_smoothing}")
        if self.crop_frames is not None and self.crop_frames < 1:
            raise ConfigError(f"config key 'crop_frames' must be >= 1, got {self.crop_frames}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ConfigError(f"config key 'max_steps_per_epoch' must be >= 1, got {self.max_steps_per_epoch}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"config key 'grad_clip' must be > 0, got {self.grad_clip}")
        s = self.schedule
        if not 0.0 < s.factor < 1.0:
            raise ConfigError(f"config key 'schedule.factor' must be in (0, 1), got {s.factor}")
        if s.patience < 0 or s.warmup_epochs < 0 or s.step_epochs < 1:
            raise ConfigError("config keys schedule.patience/warmup_epochs must be >= 0 and step_epochs >= 1")
        if s.name == "skip" and (not s.sgd_lrs or any(v <= 0 for v in s.sgd_lrs)):
            raise ConfigError(
                f"config key 'schedule.sgd_lrs' must be a non-empty list of positive rates, got {s.sgd_lrs}"
            )
        if self.early_stopping.patience < 1:
            raise ConfigError(f"config key 'early_stopping.patience' must be >= 1, got {self.early_stopping.patience}")
        _check_ranges(self)
        self.augment.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)


#: numpy's global seed must be in [0, 2**32)
MAX_SEED = 2**32 - 1


def _check_finite(obj: Any, prefix: str = "") -> None:
    """No NaN or infinity anywhere: ``lr=nan`` compares False with every bound, so the
    range checks alone would let it through (and training would silently learn nothing)."""
    for f in dataclasses.fields(obj):
        key, value = prefix + f.name, getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_finite(value, key + ".")
            continue
        items = value if isinstance(value, list) else [value]
        for v in items:
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"config key {key!r} must be a finite number, got {value!r}")


def _check_ranges(cfg: TrainConfig) -> None:
    """Ranges of the numeric keys :meth:`TrainConfig.validate` does not check itself."""
    if not 0 <= cfg.seed <= MAX_SEED:
        raise ConfigError(f"config key 'seed' must be in [0, {MAX_SEED}], got {cfg.seed}")
    if not 0.0 <= cfg.momentum < 1.0:
        raise ConfigError(f"config key 'momentum' must be in [0, 1), got {cfg.momentum}")
    if cfg.weight_decay < 0:
        raise ConfigError(f"config key 'weight_decay' must be >= 0, got {cfg.weight_decay}")
    s = cfg.schedule
    if s.min_lr < 0:
        raise ConfigError(f"config key 'schedule.min_lr' must be >= 0, got {s.min_lr}")
    if s.adam_epochs < 0 or s.sgd_epochs < 1:
        raise ConfigError(
            f"config keys 'schedule.adam_epochs' must be >= 0 and 'schedule.sgd_epochs' >= 1, "
            f"got {s.adam_epochs} and {s.sgd_epochs}"
        )
    if cfg.early_stopping.min_delta < 0:
        raise ConfigError(f"config key 'early_stopping.min_delta' must be >= 0, got {cfg.early_stopping.min_delta}")


def _choice(key: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"config key {key!r} must be one of {', '.join(valid)}, got {value!r}")


# -- schema helpers --------------------------------------------------------------------

# Scalar shorthand for nested sections: `--set schedule=plateau` sets schedule.name,
# `--set early_stopping=10` turns early stopping on with that patience, `=false` turns it off.
_SHORTHAND = {"schedule": "name", "early_stopping": "patience"}


def valid_keys(cls: type = TrainConfig, prefix: str = "") -> list[str]:
    """Every addressable key, dotted for nested sections (what the error messages list)."""
    keys = []
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        tp = _field_type(cls, f.name)
        if dataclasses.is_dataclass(tp):
            keys.append(name)
            keys.extend(valid_keys(tp, name + "."))
        else:
            keys.append(name)
    return keys


def _field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _unknown_key(key: str, cls: type, prefix: str) -> ConfigError:
    valid = valid_keys(cls, prefix)
    close = difflib.get_close_matches(prefix + key, valid, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ConfigError(f"unknown config key {prefix + key!r}; {hint}valid keys: {', '.join(valid)}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert a YAML value to the field type; YAML reads `1e-4` as a string, so
    numbers given as strings are accepted where a number is expected."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~", "")):
            return None
        return _coerce(value, args[0], key)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                pass
            else:
                if f.is_integer():
                    return int(f)
        raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key {key!r} must be a string, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a mapping, got {value!r}")
        return {str(k): v for k, v in value.items()}
    return value


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config section {prefix.rstrip('.') or '<top>'!r} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in hints:
            raise _unknown_key(str(key), cls, prefix)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, _expand_shorthand(key, value, prefix), prefix + key + ".")
        else:
            kwargs[key] = _coerce(value, tp, prefix + key)
    return cls(**kwargs)


def _expand_shorthand(key: str, value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if prefix == "" and key == "early_stopping":
        if (
            value is None
            or value is False
            or (isinstance(value, str) and value.lower() in ("false", "off", "no", "null"))
        ):
            return {"enabled": False}
        if value is True or (isinstance(value, str) and value.lower() in ("true", "on", "yes")):
            return {"enabled": True}
        return {"enabled": True, "patience": value}
    if prefix == "" and key in _SHORTHAND:
        return {_SHORTHAND[key]: value}
    raise ConfigError(f"config key {prefix + key!r} must be a mapping, got {value!r}")


def parse_value(text: str, where: str | None = None) -> Any:
    """A `--set` value as a YAML scalar (or flow list/mapping), bounded like a config file
    (see :func:`load_yaml_text`); ``where`` names it in errors (e.g. ``--set lr``)."""
    if not text.strip():
        return None
    where = where or f"value {text[:40] + ('...' if len(text) > 40 else '')!r}"
    try:
        value = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse value {text!r} as YAML ({_yaml_problem(exc)})") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply") from None
    check_yaml_size(value, where)
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` strings to a raw config mapping (before validation)."""
    out = _deep_copy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}", hint="e.g. `--set lr=1e-3`")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        value = parse_value(text, f"--set {key}")
        parts = key.split(".")
        _check_path(parts)
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if not isinstance(child, dict):
                # `schedule: plateau` shorthand already in the file: expand before descending
                child = (
                    _expand_shorthand(part, child, "") if (i == 0 and part in _SHORTHAND and child is not None) else {}
                )
                node[part] = child
            node = child
        node[parts[-1]] = value
    return out


def _check_path(parts: list[str]) -> None:
    cls: Any = TrainConfig
    prefix = ""
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(cls)
        if part not in hints:
            raise _unknown_key(part, cls, prefix)
        tp = hints[part]
        if dataclasses.is_dataclass(tp):
            cls, prefix = tp, prefix + part + "."
            continue
        if i < len(parts) - 1:
            if typing.get_origin(tp) is dict:  # model_kwargs.<anything>
                return
            raise ConfigError(f"config key {prefix + part!r} has no sub-keys (got {'.'.join(parts)!r})")


def check_keys(data: Any, where: str, cls: type = TrainConfig, prefix: str = "") -> None:
    """Unknown keys of a raw config mapping, section by section, without copying or
    expanding any value (so a typo is reported before anything is built from the file)."""
    if not isinstance(data, dict):
        return
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        if key not in hints:
            exc = _unknown_key(str(key), cls, prefix)
            raise ConfigError(f"{where}: {exc.message}") from None
        if dataclasses.is_dataclass(hints[key]):
            check_keys(value, where, hints[key], prefix + f"{key}.")


def _deep_copy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deep_copy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deep_copy(v) for v in d]
    return d


def config_from_mapping(data: dict[str, Any] | None, overrides: list[str] | None = None) -> TrainConfig:
    """Build and validate a config from a raw mapping plus ``--set`` overrides."""
    raw = apply_overrides(data or {}, list(overrides or []))
    return _build(TrainConfig, raw).validate()


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping: plain YAML keeps the
    last one silently, so ``lr: 0.1`` ... ``lr: 0.001`` would train with whichever came last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.get(key)
            except TypeError:  # unhashable key: let SafeLoader report it
                continue
            if first is not None:
                raise _DuplicateKey(key, first, key_node.start_mark.line + 1)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first: int, line: int) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key, self.first, self.line = key, first, line


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, _DuplicateKey):
        return f"duplicate key {exc.key!r}"
    return getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]


def _yaml_error(where: str, exc: yaml.YAMLError) -> ConfigError:
    """One line with the file, line and column of a YAML error."""
    if isinstance(exc, _DuplicateKey):
        return ConfigError(
            f"{where}:{exc.line}: duplicate key {exc.key!r} (first given on line {exc.first})", hint="keep one of them"
        )
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
    return ConfigError(f"{where}{at}: not valid YAML ({_yaml_problem(exc)})")


#: most values (mapping keys, items, scalars) one YAML document or ``--set`` value may
#: hold once its aliases are expanded: a config has about a hundred; nine levels of nine
#: aliases ("billion laughs") would expand to 387 million and take the machine's memory
MAX_YAML_VALUES = 100_000
#: deepest nesting of lists and mappings in a config
MAX_YAML_DEPTH = 64


def check_yaml_size(data: Any, where: str) -> None:
    """Refuse a parsed YAML value whose aliases would expand beyond :data:`MAX_YAML_VALUES`
    values, nest deeper than :data:`MAX_YAML_DEPTH`, or that contains itself (``&a [*a]``).

    The parser shares an aliased value rather than copying it, so parsing is cheap; this
    walk counts the expanded size with each shared value counted once per use but visited
    once, so it stops early and never copies anything.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(obj: Any, depth: int) -> int:
        if not isinstance(obj, (dict, list)):
            return 1
        if id(obj) in sizes:
            return sizes[id(obj)]
        if id(obj) in active:
            raise ConfigError(f"{where}: a YAML alias refers to a value that contains it", hint="write the value out")
        if depth > MAX_YAML_DEPTH:
            raise ConfigError(f"{where}: lists and mappings nested more than {MAX_YAML_DEPTH} levels deep")
        active.add(id(obj))
        n = 1
        for item in [*obj.keys(), *obj.values()] if isinstance(obj, dict) else obj:
            n += size(item, depth + 1)
            if n > MAX_YAML_VALUES:
                raise ConfigError(
                    f"{where}: YAML aliases expand to more than {MAX_YAML_VALUES:,} values",
                    hint="write the values out; a config needs no aliases",
                )
        active.discard(id(obj))
        sizes[id(obj)] = n
        return n

    size(data, 0)


def load_yaml_text(text: str, where: str = "<string>", check: Any = None) -> Any:
    """Parse YAML with duplicate keys rejected and aliases bounded (:func:`check_yaml_size`);
    ConfigError says where it is wrong. ``check(data, where)`` runs before the size check
    (e.g. :func:`check_keys`, so an unknown key is the error a user sees first)."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise _yaml_error(where, exc) from None
    except RecursionError:
        raise ConfigError(f"{where}: lists and mappings nested too deeply") from None
    if check is not None:
        check(data, where)
    check_yaml_size(data, where)
    return data


def read_yaml(path: str | os.PathLike, check: Any = None) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file", hint="see the files in configs/")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
            hint="save the file as UTF-8",
        ) from None
    data = load_yaml_text(text, str(path), check)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping of keys to values")
    return data


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> TrainConfig:
    """Read ``path`` (YAML), apply ``overrides`` and validate."""
    data = read_yaml(path, check_keys)
    try:
        return config_from_mapping(data, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.message}", hint=exc.hint) from None


def save_config(config: TrainConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config atomically."""
    path = Path(path)
    atomic_write_bytes(path, config.to_yaml().encode("utf-8"))
    return path
