"""The manifest: the one description of a prepared dataset that everything downstream reads.

Format: JSON Lines, ``data/<dataset>/manifest.jsonl``. Line 1 is the header object
(``"type": "header"``); every other line is one clip (``"type": "clip"``). JSON Lines
rather than Parquet: no extra dependency, streams line by line for 100k-clip datasets,
diffs and greps well, and is written atomically in one go.

Header: ``name``, ``dataset`` (registry name, e.g. ``gtzan`` or ``folder``), ``task``
(``single-label`` | ``multi-label``), ``labels`` (the vocabulary in its fixed order),
``split_scheme``, ``audio_root`` (clip paths are relative to it; itself relative to the
manifest's folder, or absolute for a user's folder left in place), ``excluded``
(``[{"id", "path", "reason"}]``), ``version`` (manifest format, 1), ``created_by``.

Clip: ``id``, ``path``, ``duration`` (s), ``sample_rate`` (native), ``labels`` (list of
label names), ``split`` (``train``/``valid``/``test``), ``integrity``
(``{"size": bytes, "frames": n}`` — cheap to re-check, catches truncation).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from audiocnn import __version__
from audiocnn.constants import SINGLE_LABEL, TASKS
from audiocnn.errors import DatasetError
from audiocnn.fileio import atomic_write_bytes, json_text

MANIFEST_NAME = "manifest.jsonl"
MANIFEST_VERSION = 1
SPLITS = ("train", "valid", "test")


@dataclass
class Clip:
    id: str
    path: str
    duration: float
    sample_rate: int
    labels: list[str]
    split: str
    integrity: dict[str, Any] = field(default_factory=dict)


@dataclass
class Manifest:
    name: str
    dataset: str
    task: str
    labels: list[str]
    clips: list[Clip]
    split_scheme: str = "default"
    audio_root: str = "raw"
    excluded: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    # Folder holding manifest.jsonl; set by read_manifest / write_manifest.
    root: Path | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise DatasetError(f"manifest {self.name!r}: task must be one of {TASKS}, got {self.task!r}")
        if len(set(self.labels)) != len(self.labels):
            raise DatasetError(f"manifest {self.name!r}: duplicate label names")

    # -- queries -----------------------------------------------------------------------
    @property
    def label_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.labels)}

    def split(self, name: str) -> list[Clip]:
        if name not in SPLITS:
            raise DatasetError(f"unknown split {name!r}; valid: {', '.join(SPLITS)}")
        return [c for c in self.clips if c.split == name]

    def split_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(SPLITS, 0)
        for c in self.clips:
            counts[c.split] = counts.get(c.split, 0) + 1
        return counts

    def label_counts(self) -> dict[str, dict[str, int]]:
        """Clips of each label in each split: ``{label: {"train": n, "valid": n, "test": n}}``."""
        counts = {label: dict.fromkeys(SPLITS, 0) for label in self.labels}
        for c in self.clips:
            for label in c.labels:
                if label in counts:
                    counts[label][c.split] = counts[label].get(c.split, 0) + 1
        return counts

    def audio_dir(self) -> Path:
        root = Path(self.audio_root)
        if not root.is_absolute():
            if self.root is None:
                raise DatasetError(f"manifest {self.name!r} has no location to resolve {root}")
            root = self.root / root
        return root

    def audio_path(self, clip: Clip) -> Path:
        return self.audio_dir() / clip.path

    def targets(self, clip: Clip) -> list[int]:
        """Label indices of ``clip`` in vocabulary order."""
        idx = self.label_index
        return sorted(idx[name] for name in clip.labels)

    def info(self) -> dict[str, Any]:
        """The ``audiocnn info --format json`` object (``partial`` only for a part of a dataset)."""
        out = {
            "name": self.name,
            "task": self.task,
            "labels": list(self.labels),
            "splits": self.split_counts(),
            "label_counts": self.label_counts(),
            "excluded": [{"id": e["id"], "reason": e["reason"]} for e in self.excluded],
        }
        if self.extra.get("partial"):
            out["partial"] = self.extra["partial"]
        return out


def readable_label(name: str) -> str:
    """How a label reads: MTG-Jamendo's ``genre---rock`` shows as ``genre:rock`` (the
    manifest keeps the dataset's own form); other labels are shown as they are."""
    category, sep, tag = name.partition("---")
    return f"{category}:{tag}" if sep and category and tag else name


def manifest_path(dataset_dir: str | os.PathLike) -> Path:
    return Path(dataset_dir) / MANIFEST_NAME


