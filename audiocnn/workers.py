"""Worker processes: the one pool behind every command that spreads work over processes
(decoding songs for ``tag``, extracting a feature store, probing and verifying clips).

:func:`run` hands ``tasks`` to ``jobs`` processes, each calling ``work(task)``. ``work``
returns the task's result, or is a generator: what it yields streams to the caller as it
comes (decoded blocks, progress ticks) and what it returns is the result. The caller
reads events:

- ``("item", i, value)``: task ``i`` yielded ``value``;
- ``("done", i, result)``: task ``i`` finished with ``result``.

Bounded: at most ``ahead`` tasks are handed out beyond the finished ones and the queue
back holds at most ``queue_size`` events, so memory follows the number of workers, never
the number of tasks or the length of their output. ``ordered=True`` gives the ``done``
events in task order (the probes of a manifest). With ``jobs=1`` the tasks run in this
process, lazily, with the same events (``initializer`` is for worker processes only).

Failures: an exception raised by ``work`` stops the hand-out, lets the other workers
finish the task they hold (each commits its own work) and is raised here as it was
raised there. A worker that dies (killed, out of memory) is :class:`WorkerDied`, never a
hang. KeyboardInterrupt, another error here, or a caller that stops reading ends the
workers at once. Workers leave when their parent dies, even by SIGKILL: on Linux the
kernel kills them; elsewhere they notice within :data:`POLL_S` when they next wait
(:func:`orphaned` lets a long task check between steps).

``start="spawn"`` is safe whatever threads the parent runs; the workers do not re-run
the parent's main script, so a script needs no ``if __name__ == "__main__"`` guard.
``start="fork"`` (where the platform has it, else spawn) starts a worker in a few
milliseconds without importing anything again.
"""

from __future__ import annotations

import contextlib
import ctypes
import inspect
import multiprocessing as mp
import os
import pickle
import queue
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from audiocnn.errors import AudiocnnError, UsageError

Event = tuple[str, int, Any]

#: How often a waiting worker or parent wakes to check the other side is alive.
POLL_S = 0.5
#: prctl(2) option: the signal this process gets when its parent dies (Linux).
_PR_SET_PDEATHSIG = 1


class WorkerDied(AudiocnnError):
    """A worker process died (killed, or out of memory) before finishing its task."""

    def __init__(self, pid: int | None, exitcode: int | None) -> None:
        super().__init__(f"a worker process (pid {pid}) died with exit code {exitcode}")
        self.pid, self.exitcode = pid, exitcode


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker (the cause of the one raised here)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def resolve_jobs(jobs: int | None) -> int:
    """``jobs`` worker processes; None means one per usable CPU."""
    if jobs is None:
        return usable_cpus()
    if jobs < 1:
        raise UsageError(f"jobs={jobs}: the number of jobs must be at least 1", arguments=("jobs",))
    return int(jobs)


def orphaned() -> bool:
    """True in a worker whose parent is gone (its results have nobody to read them)."""
    parent = mp.parent_process()
    return parent is not None and not parent.is_alive()


def run(
    work: Callable[[Any], Any],
    tasks: Iterable[Any],
    *,
    jobs: int,
    start: str = "spawn",
    initializer: Callable[..., None] | None = None,
    initargs: tuple[Any, ...] = (),
    ahead: int | None = None,
    queue_size: int | None = None,
    ordered: bool = False,
) -> Iterator[Event]:
    """The events of the module docstring for ``work`` over ``tasks`` in ``jobs`` processes.

    ``ahead`` (default ``2 * jobs``) bounds the tasks handed out and not finished;
    ``queue_size`` (default ``2 * jobs``) the events waiting to be read. With ``spawn``,
    ``work``, ``initializer`` and the tasks must be picklable (top-level functions).
    """
    jobs = int(jobs)
    if jobs <= 1:
        return _in_process(work, tasks)
    method = "fork" if start == "fork" and "fork" in mp.get_all_start_methods() else "spawn"
    pool = _Pool(work, jobs, method, initializer, initargs, queue_size or 2 * jobs)
    return pool.events(iter(tasks), ahead or 2 * jobs, ordered)


def _in_process(work: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Event]:
    for i, task in enumerate(tasks):
        out = work(task)
        if inspect.isgenerator(out):
            while True:
                try:
                    value = next(out)
                except StopIteration as stop:
                    out = stop.value
                    break
                yield ("item", i, value)
        yield ("done", i, out)


# -- worker side ---------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Ask the kernel to kill this worker with its parent (Linux), so a CPU-bound task
    does not run on for minutes after ``kill -9`` of the run; elsewhere the waits notice."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no libc prctl
            pass
    if orphaned():  # the parent may have died before prctl took effect
        os._exit(1)


