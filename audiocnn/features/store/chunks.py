"""One chunk of clips into one part of a store: decode each clip, compute its features
(waveform samples or a log-mel), append them to ``parts/<split>-<n>.bin`` and commit the
chunk by writing its ``.json`` record; a clip that fails is truncated away and listed.

:func:`extract_chunk` is what a worker process of :mod:`.extract` runs for each chunk
(it yields one progress tick per clip); nothing here knows of processes beyond
:func:`init_worker`, which each worker runs once.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from audiocnn import workers
from audiocnn.audio import iter_audio_blocks
from audiocnn.errors import AudiocnnError, FeatureError
from audiocnn.features.frontends import FrontendConfig, MelConfig, MelStream, build_frontend, config_from_dict
from audiocnn.features.store.layout import WAVEFORM_SCALE, storage, write_json
from audiocnn.features.streaming import streamable

_FP16_MAX = float(np.finfo(np.float16).max)
# Decoding block length (iter_audio_blocks keeps MP3 blocks on MPEG frame boundaries).
_BLOCK_SECONDS = 30.0

#: Environment variable read by worker processes (tests only): exit abruptly after this
#: many clips, to simulate a crash mid-extraction.
CRASH_ENV = "AUDIOCNN_FEATURES_CRASH_AFTER"


class StoreWriteError(FeatureError):
    """Writing the store failed (disk full...): abort the run, never blame the clip."""


@dataclass
class _ProcessState:
    """What one process keeps across the chunks it extracts."""

    crash_after: int | None = None  # CRASH_ENV, read by worker processes only
    done: int = 0
    frontends: dict[str, Any] = field(default_factory=dict)  # mel front-ends by config hash


#: This process's state: a module global because a worker runs each chunk as a separate
#: call of :func:`extract_chunk`, with nothing else to share it through.
_state = _ProcessState()


def init_worker() -> None:
    """Run once in each worker process: honour CRASH_ENV, and keep torch to one thread
    (the workers are the parallelism; a fork must not use the parent's thread pools)."""
    crash = os.environ.get(CRASH_ENV)
    _state.crash_after = int(crash) if crash else None
    _state.done = 0  # a forked worker starts with its parent's count
    torch.set_num_threads(1)


def _tick() -> None:
    """One clip done: honour CRASH_ENV, and stop when the run that wants it is gone."""
    _state.done += 1
    if _state.crash_after is not None and _state.done >= _state.crash_after:
        os._exit(17)  # simulated crash: no cleanup, no commit of the chunk in flight
    if workers.orphaned():
        os._exit(1)  # the run is gone; its next run redoes this chunk


def _quantize(y: np.ndarray) -> np.ndarray:
    q = y * np.float32(WAVEFORM_SCALE)  # float32 and in place: one temporary per block
    np.clip(q, -32768.0, 32767.0, out=q)
    np.rint(q, out=q)
    return q.astype("<i2")


def _mel_frontend(config: MelConfig) -> Any:
    cache = _state.frontends
    if config.hash not in cache:
        cache[config.hash] = build_frontend(config)
    return cache[config.hash]


def _clip_mel(config: MelConfig, blocks: Iterator[np.ndarray]) -> tuple[np.ndarray, int]:
    """(compressed mel ``(n_mels, frames)``, number of input samples) of one clip.

    Streamed block by block (:class:`MelStream`); the mel of the clip is kept until the
    end because ``top_db`` needs its peak, and it is small next to the clip's waveform.
    """
    frontend = _mel_frontend(config)
    if not streamable(config):
        # e.g. circular padding needs the end before the start: whole-file fallback
        y = np.concatenate(list(blocks))
        with torch.no_grad():
            return frontend(torch.from_numpy(y)[None])[0].numpy(), len(y)
    stream = MelStream(frontend)
    mels = [stream.push(block) for block in blocks]
    mels.append(stream.finish())
    return stream.clip_top_db(np.concatenate(mels, axis=1)), stream.samples


def extract_chunk(task: dict[str, Any]) -> Iterator[int]:
    """Extract one chunk of clips and commit it, yielding 1 per clip done; returns the
    chunk record."""
    root = Path(task["store"])
    config = config_from_dict(task["config"])
    name = task["name"]
    parts = root / "parts"
    bin_path = parts / f"{name}.bin"
    tmp_path = parts / f".{name}.bin.tmp{os.getpid()}"
    dtype, dim = storage(config)
    try:
        with _open_part(tmp_path) as fh:
            clips, failures = yield from _extract_clips(fh, task, config)
            try:
                fh.flush()
                os.fsync(fh.fileno())
            except OSError as exc:
                raise StoreWriteError(f"{tmp_path}: cannot write the feature store ({exc.strerror or exc})") from None
            size = fh.tell()
        expected = sum(c["length"] for c in clips) * dim * dtype.itemsize
        if size != expected:  # pragma: no cover - would be a bug in the writer above
            raise FeatureError(f"{bin_path}: wrote {size} bytes, expected {expected}")
        try:
            os.replace(tmp_path, bin_path)
        except OSError as exc:
            raise StoreWriteError(f"{bin_path}: cannot write the feature store ({exc.strerror or exc})") from None
    except BaseException:
        with contextlib.suppress(OSError):  # never leave a chunk's worth of disk behind
            tmp_path.unlink()
        raise
    record = {"split": task["split"], "chunk": task["chunk"], "clips": clips, "failures": failures}
    # The data was fsynced above; the record needs only to be atomic: if a power cut
    # loses it, the chunk is simply extracted again.
    write_json(parts / f"{name}.json", record, durable=False)
    return record


def _extract_clips(fh: BinaryIO, task: dict[str, Any], config: FrontendConfig) -> Iterator[int]:
    """Append each clip of the chunk to ``fh``, yielding 1 per clip; a bad clip is truncated
    away and listed. Returns (clips, failures)."""
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
        except StoreWriteError:
            raise
        except (AudiocnnError, OSError, ValueError, RuntimeError) as exc:
            fh.seek(start)
            fh.truncate()
            failures.append({"id": clip_id, "path": str(path), "reason": _reason(exc, path)})
        _tick()
        yield 1
    return clips, failures


def _open_part(path: Path) -> BinaryIO:
    try:
        return open(path, "wb")
    except OSError as exc:
        raise StoreWriteError(f"{path}: cannot write the feature store ({exc.strerror or exc})") from None


def _write(fh: BinaryIO, data: np.ndarray) -> None:
    try:
        fh.write(data.tobytes())
    except OSError as exc:
        raise StoreWriteError(f"{fh.name}: cannot write the feature store ({exc.strerror or exc})") from None


def _check_length(path: Any, samples: int, min_len: float, sr: int) -> None:
    if samples == 0 or samples < min_len:
        raise FeatureError(f"{path}: too short: {samples / sr:.2f}s decoded, the minimum is {min_len / sr:g}s")


def _reason(exc: BaseException, path: Any) -> str:
    msg = exc.message if isinstance(exc, AudiocnnError) else f"{type(exc).__name__}: {exc}"
    prefix = f"{path}: "
    return msg[len(prefix) :] if msg.startswith(prefix) else msg