def read_manifest_header(dataset_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The header of ``dataset_dir``'s manifest (its first line only: cheap on a 100k-clip
    manifest), or None when there is none or it does not read as one."""
    p = manifest_path(dataset_dir)
    try:
        with open(p, encoding="utf-8") as fh:
            header = json.loads(fh.readline())
    except (OSError, json.JSONDecodeError):
        return None
    return header if header.get("type") == "header" else None


def write_manifest(manifest: Manifest, dataset_dir: str | os.PathLike) -> Path:
    """Validate and write atomically (temp file, fsync, rename; the temp file is removed
    when the write fails). A clip path that is not valid UTF-8 (a POSIX file name held as
    surrogate escapes) is written as the JSON escapes ``\\udcXX`` and read back as the same
    name (:func:`audiocnn.fileio.json_text`)."""
    dataset_dir = Path(dataset_dir)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    _validate(manifest)
    header = {
        "type": "header",
        "version": MANIFEST_VERSION,
        "name": manifest.name,
        "dataset": manifest.dataset,
        "task": manifest.task,
        "labels": manifest.labels,
        "split_scheme": manifest.split_scheme,
        "audio_root": manifest.audio_root,
        "excluded": manifest.excluded,
        "extra": manifest.extra,
        "created_by": f"audiocnn {__version__}",
    }
    lines = [json_text(header)] + [json_text({"type": "clip", **asdict(clip)}) for clip in manifest.clips]
    path = manifest_path(dataset_dir)
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))
    manifest.root = dataset_dir
    return path


def not_prepared(
    dataset_dir: str | os.PathLike, prepared: Iterable[str] | None = None, builtin: bool | None = None
) -> DatasetError:
    """The error of a dataset folder without a manifest: it names the absolute data folder
    looked in (the working folder matters for the default ``./data``), the datasets
    ``prepared`` there, and how to prepare it (``builtin``: whether the name is a built-in
    dataset's; None: not known here) or point at another data folder."""
    d = Path(dataset_dir).absolute()
    known = f" (prepared there: {', '.join(prepared) or 'none'})" if prepared is not None else ""
    how = {True: f"`audiocnn prepare {d.name}`", False: "`audiocnn prepare folder --source DIR --name NAME`"}.get(
        builtin, f"`audiocnn prepare {d.name}` (or `audiocnn prepare folder --source DIR --name {d.name}`)"
    )
    return DatasetError(
        f"{d.name} is not prepared under {d.parent}{known}",
        hint=f"run {how}, or point at the data folder that holds it with --data-dir DIR or AUDIOCNN_DATA_DIR=DIR",
    )


def read_manifest(dataset_dir_or_file: str | os.PathLike) -> Manifest:
    p = Path(dataset_dir_or_file)
    path = p if p.is_file() else manifest_path(p)
    if not path.is_file():
        raise not_prepared(p)
    clips: list[Clip] = []
    header: dict[str, Any] | None = None
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{lineno}: corrupt manifest line ({exc.msg})") from None
            kind = obj.pop("type", None)
            if lineno == 1:
                if kind != "header":
                    raise DatasetError(f"{path}: first line is not a manifest header")
                header = obj
                continue
            if kind != "clip":
                raise DatasetError(f"{path}:{lineno}: expected a clip record, got type {kind!r}")
            try:
                clips.append(Clip(**obj))
            except TypeError as exc:
                raise DatasetError(f"{path}:{lineno}: bad clip record ({exc})") from None
    if header is None:
        raise DatasetError(f"{path}: empty manifest")
    if header.get("version") != MANIFEST_VERSION:
        raise DatasetError(f"{path}: manifest version {header.get('version')} is not supported")
    m = Manifest(
        name=header["name"],
        dataset=header.get("dataset", header["name"]),
        task=header["task"],
        labels=list(header["labels"]),
        clips=clips,
        split_scheme=header.get("split_scheme", "default"),
        audio_root=header.get("audio_root", "raw"),
        excluded=list(header.get("excluded", [])),
        extra=dict(header.get("extra", {})),
        root=path.parent,
    )
    return m


def _validate(m: Manifest) -> None:
    vocab = set(m.labels)
    seen: set[str] = set()
    for c in m.clips:
        if c.id in seen:
            raise DatasetError(f"manifest {m.name!r}: duplicate clip id {c.id!r}")
        seen.add(c.id)
        if c.split not in SPLITS:
            raise DatasetError(f"manifest {m.name!r}: clip {c.id!r} has unknown split {c.split!r}")
        unknown = [lab for lab in c.labels if lab not in vocab]
        if unknown:
            raise DatasetError(f"manifest {m.name!r}: clip {c.id!r} has labels outside the vocabulary: {unknown}")
        if m.task == SINGLE_LABEL and len(c.labels) != 1:
            raise DatasetError(f"manifest {m.name!r}: single-label clip {c.id!r} has {len(c.labels)} labels")


def iter_clip_ids(clips: Iterable[Clip]) -> list[str]:
    return [c.id for c in clips]
