"""Extraction: decode every clip of a :class:`StoreSource` once into a store.

Extraction works in *chunks* of consecutive clips (source order, split by split). A worker
writes a chunk to ``parts/<split>-<n>.bin`` and commits it by renaming its ``.json``
record into place, so a crash loses at most the chunks in flight and a re-run skips the
committed ones. When every chunk is done, each split's parts are merged (:mod:`.merge`),
the clips that failed are listed in ``failures.jsonl`` and ``complete.json`` is written.

One extraction per store runs at a time (a lock in the store folder). Workers are forked
processes that die with the run (``kill -9`` of the run takes them along) and never keep
its lock alive (:mod:`audiocnn.fileio`).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import json
import logging
import multiprocessing as mp
import os
import queue as queue_mod
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from audiocnn.audio import iter_audio_blocks
from audiocnn.constants import SPLITS
from audiocnn.errors import AudiocnnError, ConfigError, FeatureError
from audiocnn.features.frontends import FrontendConfig, MelConfig, MelStream, build_frontend, config_from_dict
from audiocnn.features.store.layout import (
    WAVEFORM_SCALE,
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
from audiocnn.fileio import FileWriteError, atomic_write_bytes, fsync_dir, held_lock
from audiocnn.progress import progress_bar

log = logging.getLogger("audiocnn.features")

DEFAULT_MIN_SECONDS = 1.0
DEFAULT_MAX_FAILURES = 0.05
DEFAULT_CHUNK_CLIPS = 16
_FP16_MAX = float(np.finfo(np.float16).max)
# Decoding block length (iter_audio_blocks keeps MP3 blocks on MPEG frame boundaries).
_BLOCK_SECONDS = 30.0

#: Environment variable read by worker processes (tests only): exit abruptly after this
#: many clips, to simulate a crash mid-extraction.
CRASH_ENV = "AUDIOCNN_FEATURES_CRASH_AFTER"

#: prctl(2) option: signal sent to this process when its parent dies (Linux)
_PR_SET_PDEATHSIG = 1


class _StoreWriteError(FeatureError):
    """Writing the store failed (disk full...): abort the run, never blame the clip."""


# -- worker side ---------------------------------------------------------------------------


@dataclass
class _WorkerState:
    report: Callable[[int], None] | None = None  # progress: called with 1 per clip done
    parent: int | None = None  # PID of the run; an orphaned worker exits
    crash_after: int | None = None  # CRASH_ENV
    done: int = 0
    frontends: dict[str, Any] = field(default_factory=dict)  # mel front-ends by config hash


#: This process's worker state. A module global because the pool runs the initializer and
#: each chunk as separate calls of top-level functions in the worker process, with nothing
#: else to share state through; the in-process run (``-j 1``) installs one for its duration.
_worker: _WorkerState | None = None


def _init_worker(queue: Any, parent: int) -> None:
    """The pool's initializer, run in each worker process: progress goes to ``queue``."""
    global _worker
    crash = os.environ.get(CRASH_ENV)
    _worker = _WorkerState(report=queue.put, parent=parent, crash_after=int(crash) if crash else None)
    _die_with_parent()
    torch.set_num_threads(1)


