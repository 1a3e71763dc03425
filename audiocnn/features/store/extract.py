"""Extraction: decode every clip of a :class:`StoreSource` once into a store.

Extraction works in *chunks* of consecutive clips (source order, split by split). A worker
writes a chunk to ``parts/<split>-<n>.bin`` and commits it by renaming its ``.json``
record into place (:mod:`.chunks`), so a crash loses at most the chunks in flight and a
re-run skips the committed ones. When every chunk is done, each split's parts are merged
(:mod:`.merge`), the clips that failed are listed in ``failures.jsonl`` and
``complete.json`` is written.

One extraction per store runs at a time (a lock in the store folder). Workers are forked
:mod:`audiocnn.workers` processes that die with the run (``kill -9`` of the run takes them
along) and never keep its lock alive (:mod:`audiocnn.fileio`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audiocnn import workers
from audiocnn.constants import SPLITS
from audiocnn.errors import ConfigError, FeatureError
from audiocnn.features.frontends import FrontendConfig
from audiocnn.features.store.chunks import StoreWriteError, extract_chunk, init_worker
from audiocnn.features.store.layout import (
    StoreSource,
    features_command,
    meta_matches,
    new_meta,
    read_json,
    storage,
    store_dir,
    write_json,
)
from audiocnn.features.store.merge import merge_split, merging_splits
from audiocnn.features.store.reader import FeatureStore, finished_store
from audiocnn.fileio import FileWriteError, atomic_write_bytes, fsync_dir, held_lock, json_text
from audiocnn.progress import progress_bar
from audiocnn.shards import Shard, assign

log = logging.getLogger("audiocnn.features")

DEFAULT_MIN_SECONDS = 1.0
DEFAULT_MAX_FAILURES = 0.05
DEFAULT_CHUNK_CLIPS = 16
_LOCK_WAIT_S = 60.0  # how long a share waits for another one's set-up or merge


@dataclass(frozen=True)
class _Run:
    """One extraction: the store folder, what goes in and how."""

    path: Path
    config: FrontendConfig
    source: StoreSource
    jobs: int | None
    min_seconds: float
    max_failure_fraction: float
    progress: bool
    chunk_clips: int

    @property
    def command(self) -> str:
        return features_command(self.path.parent.parent, self.config)


def extract_features(
    dataset_dir: str | os.PathLike,
    config: FrontendConfig,
    source: StoreSource,
    *,
    jobs: int | None = None,
    min_seconds: float = DEFAULT_MIN_SECONDS,
    max_failure_fraction: float = DEFAULT_MAX_FAILURES,
    progress: bool = True,
    chunk_clips: int | None = None,
    shard: Shard | None = None,
) -> FeatureStore | None:
    """Extract ``config``'s features of every clip of ``source`` into the store under
    ``dataset_dir`` (:func:`store_dir`).

    ``shard``: extract only this process's share of the chunks (:func:`extract_share`);
    None is returned while other shares are left.

    Idempotent (a finished store of the same source fingerprint is returned as is) and
    resumable (committed chunks are kept). Bad clips are skipped and listed in
    ``failures.jsonl``; FeatureError only when more than ``max_failure_fraction`` of the
    clips failed (their chunks are then retried by the next run).
    """
    if not 0.0 <= max_failure_fraction <= 1.0:
        raise ConfigError(f"max_failure_fraction must be within [0, 1], got {max_failure_fraction}")
    if min_seconds < 0:
        raise ConfigError(f"min_seconds must be >= 0, got {min_seconds}")
    if jobs is not None and jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    path = store_dir(dataset_dir, config)
    finished = finished_store(path, config, source.fingerprint)
    if finished is not None:  # no lock needed to read: works on a read-only data folder too
        log.info("%s: already extracted", path)
        return finished
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FeatureError(f"{path}: cannot create the feature store folder ({exc.strerror or exc})") from None
    run = _Run(
        path, config, source, jobs, min_seconds, max_failure_fraction, progress, chunk_clips or DEFAULT_CHUNK_CLIPS
    )
    with _store_lock(path) if shard is None else contextlib.nullcontext():
        try:
            return _extract_locked(run) if shard is None else extract_share(run, shard)
        except OSError as exc:  # the merge or a marker could not be written (disk full...)
            raise FeatureError(
                f"{path}: cannot write the feature store ({exc.strerror or exc}); extracted chunks are kept",
                hint=f"free some disk space and run `{run.command}` again",
            ) from None
        except (StoreWriteError, FileWriteError) as exc:
            if exc.hint:
                raise
            raise FeatureError(exc.message, hint=f"free some disk space and run `{run.command}` again") from None


@contextlib.contextmanager
def _store_lock(path: Path) -> Iterator[None]:
    """One extraction per store at a time (two writers would interleave parts). The lock
    records the holder's PID; feature workers do not inherit it (see audiocnn.fileio), so
    a killed run never leaves its store locked."""

    def busy(pid: int | None) -> FeatureError:
        who = f" (PID {pid})" if pid else ""
        return FeatureError(
            f"{path}: another audiocnn process{who} is extracting these features right now",
            hint="wait for it to finish",
        )

    with held_lock(path / ".lock", busy):
        yield


def _remove_stale_temps(path: Path) -> None:
    """Temp files of a killed run (workers die mid-write): nobody else writes the store
    while we hold its lock, so they are garbage."""
    for folder in (path, path / "parts"):
        if folder.is_dir():
            for tmp in folder.glob(".*.tmp*"):
                with contextlib.suppress(OSError):
                    tmp.unlink()


def _extract_locked(run: _Run) -> FeatureStore:
    """The body of :func:`extract_features`, run while holding the store's lock."""
    path = run.path
    meta = _start_store(run)
    if (path / "complete.json").is_file():
        log.info("%s: already extracted", path)
        return FeatureStore(path)
    _remove_stale_temps(path)
    tasks = _plan(run.source, int(meta["chunk_clips"]))
    parts = path / "parts"
    parts.mkdir(exist_ok=True)
    merging = merging_splits(path, meta["splits"])
    todo = [t for t in tasks if t["split"] not in merging and not _chunk_done(parts, t)]
    total_clips = sum(len(t["clips"]) for t in tasks)
    done_clips = total_clips - sum(len(t["clips"]) for t in todo)
    if todo:
        if done_clips:
            log.info("%s: resuming, %d of %d clips already extracted", path, done_clips, total_clips)
        _run_tasks(run, todo, done_clips, total_clips)
    return _finish(run, meta, tasks)