def _put(out: Any, event: Any) -> bool:
    """Put ``event`` on the bounded queue back, giving up (False) once the parent is gone."""
    while True:
        try:
            out.put(event, timeout=POLL_S)
            return True
        except queue.Full:
            if orphaned():
                return False


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _run_one(work: Callable[[Any], Any], i: int, task: Any, out: Any) -> bool:
    """Run one task, sending its items and then its result or exception; False when the
    parent is gone."""
    try:
        result = work(task)
        if inspect.isgenerator(result):
            gen = result
            while True:
                try:
                    value = next(gen)
                except StopIteration as stop:
                    result = stop.value
                    break
                if not _put(out, ("item", i, value)):
                    return False
    except Exception as exc:
        return _put(out, ("raise", i, (_picklable(exc), traceback.format_exc())))
    return _put(out, ("done", i, result))


def _worker(work: Any, tasks: Any, out: Any, stop: Any, initializer: Any, initargs: tuple[Any, ...]) -> None:
    """A worker's life: take tasks until ``None``, a stop, or the parent's death."""
    _die_with_parent()
    try:
        if initializer is not None:
            initializer(*initargs)
        while True:
            try:
                item = tasks.get(timeout=POLL_S)
            except queue.Empty:
                if orphaned():
                    return out.cancel_join_thread()
                continue
            if item is None or stop.is_set():
                return None
            if not _run_one(work, item[0], item[1], out):
                # nobody reads the queue any more: exit without waiting to flush it
                return out.cancel_join_thread()
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the parent says it
        out.cancel_join_thread()


# -- parent side ---------------------------------------------------------------------------


@contextlib.contextmanager
def _main_hidden(method: str) -> Iterator[None]:
    """While spawned workers start, hide the parent's ``__main__``, which spawn would import
    again in each worker: they need only the modules of their work."""
    main = sys.modules.get("__main__")
    if method != "spawn" or main is None:
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


class _Pool:
    """The processes and queues of one :func:`run`."""

    def __init__(
        self, work: Any, jobs: int, method: str, initializer: Any, initargs: tuple[Any, ...], queue_size: int
    ) -> None:
        ctx = mp.get_context(method)
        self.tasks = ctx.Queue()
        self.out = ctx.Queue(maxsize=max(1, queue_size))
        self.stop = ctx.Event()
        args = (work, self.tasks, self.out, self.stop, initializer, initargs)
        self.procs = [ctx.Process(target=_worker, args=args, daemon=True) for _ in range(jobs)]
        with _main_hidden(method):
            for p in self.procs:
                p.start()
        self._checked = time.monotonic()

    def events(self, todo: Iterator[Any], ahead: int, ordered: bool) -> Iterator[Event]:
        numbered = enumerate(todo)
        pending = 0
        done: dict[int, Any] = {}
        next_done = 0
        finished = False

        def submit() -> None:
            nonlocal pending
            task = next(numbered, None)
            if task is not None:
                self.tasks.put(task)
                pending += 1

        try:
            for _ in range(max(1, ahead)):
                submit()
            while pending:
                kind, i, value = self._next()
                if kind == "raise":
                    self._finish_held()
                    exc, text = value
                    raise exc from RemoteTraceback(text)
                if kind == "item":
                    yield (kind, i, value)
                    continue
                pending -= 1
                submit()
                if not ordered:
                    yield (kind, i, value)
                    continue
                done[i] = value
                while next_done in done:
                    yield ("done", next_done, done.pop(next_done))
                    next_done += 1
            finished = True
        finally:
            self._close(graceful=finished)

    def _next(self) -> Event:
        """The next event; a dead worker is :class:`WorkerDied` (checked at least every
        :data:`POLL_S`, also while events flow)."""
        while True:
            try:
                event = self.out.get(timeout=POLL_S)
            except queue.Empty:
                event = None
            now = time.monotonic()
            if event is None or now - self._checked >= POLL_S:
                self._checked = now
                dead = next((p for p in self.procs if p.exitcode is not None), None)
                if dead is not None:
                    raise WorkerDied(dead.pid, dead.exitcode)
            if event is not None:
                return event

    def _finish_held(self) -> None:
        """After a task's error: hand out nothing more and let each worker finish the task
        it holds (reading, and dropping, what they send meanwhile)."""
        self.stop.set()
        for _ in self.procs:
            self.tasks.put(None)
        while any(p.is_alive() for p in self.procs):
            with contextlib.suppress(queue.Empty):
                self.out.get(timeout=0.1)

    def _close(self, *, graceful: bool) -> None:
        """Let idle workers leave (or end them at once when the run did not finish)."""
        if graceful:
            for _ in self.procs:
                self.tasks.put(None)
        for p in self.procs:
            if graceful:
                p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        for q in (self.tasks, self.out):
            q.cancel_join_thread()
            q.close()