def _die_with_parent() -> None:
    """A worker whose parent was killed (``kill -9``) would go on extracting for minutes
    with nobody to merge its chunks: ask the kernel to kill it with its parent (Linux);
    elsewhere :func:`_check_parent` between clips is the fallback."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no libc prctl
            pass
    _check_parent()  # the parent may have died before prctl took effect


def _check_parent() -> None:
    parent = _worker.parent if _worker is not None else None
    if parent is not None and os.getppid() != parent:
        os._exit(1)  # orphaned: the run is gone, its next run redoes this chunk


def _tick() -> None:
    """One clip done: report it, and honour CRASH_ENV and a dead parent."""
    if _worker is None:
        return
    _worker.done += 1
    if _worker.report is not None:
        _worker.report(1)
    if _worker.crash_after is not None and _worker.done >= _worker.crash_after:
        os._exit(17)  # simulated crash: no cleanup, no commit of the chunk in flight
    _check_parent()


def _quantize(y: np.ndarray) -> np.ndarray:
    q = y * np.float32(WAVEFORM_SCALE)  # float32 and in place: one temporary per block
    np.clip(q, -32768.0, 32767.0, out=q)
    np.rint(q, out=q)
    return q.astype("<i2")


def _mel_frontend(config: MelConfig) -> Any:
    cache = _worker.frontends if _worker is not None else {}
    if config.hash not in cache:
        cache[config.hash] = build_frontend(config)
    return cache[config.hash]


def _clip_mel(config: MelConfig, blocks: Iterator[np.ndarray]) -> tuple[np.ndarray, int]:
    """(compressed mel ``(n_mels, frames)``, number of input samples) of one clip.

    Streamed block by block (:class:`MelStream`); the mel of the clip is kept until the
    end because ``top_db`` needs its peak, and it is small next to the clip's waveform.
    """
    frontend = _mel_frontend(config)
    if not MelStream.supports(config):
        # e.g. circular padding needs the end before the start: whole-file fallback
        y = np.concatenate(list(blocks))
        with torch.no_grad():
            return frontend(torch.from_numpy(y)[None])[0].numpy(), len(y)
    stream = MelStream(frontend)
    mels = [stream.push(block) for block in blocks]
    mels.append(stream.finish())
    return stream.clip_top_db(np.concatenate(mels, axis=1)), stream.samples


def _extract_chunk(task: dict[str, Any]) -> dict[str, Any]:
    """Extract one chunk of clips and commit it; returns the chunk record."""
    _check_parent()
    root = Path(task["store"])
    config = config_from_dict(task["config"])
    name = task["name"]
    parts = root / "parts"
    bin_path = parts / f"{name}.bin"
    tmp_path = parts / f".{name}.bin.tmp{os.getpid()}"
    dtype, dim = storage(config)
    try:
        with _open_part(tmp_path) as fh:
            clips, failures = _extract_clips(fh, task, config)
            try:
                fh.flush()
                os.fsync(fh.fileno())
            except OSError as exc:
                raise _StoreWriteError(f"{tmp_path}: cannot write the feature store ({exc.strerror or exc})") from None
            size = fh.tell()
        expected = sum(c["length"] for c in clips) * dim * dtype.itemsize
        if size != expected:  # pragma: no cover - would be a bug in the writer above
            raise FeatureError(f"{bin_path}: wrote {size} bytes, expected {expected}")
        try:
            os.replace(tmp_path, bin_path)
        except OSError as exc:
            raise _StoreWriteError(f"{bin_path}: cannot write the feature store ({exc.strerror or exc})") from None
    except BaseException:
        with contextlib.suppress(OSError):  # never leave a chunk's worth of disk behind
            tmp_path.unlink()
        raise
    record = {"split": task["split"], "chunk": task["chunk"], "clips": clips, "failures": failures}
    # The data was fsynced above; the record needs only to be atomic: if a power cut
    # loses it, the chunk is simply extracted again.
    write_json(parts / f"{name}.json", record, durable=False)
    return record


def _extract_clips(
    fh: BinaryIO, task: dict[str, Any], config: FrontendConfig
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Append each clip of the chunk to ``fh``; a bad clip is truncated away and listed."""
    sr = int(config.sample_rate)
    min_len = task["min_seconds"] * sr
    dtype, _dim = storage(config)
    clips: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    for clip_id, path in task["clips"]:
        start = fh.tell()
        samples = 0
        try:
            blocks = iter_audio_blocks(path, sr, _BLOCK_SECONDS)
            if not isinstance(config, MelConfig):
                for y in blocks:  # streamed: one block in memory, whatever the length
                    samples += len(y)
                    _write(fh, _quantize(y))
                _check_length(path, samples, min_len, sr)
                length = samples
            else:
                feats, samples = _clip_mel(config, blocks)
                _check_length(path, samples, min_len, sr)
                if not np.isfinite(feats).all():
                    raise FeatureError(f"{path}: the mel front-end produced NaN or infinity")
                rows = np.clip(feats.T, -_FP16_MAX, _FP16_MAX).astype(dtype)
                _write(fh, np.ascontiguousarray(rows))
                length = feats.shape[1]
            clips.append({"id": clip_id, "length": int(length)})
        except _StoreWriteError:
            raise
        except (AudiocnnError, OSError, ValueError, RuntimeError) as exc:
            fh.seek(start)
            fh.truncate()
            failures.append({"id": clip_id, "path": str(path), "reason": _reason(exc, path)})
        _tick()
    return clips, failures


def _open_part(path: Path) -> BinaryIO:
    try:
        return open(path, "wb")
    except OSError as exc:
        raise _StoreWriteError(f"{path}: cannot write the feature store ({exc.strerror or exc})") from None


def _write(fh: BinaryIO, data: np.ndarray) -> None:
    try:
        fh.write(data.tobytes())
    except OSError as exc:
        raise _StoreWriteError(f"{fh.name}: cannot write the feature store ({exc.strerror or exc})") from None


def _check_length(path: Any, samples: int, min_len: float, sr: int) -> None:
    if samples == 0 or samples < min_len:
        raise FeatureError(f"{path}: too short: {samples / sr:.2f}s decoded, the minimum is {min_len / sr:g}s")


