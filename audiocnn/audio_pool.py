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

Workers are started with ``spawn`` (safe whatever threads the parent runs; this module
imports neither torch nor the model, so they start in a fraction of a second). They do not
re-run the parent's main script, so a script may call this without an
``if __name__ == "__main__"`` guard. They leave when their parent dies, even by SIGKILL.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from audiocnn.audio import iter_audio_blocks
from audiocnn.errors import AudiocnnError, AudioDecodeError, UsageError

Message = tuple[str, int, Any]

#: How often a worker or the consumer wakes from a wait to check the other side is alive.
_POLL_S = 0.5


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


def _parent_alive() -> bool:
    parent = mp.parent_process()
    return parent is None or parent.is_alive()


def _put(q: Any, item: Any) -> bool:
    """Put ``item`` on a bounded queue, giving up (False) once the parent is gone."""
    while True:
        try:
            q.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            if not _parent_alive():
                return False


def _worker(tasks: Any, out: Any, sample_rate: int, block_seconds: float) -> None:
    """Decode the files ``tasks`` hands out until it says ``None`` or the parent dies."""
    while True:
        try:
            task = tasks.get(timeout=_POLL_S)
        except queue.Empty:
            if not _parent_alive():
                return _orphaned(out)
            continue
        if task is None:
            return
        index, path = task
        for message in _decode_one(index, path, sample_rate, block_seconds):
            if not _put(out, message):
                return _orphaned(out)


def _orphaned(out: Any) -> None:
    """The parent is gone: exit without waiting to flush blocks nobody will read (the
    queue's feeder thread would wait on the full pipe for ever)."""
    out.cancel_join_thread()


def _local(paths: Sequence[str | os.PathLike], sample_rate: int, block_seconds: float) -> Iterator[Message]:
    for i, path in enumerate(paths):
        yield from _decode_one(i, str(path), sample_rate, block_seconds)


@contextlib.contextmanager
def _main_hidden() -> Iterator[None]:
    """While workers start, hide the parent's ``__main__`` from spawn, which would import
    it again in each worker: they need only this module."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def _pooled(
    paths: Sequence[str | os.PathLike], sample_rate: int, block_seconds: float, jobs: int, queue_blocks: int
) -> Iterator[Message]:
    ctx = mp.get_context("spawn")
    tasks = ctx.Queue()
    out = ctx.Queue(maxsize=max(1, queue_blocks))
    procs = [
        ctx.Process(target=_worker, args=(tasks, out, sample_rate, block_seconds), daemon=True) for _ in range(jobs)
    ]
    with _main_hidden():
        for p in procs:
            p.start()
    todo = iter(enumerate(paths))
    pending = 0

    def submit() -> None:
        nonlocal pending
        task = next(todo, None)
        if task is not None:
            tasks.put((task[0], str(task[1])))
            pending += 1

    finished = False
    try:
        for _ in range(2 * jobs):
            submit()
        while pending:
            try:
                message = out.get(timeout=_POLL_S)
            except queue.Empty:
                dead = [p for p in procs if not p.is_alive()]
                if dead:
                    raise DecodeWorkerError(
                        f"a decoding worker (pid {dead[0].pid}) died with exit code {dead[0].exitcode}",
                        hint="run again with fewer --jobs; files finished so far are kept",
                    ) from None
                continue
            if message[0] != "block":
                pending -= 1
                submit()
            yield message
        finished = True
    finally:
        _stop(procs, tasks, out, graceful=finished)


def _stop(procs: list, tasks: Any, out: Any, *, graceful: bool) -> None:
    """Let idle workers leave (or end them when the consumer stopped early)."""
    if graceful:
        for _ in procs:
            tasks.put(None)
    for p in procs:
        if graceful:
            p.join(timeout=5)
        if p.is_alive():
            p.terminate()
            p.join(timeout=5)
    for q in (tasks, out):
        q.cancel_join_thread()
        q.close()


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
        raise UsageError(f"jobs (--jobs) must be >= 1, got {jobs}")
    if jobs == 1:
        return _local(paths, sample_rate, block_seconds)
    return _pooled(paths, sample_rate, block_seconds, jobs, 2 * jobs if queue_blocks is None else queue_blocks)
