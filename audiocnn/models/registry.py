"""Model registry: ``@register_model``, ``create_model``, ``list_models`` (timm's pattern).

Each entry is a class derived from :class:`audiocnn.models.base.TaggingModel` whose
``spec`` class attribute declares input kind, native input length, sample rate, default
front-end and paper reference. The family modules register themselves when
``audiocnn.models`` is imported (its ``__init__`` imports them all, below this module).
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

from audiocnn.constants import MULTI_LABEL, TASKS
from audiocnn.errors import ModelError
from audiocnn.fileio import atomic_write_bytes
from audiocnn.models.base import count_parameters
from audiocnn.zoo import ZOO_TABLE

_REGISTRY: dict[str, type] = {}

T = TypeVar("T", bound=type)


def register_model(name: str) -> Callable[[T], T]:
    """Class decorator adding a model family under ``name``; duplicate names are an error."""

    def deco(cls: T) -> T:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ModelError(f"model name {name!r} is already registered by {_REGISTRY[name].__name__}")
        _REGISTRY[name] = cls
        cls.registry_name = name  # type: ignore[attr-defined]
        return cls

    return deco


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def get_model_class(name: str) -> type:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ModelError(
            f"unknown model {name!r}; {hint}valid names: {', '.join(sorted(_REGISTRY))}",
            hint="see `audiocnn models`",
        ) from None


def create_model(name: str, num_classes: int, task: str = MULTI_LABEL, **kwargs: Any):
    """Build model ``name`` with a ``num_classes``-way head for ``task``.

    ``kwargs`` override the paper's hyper-parameters (see each model's docstring).
    """
    if task not in TASKS:
        raise ModelError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if int(num_classes) < 1:
        raise ModelError(f"num_classes must be >= 1, got {num_classes}")
    cls = get_model_class(name)
    try:
        return cls(num_classes=int(num_classes), task=task, **kwargs)
    except TypeError as exc:
        raise ModelError(f"bad arguments for model {name!r}: {exc}") from None


def model_info(name: str, num_classes: int = 50) -> dict[str, Any]:
    """What ``audiocnn models`` prints for one model (built with its paper defaults).

    Built on the ``meta`` device where possible, so counting parameters of the whole zoo
    allocates no weights.
    """
    try:
        with torch.device("meta"):
            model = create_model(name, num_classes=num_classes)
    except (NotImplementedError, RuntimeError):  # a module that needs real tensors to build
        model = create_model(name, num_classes=num_classes)
    spec = model.spec
    return {
        "name": name,
        "input_kind": spec.input_kind,
        "input_length": model.input_length,
        "input_seconds": round(model.input_length / model.sample_rate, 3),
        "sample_rate": model.sample_rate,
        "input_frames": model.input_frames,
        "length_policy": model.length_policy,
        "min_input_length": model.min_input_length,
        "num_outputs": num_classes,
        "parameters": count_parameters(model),
        "reference": spec.reference,
        "frontend": model.frontend_config.to_dict(),
    }


def describe_models(num_classes: int = 50) -> list[dict[str, Any]]:
    """:func:`model_info` for every registered model, sorted by name."""
    return [model_info(name, num_classes) for name in list_models()]


def builtin_models() -> list[str]:
    """The registered models that audiocnn itself defines (not a test's or a plugin's)."""
    return [n for n in list_models() if _REGISTRY[n].__module__.startswith("audiocnn.models.")]


def zoo_table() -> list[dict[str, Any]]:
    """The rows of :data:`audiocnn.zoo.ZOO_TABLE`: :func:`model_info` of every built-in
    model with the parameter count split into a base and a count per output (it is
    linear in the outputs)."""
    rows = []
    for name in builtin_models():
        one, two = model_info(name, 1), model_info(name, 2)
        per = two["parameters"] - one["parameters"]
        row = {k: v for k, v in one.items() if k not in ("num_outputs", "parameters")}
        rows.append({**row, "parameters_base": one["parameters"] - per, "parameters_per_output": per})
    return rows


def write_zoo_table(path: Path = ZOO_TABLE) -> Path:
    """Write the zoo table (after a model changes:
    ``python -c "from audiocnn.models.registry import write_zoo_table; write_zoo_table()"``)."""
    atomic_write_bytes(path, (json.dumps(zoo_table(), indent=1) + "\n").encode("utf-8"))
    return path