def _reason(exc: BaseException, path: Any) -> str:
    msg = exc.message if isinstance(exc, AudiocnnError) else f"{type(exc).__name__}: {exc}"
    prefix = f"{path}: "
    return msg[len(prefix) :] if msg.startswith(prefix) else msg


# -- driver --------------------------------------------------------------------------------


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
) -> FeatureStore:
    """Extract ``config``'s features of every clip of ``source`` into the store under
    ``dataset_dir`` (:func:`store_dir`).

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
    with _store_lock(path):
        try:
            return _extract_locked(run)
        except OSError as exc:  # the merge or a marker could not be written (disk full...)
            raise FeatureError(
                f"{path}: cannot write the feature store ({exc.strerror or exc}); extracted chunks are kept",
                hint=f"free some disk space and run `{run.command}` again",
            ) from None
        except (_StoreWriteError, FileWriteError) as exc:
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
    """Extract ``tasks`` in this process (``jobs`` 1) or a pool, with a progress bar."""
    common = {"store": str(run.path), "config": run.config.to_dict(), "min_seconds": float(run.min_seconds)}
    payload = [{**common, **{k: t[k] for k in ("split", "chunk", "name", "clips")}} for t in tasks]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    jobs = min(run.jobs or cpus, len(payload))
    # the bar counts what is left, so its time estimate is not skewed by a resumed start
    description = f"features ({done_clips} of {total_clips} clips done before)" if done_clips else "features"
    with progress_bar(description, total_clips - done_clips, enabled=run.progress, unit="items") as advance:
        if jobs <= 1:
            _run_in_process(payload, advance)
        else:
            _run_pool(run, payload, jobs, advance)


def _run_in_process(payload: list[dict[str, Any]], advance: Callable[[int], None]) -> None:
    global _worker
    _worker = _WorkerState(report=advance)
    try:
        for t in payload:
            _extract_chunk(t)
    finally:
        _worker = None


def _run_pool(run: _Run, payload: list[dict[str, Any]], jobs: int, advance: Callable[[int], None]) -> None:
    # fork keeps worker start-up cheap (no re-import of torch); workers set torch to one
    # thread, so the parent's thread pools are never used in a child.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    queue = ctx.Queue()
    pool = cf.ProcessPoolExecutor(
        max_workers=jobs, mp_context=ctx, initializer=_init_worker, initargs=(queue, os.getpid())
    )
    try:
        pending = {pool.submit(_extract_chunk, t) for t in payload}
        while pending:
            done, pending = cf.wait(pending, timeout=0.25, return_when=cf.FIRST_COMPLETED)
            _drain(queue, advance)
            for fut in done:
                try:
                    fut.result()
                except cf.process.BrokenProcessPool:
                    raise FeatureError(
                        f"{run.path}: a feature worker process died; committed chunks are kept",
                        hint=f"run `{run.command}` again to resume",
                    ) from None
        _drain(queue, advance)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    queue.close()


def _drain(queue: Any, advance: Callable[[int], None]) -> None:
    n = 0
    while True:
        try:
            n += queue.get_nowait()
        except (queue_mod.Empty, EOFError, OSError):
            break
    if n:
        advance(n)


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


def _finish(run: _Run, meta: dict[str, Any], tasks: list[dict[str, Any]]) -> FeatureStore:
    """Check the failure budget, merge each split's parts, write failures and the marker."""
    path = run.path
    records = _read_records(run, tasks)
    total = sum(len(t["clips"]) for t in tasks)
    failures = [f for split in records for rec in records[split] for f in rec["failures"]]
    if total and len(failures) / total > run.max_failure_fraction:
        _drop_failed_chunks(run, meta, records)
        first = failures[0]
        raise FeatureError(
            f"{path}: {len(failures)} of {total} clips failed ({len(failures) / total:.1%}, "
            f"more than the allowed {run.max_failure_fraction:.0%}); first: {first['path']}: {first['reason']}",
            hint="fix or remove those files (`audiocnn verify`), or allow more with --max-failures",
        )
    dtype, dim = storage(run.config)
    for split in meta["splits"]:
        merge_split(path, split, records.get(split, []), dim * dtype.itemsize)
    lines = "".join(json.dumps(f, ensure_ascii=False) + "\n" for f in failures)
    atomic_write_bytes(path / "failures.jsonl", lines.encode("utf-8"))
    counts = {s: sum(len(r["clips"]) for r in records.get(s, [])) for s in meta["splits"]}
    summary = {"clips": counts, "failures": len(failures), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(path / "complete.json", summary)
    shutil.rmtree(path / "parts", ignore_errors=True)
    fsync_dir(path)
    if failures:
        log.warning("%d clip(s) failed and were skipped; see %s", len(failures), path / "failures.jsonl")
    return FeatureStore(path)