def _start_store(run: _Run) -> dict[str, Any]:
    """Create ``store.json`` or check the existing one still describes this extraction
    (else the store is emptied and made again)."""
    meta_path = run.path / "store.json"
    if meta_path.is_file():
        try:
            meta = read_json(meta_path)
        except (OSError, json.JSONDecodeError):
            meta = None
        if meta_matches(meta, run.config, run.source.fingerprint):
            return meta
        log.info("%s: the manifest changed since this store was made; extracting again", run.path)
        for child in run.path.iterdir():
            if child.name == ".lock":
                continue
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
    meta = new_meta(run.source, run.config, run.chunk_clips)
    write_json(meta_path, meta)
    return meta


def _plan(source: StoreSource, chunk_clips: int) -> list[dict[str, Any]]:
    """The chunks of ``source``: consecutive clips of one split, numbered per split."""
    tasks = []
    for split in SPLITS:
        clips = source.split(split)
        for k in range(0, len(clips), chunk_clips):
            group = clips[k : k + chunk_clips]
            tasks.append(
                {
                    "split": split,
                    "chunk": k // chunk_clips,
                    "name": f"{split}-{k // chunk_clips:06d}",
                    "clips": [(c.id, str(c.path)) for c in group],
                    "labels": [list(c.labels) for c in group],
                }
            )
    return tasks


