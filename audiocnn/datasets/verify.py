"""``verify``: re-check a prepared dataset's clips against the manifest's integrity record,
and say the command that prepares it again when something is missing or corrupt."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audiocnn import workers
from audiocnn.datasets import probe as _probe
from audiocnn.datasets.info import prepared_dataset_dir
from audiocnn.datasets.manifest import Manifest, read_manifest
from audiocnn.datasets.registry import get_dataset, list_datasets
from audiocnn.errors import next_call


@dataclass
class VerifyReport:
    """Result of :func:`verify_dataset`: missing and corrupt files kept apart."""

    name: str
    checked: int
    missing: list[dict[str, str]] = field(default_factory=list)
    corrupt: list[dict[str, str]] = field(default_factory=list)
    full: bool = False
    #: what to do when something is missing or corrupt (the call that prepares it again)
    fix: str = ""

    @property
    def ok(self) -> bool:
        return not self.missing and not self.corrupt

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "checked": self.checked,
            "ok": self.ok,
            "full": self.full,
            "missing": self.missing,
            "corrupt": self.corrupt,
            "fix": self.fix,
        }


def verify_dataset(
    data_dir: str | os.PathLike,
    name: str,
    *,
    jobs: int | None = 1,
    full: bool = False,
    progress: bool = False,
) -> VerifyReport:
    """Re-check every clip against the manifest's integrity record.

    Quick mode: file exists, size matches, header opens. ``full`` also decodes every
    frame and compares the frame count.
    """
    manifest = read_manifest(prepared_dataset_dir(data_dir, name))
    args = [(str(manifest.audio_path(c)), c.integrity, full) for c in manifest.clips]
    results = _probe.run_checks(_probe.check_clip_args, args, workers.resolve_jobs(jobs), f"verifying {name}", progress)
    report = VerifyReport(name=name, checked=len(args), full=full, fix=_fix_hint(manifest))
    for clip, res in zip(manifest.clips, results, strict=True):
        if res["status"] == "missing":
            report.missing.append({"id": clip.id, "path": clip.path})
        elif res["status"] == "corrupt":
            report.corrupt.append({"id": clip.id, "path": clip.path, "reason": res["reason"]})
    return report


def reprepare_call(manifest: Manifest, source: str | None = None) -> str:
    """The call (:func:`audiocnn.errors.next_call`) that prepares ``manifest``'s dataset
    again as it was prepared: a built-in one by its name; a user's folder (or previews)
    from its ``source`` (or the one given), under its ``dataset_name``."""
    spec = get_dataset(manifest.dataset) if manifest.dataset in list_datasets() else None
    if spec is None:
        return next_call("prepare", manifest.name, force=True)
    args: dict[str, Any] = {}
    if spec.needs_name or spec.indexes_source:
        args["source"] = source or str(manifest.extra.get("source") or manifest.audio_dir())
    if manifest.extra.get("labels_file"):
        args["labels_file"] = str(manifest.extra["labels_file"])
    if spec.needs_name:
        args["dataset_name"] = manifest.name
    if manifest.split_scheme != spec.default_split_scheme:
        args["split_scheme"] = manifest.split_scheme
    if manifest.task != spec.task:
        args["task"] = manifest.task
    if manifest.extra.get("seed"):
        args["seed"] = manifest.extra["seed"]
    return next_call("prepare", spec.name, **args, force=True)


def _fix_hint(manifest: Manifest) -> str:
    audio = manifest.audio_dir()
    if Path(manifest.audio_root).is_absolute() and not audio.is_dir():
        moved = reprepare_call(manifest, source="NEW_PLACE")
        return f"the audio folder {audio} is gone; if it moved, run `{moved}`"
    return f"run `{reprepare_call(manifest)}` to prepare it again"
