"""Dataset registry: one :class:`DatasetSpec` subclass per dataset module.

A spec declares the facts (remotes with checksums, license, citation, task, classes,
split schemes) and knows how to turn the extracted files into clip candidates. The
shared machinery in :mod:`audiocnn.datasets.prepare` downloads, probes and writes the
manifest, so a dataset module holds only what is particular to that dataset.
"""

from __future__ import annotations

import difflib
import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from audiocnn.datasets.acquire import acquire_remotes
from audiocnn.datasets.download import DEFAULT_MAX_MEMBER, Remote
from audiocnn.errors import DatasetError, UsageError

log = logging.getLogger("audiocnn.datasets")

#: The exclusion reason of a clip the metadata lists but the audio lacks.
MISSING_FROM_ARCHIVE = "missing from the archive"


@dataclass
class Candidate:
    """A clip before probing: where its audio is, its labels, and its split."""

    id: str
    path: str  # relative to the audio root
    labels: list[str]
    split: str


@dataclass
class Collected:
    """What a dataset module hands back to the shared prepare step."""

    labels: list[str]
    candidates: list[Candidate]
    audio_root: str = "raw"  # relative to the dataset folder, or absolute
    excluded: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    task: str | None = None  # overrides the spec's task (folder: decided by the labels)


@dataclass
class PrepareContext:
    """Options and folders of one ``prepare`` run, passed to the dataset module."""

    name: str
    dataset_dir: Path
    sources: list[str]
    mirror: str | None
    split_scheme: str
    task: str
    skip_checksum: bool = False
    force: bool = False
    progress: bool = True
    labels_file: Path | None = None
    seed: int = 0
    task_explicit: bool = False
    #: ``--max-clips N``: fetch only what N clips need (None: the whole dataset)
    max_clips: int | None = None
    #: ``--variant``: which published form of the audio (e.g. MTG-Jamendo ``audio-low``)
    variant: str | None = None
    #: ``--download-missing``: fetch what a local --source lacks (else that is an error)
    download_missing: bool = False
    #: True while a dataset module lists its clips from the metadata alone (no audio yet),
    #: so that a part of the dataset can be chosen before any audio is fetched
    listing: bool = False
    #: the clip ids a partial prepare fetched (None: every clip)
    selected: set[str] | None = None
    selected_paths: set[str] = field(default_factory=set)
    #: clips per split the metadata lists, when only a part is fetched
    listed: dict[str, int] = field(default_factory=dict)
    # filled by acquire(): remote filename -> local file (for files used as they are)
    files: dict[str, Path] = field(default_factory=dict)
    # set by acquire() when the layout was found already extracted somewhere (absolute)
    audio_base: Path | None = None

    @property
    def raw_dir(self) -> Path:
        return self.dataset_dir / "raw"

    @property
    def downloads_dir(self) -> Path:
        return self.dataset_dir / "downloads"

    @property
    def state_dir(self) -> Path:
        return self.dataset_dir / ".state"


class DatasetSpec:
    """Base class of dataset modules. Subclasses set the class attributes below."""

    name: ClassVar[str]
    title: ClassVar[str]
    task: ClassVar[str]
    tasks: ClassVar[tuple[str, ...]] = ()
    classes: ClassVar[int | None] = None
    split_schemes: ClassVar[tuple[str, ...]] = ("official",)
    default_split_scheme: ClassVar[str] = "official"
    remotes: ClassVar[tuple[Remote, ...]] = ()
    license: ClassVar[str] = ""
    #: A few words of the license for the `audiocnn datasets` table.
    license_short: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    homepage: ClassVar[str] = ""
    approx_size: ClassVar[str] = ""
    #: Printed when the registry URL fails and no --source was given.
    unavailable_hint: ClassVar[str | None] = None
    #: Clip id -> reason; always excluded (known broken in the distribution).
    always_exclude: ClassVar[dict[str, str]] = {}
    #: Clip id -> note added to the reason when the clip fails to decode.
    known_bad: ClassVar[dict[str, str]] = {}
    #: True when the user must name the prepared folder (``--name``).
    needs_name: ClassVar[bool] = False
    #: True when the dataset indexes the --source folder in place (its path is part of what
    #: makes a prepared copy current).
    indexes_source: ClassVar[bool] = False
    #: Published forms of the audio (``--variant``); the first is the default.
    variants: ClassVar[tuple[str, ...]] = ()
    #: How ``--max-clips`` cuts the download: ``"zip"`` (members of the group named by
    #: ``audio_group`` fetched with HTTP Range), ``"custom"`` (the module's own acquire
    #: does it), or None (cannot be cut; ``partial_refusal`` says why).
    partial: ClassVar[str | None] = None
    audio_group: ClassVar[str | None] = None
    partial_refusal: ClassVar[str] = ""
    #: The largest file any of the dataset's archives holds, with room to spare: a member
    #: declaring more is refused before anything is extracted (with the ratio bound of
    #: :class:`~audiocnn.datasets.download.MemberCheck`, what stops an archive bomb).
    max_member_size: ClassVar[int] = DEFAULT_MAX_MEMBER

    def allowed_tasks(self) -> tuple[str, ...]:
        return self.tasks or (self.task,)

    def acquire(self, ctx: PrepareContext) -> None:
        """Make the dataset's files available (download/verify/extract)."""
        acquire_remotes(self, ctx)

    def locate_layout(self, folder: Path) -> Path | None:
        """Return the folder holding the extracted layout under ``folder``, if any.

        Lets ``--source DIR`` point at an already-extracted copy.
        """
        return None

    def collect(self, ctx: PrepareContext) -> Collected:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "task": self.task,
            "tasks": list(self.allowed_tasks()),
            "classes": self.classes,
            "split_schemes": list(self.split_schemes),
            "default_split_scheme": self.default_split_scheme,
            "download_size": self.approx_size,
            "license": self.license,
            "citation": self.citation,
            "homepage": self.homepage,
            "variants": list(self.variants),
            "partial": self.partial is not None,
            "remotes": [
                {"url": r.url, "filename": r.filename, "checksum": r.checksum, "algorithm": r.algorithm}
                for r in self.remotes
            ],
        }


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