def _chunk_done(parts: Path, task: dict[str, Any]) -> bool:
    rec_path = parts / f"{task['name']}.json"
    if not rec_path.is_file() or not (parts / f"{task['name']}.bin").is_file():
        return False
    try:
        rec = read_json(rec_path)
    except (OSError, json.JSONDecodeError):
        return False
    ids = [c["id"] for c in rec["clips"]] + [f["id"] for f in rec["failures"]]
    return sorted(ids) == sorted(cid for cid, _ in task["clips"])


def _run_tasks(run: _Run, tasks: list[dict[str, Any]], done_clips: int, total_clips: int) -> None:
    """Extract ``tasks`` in this process (``jobs`` 1) or in worker processes, with a
    progress bar; a worker that dies ends the run (committed chunks are kept)."""
    common = {"store": str(run.path), "config": run.config.to_dict(), "min_seconds": float(run.min_seconds)}
    payload = [{**common, **{k: t[k] for k in ("split", "chunk", "name", "clips")}} for t in tasks]
    jobs = min(run.jobs or workers.usable_cpus(), len(payload))
    # the bar counts what is left, so its time estimate is not skewed by a resumed start
    description = f"features ({done_clips} of {total_clips} clips done before)" if done_clips else "features"
    # fork keeps worker start-up cheap (no re-import of torch); init_worker sets torch to
    # one thread, so the parent's thread pools are never used in a child.
    events = workers.run(extract_chunk, payload, jobs=jobs, start="fork", initializer=init_worker, queue_size=64 * jobs)
    with progress_bar(description, total_clips - done_clips, enabled=run.progress, unit="items") as advance:
        try:
            for kind, _i, value in events:
                if kind == "item":
                    advance(value)
        except workers.WorkerDied:
            raise FeatureError(
                f"{run.path}: a feature worker process died; committed chunks are kept",
                hint=f"run `{run.command}` again to resume",
            ) from None


