"""Decode many audio files into one stream of blocks, in this process or in workers.

:func:`decoded_blocks` turns a list of files into messages, in the order they are ready:

- ``("block", i, samples)``: the next mono float32 block of file ``i`` at the target rate
  (:func:`audiocnn.audio.iter_audio_blocks`, so long files are never held whole);
- ``("end", i, None)``: file ``i`` is complete;
- ``("error", i, message)``: file ``i`` cannot be decoded (blocks sent before are void).

With ``jobs=1`` the files are decoded here, one after the other, as the consumer asks for
blocks. With ``jobs=N > 1`` N worker processes decode and resample while the consumer
works; they take at most ``2 N`` files ahead and put blocks into a queue of at most
``queue_blocks`` blocks, so memory stays bounded by the number of workers and the block
size, however many and however long the files are. Blocks of the files in flight arrive
interleaved; each file's own blocks arrive in order.

The workers are :mod:`audiocnn.workers` processes started with ``spawn`` (safe whatever
threads the parent runs; this module imports neither torch nor the model, so they start
in a fraction of a second); they leave when their parent dies, even by SIGKILL.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from typing import Any

from audiocnn import workers
from audiocnn.audio import iter_audio_blocks
from audiocnn.errors import AudiocnnError, AudioDecodeError, UsageError

Message = tuple[str, int, Any]


class DecodeWorkerError(AudiocnnError):
    """A decoding worker process died (killed, or out of memory)."""


def _decode_one(index: int, path: str, sample_rate: int, block_seconds: float) -> Iterator[Message]:
    """One file's messages; a file that fails ends with its error, never an exception."""
    try:
        for block in iter_audio_blocks(path, sample_rate, block_seconds):
            yield ("block", index, block)
    except AudioDecodeError as exc:
        yield ("error", index, str(exc))
        return
    except OSError as exc:
        yield ("error", index, f"{path}: cannot read ({exc.strerror or exc})")
        return
    except Exception as exc:  # a decoder bug on one odd file must not stop a library run
        yield ("error", index, f"{path}: cannot decode ({type(exc).__name__}: {exc})")
        return
    yield ("end", index, None)


def _decode_task(sample_rate: int, block_seconds: float, task: tuple[int, str]) -> Iterator[Message]:
    return _decode_one(task[0], task[1], sample_rate, block_seconds)


def _local(paths: Sequence[str | os.PathLike], sample_rate: int, block_seconds: float) -> Iterator[Message]:
    for i, path in enumerate(paths):
        yield from _decode_one(i, str(path), sample_rate, block_seconds)


def _pooled(
    paths: Sequence[str | os.PathLike], sample_rate: int, block_seconds: float, jobs: int, queue_blocks: int
) -> Iterator[Message]:
    work = functools.partial(_decode_task, sample_rate, block_seconds)
    tasks = ((i, str(p)) for i, p in enumerate(paths))
    events = workers.run(work, tasks, jobs=jobs, start="spawn", ahead=2 * jobs, queue_size=queue_blocks)
    try:
        for kind, _i, message in events:
            if kind == "item":
                yield message
    except workers.WorkerDied as exc:
        raise DecodeWorkerError(
            f"a decoding worker (pid {exc.pid}) died with exit code {exc.exitcode}",
            hint="run again with fewer jobs; files finished so far are kept",
        ) from None


def decoded_blocks(
    paths: Sequence[str | os.PathLike],
    sample_rate: int,
    *,
    block_seconds: float = 30.0,
    jobs: int = 1,
    queue_blocks: int | None = None,
) -> Iterator[Message]:
    """The messages of the module docstring for ``paths``, decoded with ``jobs`` processes."""
    jobs = int(jobs)
    if jobs < 1:
        raise UsageError(f"jobs must be >= 1, got {jobs}", arguments=("jobs",))
    if jobs == 1:
        return _local(paths, sample_rate, block_seconds)
    return _pooled(paths, sample_rate, block_seconds, jobs, 2 * jobs if queue_blocks is None else queue_blocks)
