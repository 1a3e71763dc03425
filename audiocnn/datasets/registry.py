"""Dataset registry: the names of the dataset modules' :class:`DatasetSpec` subclasses.

A spec (:mod:`.spec`) declares the facts (remotes with checksums, license, citation,
task, classes, split schemes) and knows how to turn the extracted files into clip
candidates. The shared machinery in :mod:`audiocnn.datasets.prepare` downloads, probes
and writes the manifest, so a dataset module holds only what is particular to that
dataset. The registry rejects a duplicate name and lists the valid ones on a typo; it
also finds the resources (split lists, tag lists) shipped with the package.
"""

from __future__ import annotations

import difflib
import importlib
import logging
from pathlib import Path

from audiocnn.datasets.spec import DatasetSpec
from audiocnn.errors import DatasetError, UsageError

log = logging.getLogger("audiocnn.datasets")

_REGISTRY: dict[str, DatasetSpec] = {}
_BUILTIN_MODULES = ("gtzan", "mtat", "fma", "mtg_jamendo", "msd", "folder")
_loaded = False


def register_dataset(cls: type[DatasetSpec]) -> type[DatasetSpec]:
    """Class decorator adding a dataset; a second dataset with the same name is an error."""
    name = getattr(cls, "name", None)
    if not name or not isinstance(name, str):
        raise DatasetError(f"{cls.__name__}: a dataset needs a string `name`")
    if name in _REGISTRY and type(_REGISTRY[name]) is not cls:
        raise DatasetError(f"dataset name {name!r} is already registered by {type(_REGISTRY[name]).__name__}")
    _REGISTRY[name] = cls()
    return cls


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    for mod in _BUILTIN_MODULES:
        importlib.import_module(f"audiocnn.datasets.{mod}")
    _loaded = True


def list_datasets() -> list[str]:
    """Names of every known dataset, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def get_dataset(name: str) -> DatasetSpec:
    """The spec for ``name``; an unknown name lists the valid ones and the closest match."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        pass
    names = sorted(_REGISTRY)
    close = difflib.get_close_matches(name.lower(), names, n=1, cutoff=0.5)
    suggestion = f" (did you mean {close[0]!r}?)" if close else ""
    raise UsageError(
        f"unknown dataset {name!r}{suggestion}; known datasets: {', '.join(names)}",
        hint="run `audiocnn datasets` for the list",
    )


def resource_path(*parts: str) -> Path:
    """Path of a file shipped in ``audiocnn/datasets/resources``."""
    return Path(__file__).parent.joinpath("resources", *parts)


def read_resource_lines(*parts: str) -> list[str]:
    p = resource_path(*parts)
    if not p.is_file():
        raise DatasetError(f"{p}: packaged resource is missing; the installation is incomplete")
    return [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
