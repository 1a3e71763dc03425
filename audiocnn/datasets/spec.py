"""The types a dataset module declares itself with: its published files (:class:`Remote`),
the facts and the collect step (:class:`DatasetSpec`), and what flows between it and the
shared prepare step (:class:`PrepareContext`, :class:`Candidate`, :class:`Collected`).

Nothing here fetches or registers anything: :mod:`.acquire` gets a spec's files,
:mod:`.registry` names the specs, :mod:`.prepare` runs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from audiocnn.datasets.archive_checks import DEFAULT_MAX_MEMBER
from audiocnn.datasets.checksums import ALGORITHMS

#: The exclusion reason of a clip the metadata lists but the audio lacks.
MISSING_FROM_ARCHIVE = "missing from the archive"


@dataclass(frozen=True)
class Remote:
    """One published file of a dataset.

    ``size`` is the exact byte count when the publisher states it (checked after
    download); ``approx_size`` is what people read in listings. ``group`` names a
    multi-part archive: remotes sharing a group are concatenated in filename order.
    ``extract`` is False for files used as they are (CSV annotations).
    """

    url: str
    filename: str
    checksum: str | None
    algorithm: str = "md5"
    size: int | None = None
    approx_size: str = ""
    extract: bool = True
    group: str | None = None

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"{self.filename}: unknown checksum algorithm {self.algorithm!r}")


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
    #: :class:`~audiocnn.datasets.archive_checks.MemberCheck`, what stops an archive bomb).
    max_member_size: ClassVar[int] = DEFAULT_MAX_MEMBER

    def allowed_tasks(self) -> tuple[str, ...]:
        return self.tasks or (self.task,)

    def acquire(self, ctx: PrepareContext) -> None:  # pragma: no cover - abstract
        """Make the dataset's files available under ``ctx`` (download/verify/extract, or
        index a folder in place). Datasets published as remote files inherit
        :class:`audiocnn.datasets.acquire.RemoteDataset`'s."""
        raise NotImplementedError

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
