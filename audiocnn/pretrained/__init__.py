"""Pretrained models: names, where their checkpoints live, importing them from external files.

Pretrained checkpoints are ordinary audiocnn checkpoints stored as
``<data_dir>/pretrained/<name>.safetensors``. The four names come from the ``musicnn``
package (ISC license), converted from its TensorFlow checkpoints by
:func:`import_musicnn` — automatically the first time a name is used, when the package is
installed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from audiocnn.constants import BEST_CHECKPOINT_NAME, DEFAULT_MODEL, PRETRAINED_DIR_NAME
from audiocnn.errors import CheckpointError
from audiocnn.pretrained.musicnn import (
    INSTALL_HINT,
    MUSICNN_LICENSE,
    MUSICNN_MODELS,
    import_models,
    installed_package_dir,
    open_source,
)

DEFAULT_PRETRAINED = DEFAULT_MODEL  # what `audiocnn tag` uses without --model


class PretrainedNotFound(CheckpointError):
    """A pretrained name whose checkpoint is not imported and cannot be imported here."""


def pretrained_dir(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / PRETRAINED_DIR_NAME


def pretrained_path(name: str, data_dir: str | os.PathLike) -> Path:
    return pretrained_dir(data_dir) / f"{name}.safetensors"


def is_pretrained_name(name: str) -> bool:
    return name in MUSICNN_MODELS


def list_pretrained(data_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """One dict per pretrained name: name, model, dataset, description, license, source
    package and, when ``data_dir`` is given, ``path`` and whether it is ``imported``."""
    out = []
    for spec in MUSICNN_MODELS.values():
        row: dict[str, Any] = {
            "name": spec.name,
            "model": spec.model,
            "dataset": spec.dataset,
            "description": spec.description,
            "license": MUSICNN_LICENSE,
            "package": "musicnn",
            "default": spec.name == DEFAULT_PRETRAINED,
        }
        if data_dir is not None:
            path = pretrained_path(spec.name, data_dir)
            row["path"] = str(path)
            row["imported"] = path.is_file()
        out.append(row)
    return out


def import_musicnn(
    source: str | os.PathLike | None,
    data_dir: str | os.PathLike,
    names: list[str] | None = None,
) -> list[Path]:
    """Convert musicnn's pretrained models into ``<data_dir>/pretrained/<name>.safetensors``.

    ``source``: the musicnn package folder (installed or unpacked), or its wheel/sdist file;
    ``None`` uses the installed package. ``names`` defaults to all four. Re-running
    overwrites the checkpoints atomically.
    """
    wanted = list(MUSICNN_MODELS) if names is None else list(names)
    unknown = [n for n in wanted if n not in MUSICNN_MODELS]
    if unknown:
        raise CheckpointError(
            f"unknown pretrained model(s) {', '.join(unknown)}; musicnn provides {', '.join(MUSICNN_MODELS)}"
        )
    src = open_source(Path(source) if source is not None else None)
    return import_models(src, pretrained_dir(data_dir), wanted)


def resolve_model(name_or_path: str | os.PathLike, data_dir: str | os.PathLike) -> Path:
    """Checkpoint file for a pretrained name, a checkpoint path, or a training run folder.

    A pretrained name not imported yet is imported now from the installed musicnn package;
    without it, :class:`PretrainedNotFound` says exactly what to run.
    """
    text = str(name_or_path)
    if text in MUSICNN_MODELS:
        path = pretrained_path(text, data_dir)
        if path.is_file():
            return path
        if installed_package_dir() is None:
            raise PretrainedNotFound(
                f"pretrained model {text!r} is not imported into {pretrained_dir(data_dir)} and the "
                f"musicnn package is not installed",
                hint=INSTALL_HINT,
            )
        import_musicnn(None, data_dir, [text])
        return path
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if (path / BEST_CHECKPOINT_NAME).is_file():
            return path / "best.safetensors"
        raise CheckpointError(f"{path}: folder holds no best.safetensors checkpoint")
    if path.suffix in (".safetensors", ".pt", ".ckpt") or os.sep in text or "/" in text:
        raise CheckpointError(f"{path}: no such checkpoint file", hint="see `audiocnn pretrained list`")
    names = ", ".join(MUSICNN_MODELS)
    raise CheckpointError(
        f"{text}: not a pretrained model name ({names}) nor an existing checkpoint file",
        hint="see `audiocnn pretrained list`",
    )


__all__ = [
    "DEFAULT_PRETRAINED",
    "PretrainedNotFound",
    "import_musicnn",
    "is_pretrained_name",
    "list_pretrained",
    "pretrained_dir",
    "pretrained_path",
    "resolve_model",
]