def _read_records(run: _Run, tasks: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The committed record of every chunk by split, with the chunk's labels by clip id."""
    records: dict[str, list[dict[str, Any]]] = {}
    for t in tasks:
        rec = read_json(run.path / "parts" / f"{t['name']}.json")
        labels = dict(zip([c for c, _ in t["clips"]], t["labels"], strict=True))
        records.setdefault(t["split"], []).append({**rec, "labels": labels})
    return records


def _drop_failed_chunks(run: _Run, meta: dict[str, Any], records: dict[str, list[dict[str, Any]]]) -> None:
    """Forget the chunks with failed clips, so that the next run retries them (the files
    may be fixed by then); chunks of a split being merged are kept."""
    merging = merging_splits(run.path, meta["splits"])
    for split in records:
        if split in merging:
            continue
        for rec in records[split]:
            if rec["failures"]:
                name = f"{split}-{rec['chunk']:06d}"
                for suffix in (".json", ".bin"):
                    with contextlib.suppress(FileNotFoundError):
                        (run.path / "parts" / f"{name}{suffix}").unlink()


def _at_least(fraction: float) -> float:
    """``fraction`` rounded up to a whole percent: a failure budget that lets it pass."""
    return math.ceil(round(fraction * 100, 6)) / 100


def _finish(run: _Run, meta: dict[str, Any], tasks: list[dict[str, Any]]) -> FeatureStore:
    """Check the failure budget, merge each split's parts, write failures and the marker."""
    path = run.path
    records = _read_records(run, tasks)
    total = sum(len(t["clips"]) for t in tasks)
    failures = [f for split in records for rec in records[split] for f in rec["failures"]]
    if total and len(failures) / total > run.max_failure_fraction:
        _drop_failed_chunks(run, meta, records)
        first = failures[0]
        more = features_command(path.parent.parent, run.config, max_failure_fraction=_at_least(len(failures) / total))
        raise FeatureError(
            f"{path}: {len(failures)} of {total} clips failed ({len(failures) / total:.1%}, "
            f"more than the allowed {run.max_failure_fraction:.0%}); first: {first['path']}: {first['reason']}",
            hint=f"fix or remove those files (`audiocnn verify`), or allow more: `{more}`",
        )
    dtype, dim = storage(run.config)
    for split in meta["splits"]:
        merge_split(path, split, records.get(split, []), dim * dtype.itemsize)
    lines = "".join(json_text(f) + "\n" for f in failures)
    atomic_write_bytes(path / "failures.jsonl", lines.encode("utf-8"))
    counts = {s: sum(len(r["clips"]) for r in records.get(s, [])) for s in meta["splits"]}
    summary = {"clips": counts, "failures": len(failures), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(path / "complete.json", summary)
    shutil.rmtree(path / "parts", ignore_errors=True)
    fsync_dir(path)
    if failures:
        log.warning("%d clip(s) failed and were skipped; see %s", len(failures), path / "failures.jsonl")
    return FeatureStore(path)


@contextlib.contextmanager
def _waiting_lock(path: Path) -> Iterator[None]:
    """The store's lock, waited for while another share holds it briefly (setting up, merging)."""
    deadline = time.monotonic() + _LOCK_WAIT_S
    while True:
        held = contextlib.ExitStack()
        try:
            held.enter_context(_store_lock(path))
            break
        except FeatureError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    with held:
        yield


def _share_lock(path: Path, shard: Shard) -> contextlib.AbstractContextManager[None]:
    def busy(pid: int | None) -> FeatureError:
        who = f" (PID {pid})" if pid else ""
        return FeatureError(f"{path}: share {shard} is being extracted by another process{who} right now")

    return held_lock(path / f".lock-{shard.index}-of-{shard.count}", busy)


def extract_share(run: _Run, shard: Shard) -> FeatureStore | None:
    """Share ``shard`` of the chunks (:func:`audiocnn.shards.assign` by chunk name, weighed by
    clips), extracted while holding that share's lock, other shares running alongside; then,
    if every chunk of every share is committed and no share runs, the usual merge (so the
    store is the one a single process makes). Returns None when shares are left."""
    path = run.path
    with _waiting_lock(path):
        meta = _start_store(run)
        if (path / "complete.json").is_file():
            return FeatureStore(path)
        (path / "parts").mkdir(exist_ok=True)
    tasks = _plan(run.source, int(meta["chunk_clips"]))
    shares = assign(tasks, shard.count, lambda t: t["name"], lambda t: len(t["clips"]))
    with _share_lock(path, shard):
        ours = [t for t, k in zip(tasks, shares) if k == shard.index]
        for t in ours:  # a killed run of this share left these half-written (other shares may be writing theirs)
            for tmp in (path / "parts").glob(f".{t['name']}.*.tmp*"):
                tmp.unlink(missing_ok=True)
        merging = merging_splits(path, meta["splits"])
        mine = [t for t in ours if t["split"] not in merging]
        todo = [t for t in mine if not _chunk_done(path / "parts", t)]
        if todo:
            done = sum(len(t["clips"]) for t in mine) - sum(len(t["clips"]) for t in todo)
            _run_tasks(run, todo, done, sum(len(t["clips"]) for t in mine))
    with _waiting_lock(path), contextlib.ExitStack() as held:
        if (path / "complete.json").is_file():
            return FeatureStore(path)
        for other in shard.all():
            try:
                held.enter_context(_share_lock(path, other))
            except FeatureError:
                log.info("%s: share %s is still being extracted; the last share to finish merges", path, other)
                return None
        merging = merging_splits(path, meta["splits"])
        left = [t for t in tasks if t["split"] not in merging and not _chunk_done(path / "parts", t)]
        if left:
            k = shares[tasks.index(left[0])]
            log.info("%s: %d chunk(s) left, e.g. of share %d/%d: not merging yet", path, len(left), k, shard.count)
            return None
        return _finish(run, meta, tasks)
