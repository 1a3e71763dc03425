"""Pretrained models: names, where their checkpoints live, importing them from external files.

Pretrained checkpoints are ordinary audiocnn checkpoints kept in the user's cache folder
(:func:`audiocnn.constants.default_cache_dir`, shared by every project and working
folder) as ``pretrained/<name>-<content key>.safetensors``: the key names the weights and
tag lists imported (:func:`audiocnn.pretrained.catalog.content_key`), so another version
of the weights never reads a stale import. The four names come from the ``musicnn``
package (ISC license), converted from its TensorFlow checkpoints by
:func:`import_musicnn`: automatically the first time a name is used, when the package is
installed. Only converting loads torch (:mod:`audiocnn.pretrained.convert`): listing the
names and resolving one already imported, a checkpoint file or a run folder do not.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from audiocnn.constants import BEST_CHECKPOINT_NAME, DEFAULT_MODEL, PRETRAINED_DIR_NAME, default_cache_dir
from audiocnn.errors import CheckpointError
from audiocnn.pretrained.catalog import (
    INSTALL_HINT,
    MUSICNN_LICENSE,
    MUSICNN_MODELS,
    content_key,
    import_file_name,
    installed_package_dir,
    open_source,
)

DEFAULT_PRETRAINED = DEFAULT_MODEL  # what `audiocnn tag` uses without --model
log = logging.getLogger("audiocnn.pretrained")


class PretrainedNotFound(CheckpointError):
    """A pretrained name whose checkpoint is not imported and cannot be imported here."""


def pretrained_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache>/pretrained``: the imports of every pretrained model."""
    return Path(default_cache_dir() if cache_dir is None else cache_dir) / PRETRAINED_DIR_NAME


def pretrained_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The imported checkpoint of ``name`` that :func:`resolve_model` uses, or None: with
    the musicnn package installed, the import of the installed weights; without it, the
    newest import in the cache (e.g. one made ``--from`` a downloaded wheel)."""
    folder = pretrained_dir(cache_dir)
    if installed_package_dir() is not None:
        path = folder / import_file_name(name, content_key(open_source(None), name))
        return path if path.is_file() else None
    found = sorted(folder.glob(import_file_name(name, "*")), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def is_pretrained_name(name: str) -> bool:
    return name in MUSICNN_MODELS


def list_pretrained(cache_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """One dict per pretrained name: name, model, dataset, description, license, source
    package, whether it is ``imported`` and, when it is, the ``path`` of its checkpoint."""
    out = []
    for spec in MUSICNN_MODELS.values():
        path = pretrained_path(spec.name, cache_dir)
        out.append(
            {
                "name": spec.name,
                "model": spec.model,
                "dataset": spec.dataset,
                "description": spec.description,
                "license": MUSICNN_LICENSE,
                "package": "musicnn",
                "default": spec.name == DEFAULT_PRETRAINED,
                "imported": path is not None,
                "path": str(path) if path is not None else None,
            }
        )
    return out


def import_musicnn(
    source: str | os.PathLike | None,
    names: list[str] | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
) -> list[Path]:
    """Convert musicnn's pretrained models into ``<cache>/pretrained/<name>-<key>.safetensors``.

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
    # deferred: converting loads torch; listing and resolving must not
    from audiocnn.pretrained.convert import import_models

    src = open_source(Path(source) if source is not None else None)
    return import_models(src, pretrained_dir(cache_dir), wanted)


def resolve_model(name_or_path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """Checkpoint file for a pretrained name, a checkpoint path, or a training run folder.

    A pretrained name not in the cache yet is imported now from the installed musicnn
    package, once for every project (``cache_dir``: default
    :func:`audiocnn.constants.default_cache_dir`); without the package,
    :class:`PretrainedNotFound` says exactly what to run.
    """
    text = str(name_or_path)
    if text in MUSICNN_MODELS:
        path = pretrained_path(text, cache_dir)
        if path is not None:
            return path
        if installed_package_dir() is None:
            raise PretrainedNotFound(
                f"pretrained model {text!r} is not imported into {pretrained_dir(cache_dir)} and the "
                f"musicnn package is not installed",
                hint=INSTALL_HINT,
            )
        log.info("importing %s from the musicnn package into %s (once)", text, pretrained_dir(cache_dir))
        (path,) = import_musicnn(None, [text], cache_dir=cache_dir)
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
