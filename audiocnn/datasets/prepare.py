"""prepare: the shared steps around each dataset module.

``prepare`` = acquire (download or take from ``--source``, verify, extract) -> collect
(dataset module: labels, splits, known-bad clips) -> probe every clip in parallel (a
clip that fails to decode is excluded with its reason) -> write the manifest -> mark
the run finished, so that running it again with the same options is a no-op.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

from audiocnn import workers
from audiocnn.constants import RESERVED_DATA_DIR_NAMES
from audiocnn.datasets import probe as _probe
from audiocnn.datasets.archive_checks import CorruptArchiveError
from audiocnn.datasets.http import mirror_from_env
from audiocnn.datasets.lock import prepare_lock
from audiocnn.datasets.manifest import (
    SPLITS,
    TASKS,
    Clip,
    Manifest,
    manifest_path,
    read_manifest,
    read_manifest_header,
    write_manifest,
)
from audiocnn.datasets.markers import clear_marker, read_marker, write_marker
from audiocnn.datasets.registry import get_dataset, list_datasets
from audiocnn.datasets.spec import MISSING_FROM_ARCHIVE, Candidate, Collected, DatasetSpec, PrepareContext
from audiocnn.errors import DatasetError, UsageError
from audiocnn.fileio import FileWriteError

log = logging.getLogger("audiocnn.datasets")

PREPARE_MARKER = "prepare"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# ---------------------------------------------------------------------------- prepare
def _fingerprint(spec: DatasetSpec, ctx: PrepareContext) -> dict[str, Any]:
    fp: dict[str, Any] = {
        "dataset": spec.name,
        "split_scheme": ctx.split_scheme,
        "task": ctx.task,
        "seed": ctx.seed,
    }
    if ctx.max_clips is not None:
        fp["max_clips"] = ctx.max_clips
    if spec.variants:
        fp["variant"] = ctx.variant
    if spec.needs_name or spec.indexes_source:
        fp["source"] = [str(Path(s).expanduser().resolve()) for s in ctx.sources]
        if ctx.labels_file is not None:
            st = ctx.labels_file.stat()
            fp["labels_file"] = [str(ctx.labels_file.resolve()), st.st_size, st.st_mtime_ns]
    return fp


def _check_options(
    spec: DatasetSpec,
    *,
    split_scheme: str | None,
    task: str | None,
    labels_file: str | os.PathLike | None,
    dataset_name: str | None,
    max_clips: int | None = None,
    variant: str | None = None,
) -> tuple[str, str]:
    """Refuse bad option values before anything is touched; returns (split scheme, task)."""
    name = spec.name
    if max_clips is not None:
        if spec.partial is None:
            raise UsageError(
                f"max_clips={max_clips}: {spec.partial_refusal or f'{name} cannot be fetched in part'}",
                arguments=("max_clips",),
            )
        if max_clips < 1:
            raise UsageError(f"max_clips={max_clips}: give at least 1 clip", arguments=("max_clips",))
    if variant is not None and variant not in spec.variants:
        have = f"variants {', '.join(spec.variants)}" if spec.variants else f"no variant={variant} (one form only)"
        raise UsageError(f"variant={variant}: {name} has {have}", arguments=("variant",))
    scheme = split_scheme or spec.default_split_scheme
    if scheme not in spec.split_schemes:
        raise UsageError(
            f"split_scheme={scheme}: {name} has split schemes {', '.join(spec.split_schemes)}",
            arguments=("split_scheme",),
        )
    chosen_task = task or spec.task
    if chosen_task not in TASKS:
        raise UsageError(f"task={chosen_task}: expected one of {', '.join(TASKS)}", arguments=("task",))
    if task is not None and task not in spec.allowed_tasks():
        raise UsageError(f"task={task}: {name} supports {', '.join(spec.allowed_tasks())}", arguments=("task",))
    if labels_file is not None and not spec.needs_name:
        raise UsageError(f"labels_file is only for `prepare folder`, not {name}", arguments=("labels_file",))
    if spec.needs_name and not dataset_name:
        raise UsageError(
            f"prepare {name} needs dataset_name=NAME for the prepared dataset",
            hint="source=DIR names the folder of your audio, dataset_name=mysongs the prepared dataset",
            arguments=("dataset_name", "source"),
        )
    if dataset_name is not None:
        if not _NAME_RE.match(dataset_name):
            raise UsageError(
                f"dataset_name={dataset_name!r}: use letters, digits, '.', '_' or '-' (a folder name under the "
                "data dir)",
                arguments=("dataset_name",),
            )
        if spec.needs_name and dataset_name in list_datasets():
            raise UsageError(
                f"dataset_name={dataset_name}: that is a built-in dataset's name; pick another",
                arguments=("dataset_name",),
            )
        if dataset_name.lower() in RESERVED_DATA_DIR_NAMES:
            raise UsageError(
                f"dataset_name={dataset_name}: the data dir keeps its {dataset_name.lower()}/ folder for audiocnn's "
                f"own files (reserved: {', '.join(RESERVED_DATA_DIR_NAMES)}); pick another",
                arguments=("dataset_name",),
            )
    return scheme, chosen_task


def find_labels_file(labels_file: str | os.PathLike | None, sources: Sequence[str]) -> Path | None:
    """The labels CSV ``labels_file`` names: as given (a relative path from the working
    folder), else inside a ``source`` folder, where the CSV's own paths start (README's
    ``--source ~/clips --labels labels.csv``). Logs the absolute path it reads."""
    if labels_file is None:
        return None
    given = Path(labels_file).expanduser()
    places = [given] if given.is_absolute() else [given, *(Path(s).expanduser() / given for s in sources)]
    found = next((p for p in places if p.is_file()), None)
    if found is None:
        looked = " nor ".join(str(p.absolute()) for p in places)
        raise UsageError(f"labels_file={labels_file}: no such file ({looked})", arguments=("labels_file",))
    where = "" if found == given else " (found in source)"
    log.info("labels: %s%s", found.absolute(), where)
    return found.absolute()


def _not_writable(path: Path, exc: OSError | FileWriteError) -> DatasetError:
    """The folder ``path`` (or its nearest existing parent) cannot be written."""
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    cause = (exc.strerror or exc) if isinstance(exc, OSError) else exc.message
    return DatasetError(
        f"{existing}: not writable ({cause}); prepare writes the dataset there",
        hint="pass --data-dir with a writable folder, or fix its permissions",
    )


def _is_done(ctx: PrepareContext, fingerprint: dict[str, Any]) -> bool:
    done = read_marker(ctx.state_dir, PREPARE_MARKER)
    return (
        not ctx.force
        and done is not None
        and done.get("fingerprint") == fingerprint
        and manifest_path(ctx.dataset_dir).is_file()
    )


def _check_same_source(spec: DatasetSpec, ctx: PrepareContext) -> None:
    """A named user dataset is not silently replaced by one from another folder."""
    if not spec.needs_name or ctx.force or not ctx.sources:
        return
    header = read_manifest_header(ctx.dataset_dir)
    old = ((header or {}).get("extra") or {}).get("source")
    if not old:
        return
    new = str(Path(ctx.sources[0]).expanduser().resolve())
    if os.path.normpath(old) != os.path.normpath(new):
        raise UsageError(
            f"dataset_name={ctx.name}: {ctx.dataset_dir} was prepared from {old}, not from source={new}",
            hint="force=True replaces it; or pick another dataset_name",
            arguments=("dataset_name", "source", "force"),
        )


def prepare_dataset(
    name: str,
    data_dir: str | os.PathLike,
    *,
    source: str | Sequence[str] | None = None,
    split_scheme: str | None = None,
    skip_checksum: bool = False,
    jobs: int | None = None,
    force: bool = False,
    task: str | None = None,
    labels_file: str | os.PathLike | None = None,
    dataset_name: str | None = None,
    progress: bool = True,
    seed: int = 0,
    max_clips: int | None = None,
    variant: str | None = None,
    download_missing: bool = False,
    then: Callable[[Manifest], None] | None = None,
) -> Manifest:
    """Download (or take from ``source``), verify, extract and write the manifest.

    The dataset folder is ``data_dir/<dataset_name or name>``. Running it again with the
    same options returns the existing manifest without touching anything (``force``
    redoes extraction and the manifest; verified downloads are kept). One prepare of a
    dataset runs at a time (see :mod:`audiocnn.datasets.lock`); ``then(manifest)`` runs
    while that lock is still held, so nothing re-prepares the clips it reads
    (``audiocnn.pipeline`` extracts features there).

    ``max_clips`` fetches only what that many clips need, keeping the official split
    membership (the manifest's ``extra["partial"]`` says so and counts each split);
    running it again without ``max_clips`` completes the dataset, reusing what is there.
    ``variant`` picks a published form of the audio (MTG-Jamendo: ``audio``, ``audio-low``).
    A file that local ``source`` files or folders lack is an error unless
    ``download_missing`` lets it be downloaded.
    """
    spec = get_dataset(name)
    jobs = workers.resolve_jobs(jobs)
    scheme, chosen_task = _check_options(
        spec,
        split_scheme=split_scheme,
        task=task,
        labels_file=labels_file,
        dataset_name=dataset_name,
        max_clips=max_clips,
        variant=variant,
    )
    sources = [source] if isinstance(source, str) else list(source or [])
    ctx = PrepareContext(
        name=dataset_name or spec.name,
        dataset_dir=Path(data_dir) / (dataset_name or spec.name),
        sources=sources,
        mirror=mirror_from_env(),
        split_scheme=scheme,
        task=chosen_task,
        skip_checksum=skip_checksum,
        force=force,
        progress=progress,
        labels_file=find_labels_file(labels_file, sources),
        seed=seed,
        task_explicit=task is not None,
        max_clips=max_clips,
        variant=variant or (spec.variants[0] if spec.variants else None),
        download_missing=download_missing,
    )
    fingerprint = _fingerprint(spec, ctx)
    with ExitStack() as stack:
        try:
            stack.enter_context(prepare_lock(ctx.state_dir, ctx.name))
        except (OSError, FileWriteError) as exc:
            if _is_done(ctx, fingerprint) and then is None:
                return _already_prepared(ctx)  # a read-only copy, prepared already: fine
            raise _not_writable(ctx.state_dir, exc) from None
        _check_same_source(spec, ctx)
        if _is_done(ctx, fingerprint):
            manifest = _already_prepared(ctx)
        else:
            manifest = _prepare_now(spec, ctx, fingerprint, jobs)
        if then is not None:
            then(manifest)
        return manifest


def _already_prepared(ctx: PrepareContext) -> Manifest:
    log.info("%s is already prepared in %s; nothing to do (use --force to prepare it again)", ctx.name, ctx.dataset_dir)
    return read_manifest(ctx.dataset_dir)


def _prepare_now(spec: DatasetSpec, ctx: PrepareContext, fingerprint: dict[str, Any], jobs: int) -> Manifest:
    """acquire -> collect -> probe -> manifest -> marker, under the lock."""
    clear_marker(ctx.state_dir, PREPARE_MARKER)
    try:
        spec.acquire(ctx)
    except CorruptArchiveError as exc:
        raise _corrupt_with_next_step(exc, ctx) from None
    collected = spec.collect(ctx)
    if ctx.selected is not None:
        collected = _only_selected(collected, ctx)
    manifest = _finish(spec, ctx, collected, jobs)
    if ctx.selected is not None:
        listed = manifest.extra.pop("listed", {})
        manifest.extra["partial"] = {
            "max_clips": ctx.max_clips,
            "clips": manifest.split_counts(),
            "listed": {s: listed.get(s, 0) for s in SPLITS},
        }
    write_manifest(manifest, ctx.dataset_dir)
    write_marker(ctx.state_dir, PREPARE_MARKER, {"fingerprint": fingerprint, "clips": len(manifest.clips)})
    counts = manifest.split_counts()
    log.info(
        "%s: %d clips (train %d, valid %d, test %d), %d excluded; manifest %s",
        ctx.name,
        len(manifest.clips),
        counts["train"],
        counts["valid"],
        counts["test"],
        len(manifest.excluded),
        manifest_path(ctx.dataset_dir),
    )
    for warning in split_warnings(manifest):
        log.warning("WARNING: %s", warning)
    return manifest


def _only_selected(collected: Collected, ctx: PrepareContext) -> Collected:
    """The clips a partial prepare fetched; the others are simply not there (not excluded)."""
    chosen = ctx.selected or set()
    candidates = [c for c in collected.candidates if c.id in chosen]
    excluded = [e for e in collected.excluded if e["id"] in chosen or e.get("reason") != MISSING_FROM_ARCHIVE]
    extra = dict(collected.extra)
    extra["listed"] = ctx.listed or dict(Counter(c.split for c in collected.candidates))
    return replace(collected, candidates=candidates, excluded=excluded, extra=extra)


def _corrupt_with_next_step(exc: CorruptArchiveError, ctx: PrepareContext) -> CorruptArchiveError:
    """The same error with the step that fixes it: a download is fetched again once
    deleted; a file given with --source must be replaced by its owner."""
    if exc.archive.startswith(str(ctx.downloads_dir)):
        what = exc.archive if ".." not in Path(exc.archive).name else f"its parts in {ctx.downloads_dir}"
        hint = f"delete {what} and run the same command again to download it anew"
    else:
        hint = "download a fresh copy and pass it with --source"
    return CorruptArchiveError(exc.message, hint=f"{hint}; files already extracted are kept", archive=exc.archive)


def split_warnings(manifest: Manifest) -> list[str]:
    """Why training or evaluating on ``manifest`` would be meaningless: one label only,
    an empty valid/test split, labels whose ROC-AUC is undefined on a split. Said at
    prepare time, not discovered later as loss 0 and AUC NaN."""
    counts = manifest.split_counts()
    present = sorted({lab for c in manifest.clips for lab in c.labels})
    out = []
    if len(present) < 2:
        out.append(
            f"{manifest.name}: every clip has the one label {present[0]!r}: a model learns nothing "
            "and ROC-AUC is undefined; add clips of at least one other label"
        )
    empty = [s for s in ("valid", "test") if counts[s] == 0]
    if empty:
        out.append(
            f"{manifest.name}: the {' and '.join(empty)} split{'s are' if len(empty) > 1 else ' is'} empty "
            f"(train {counts['train']}, valid {counts['valid']}, test {counts['test']}): training cannot "
            "choose its best epoch and evaluation has nothing to score (ROC-AUC undefined); give every "
            "label at least 3 clips (10 for a full 80/10/10 split), or a split column in --labels"
        )
    for split in ("valid", "test"):
        n = counts[split]
        if n == 0 or len(present) < 2:
            continue
        positives = Counter(lab for c in manifest.split(split) for lab in c.labels)
        undefined = [lab for lab in manifest.labels if positives[lab] in (0, n)]
        if undefined:
            out.append(
                f"{manifest.name}: ROC-AUC is undefined on the {split} split for {len(undefined)} of "
                f"{len(manifest.labels)} labels (no positive or no negative clip there: "
                f"{', '.join(undefined[:5])}{', ...' if len(undefined) > 5 else ''})"
            )
    return out


def _finish(spec: DatasetSpec, ctx: PrepareContext, collected: Collected, jobs: int) -> Manifest:
    audio_root = collected.audio_root
    root_dir = Path(audio_root) if os.path.isabs(audio_root) else ctx.dataset_dir / audio_root
    excluded = list(collected.excluded)
    todo: list[Candidate] = []
    for cand in collected.candidates:
        if cand.id in spec.always_exclude:
            excluded.append({"id": cand.id, "path": cand.path, "reason": spec.always_exclude[cand.id]})
        else:
            todo.append(cand)
    results = _probe.run_checks(
        _probe.probe_clip, [str(root_dir / c.path) for c in todo], jobs, "checking clips", ctx.progress
    )
    clips: list[Clip] = []
    for cand, res in zip(todo, results, strict=True):
        if not res["ok"]:
            reason = f"does not decode: {res['reason']}"
            if cand.id in spec.known_bad:
                reason = f"{spec.known_bad[cand.id]}; {reason}"
            log.warning("excluding %s: %s", cand.path, reason)
            excluded.append({"id": cand.id, "path": cand.path, "reason": reason})
            continue
        clips.append(
            Clip(
                id=cand.id,
                path=cand.path,
                duration=round(float(res["duration"]), 6),
                sample_rate=int(res["sample_rate"]),
                labels=list(cand.labels),
                split=cand.split,
                integrity={"size": int(res["size"]), "frames": int(res["frames"]), "sha256": res["sha256"]},
            )
        )
    if not clips:
        raise DatasetError(
            f"{ctx.dataset_dir}: no usable clips found ({len(excluded)} excluded)",
            hint="check --source and the excluded reasons with -v",
        )
    extra = dict(collected.extra)
    extra.setdefault("seed", ctx.seed)
    return Manifest(
        name=ctx.name,
        dataset=spec.name,
        task=collected.task or ctx.task,
        labels=list(collected.labels),
        clips=clips,
        split_scheme=ctx.split_scheme,
        audio_root=audio_root,
        excluded=excluded,
        extra=extra,
    )
