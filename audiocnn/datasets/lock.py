"""One ``prepare`` of a dataset at a time: an exclusive ``flock`` on ``.state/prepare.lock``.

Two prepares of one dataset would race: the first probes clips while the second is still
writing them and excludes intact clips as empty or truncated. The lock is held for the
whole prepare; a second one is refused at once, naming the PID of the holder.

The kernel drops a flock when every descriptor of it is closed, so a holder that dies
does not block -- as long as no other process shares the descriptor. It is opened
close-on-exec (nothing exec'd gets it), and a child *forked* while it is held (the probe
and feature-store worker pools fork) closes its copy at once (``os.register_at_fork``),
so an orphaned worker of a killed prepare cannot keep the lock. As a last resort the
holder's PID is written in the file, and a lock still held while its recorded holder is
dead is taken over.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from audiocnn.errors import DatasetError

log = logging.getLogger("audiocnn.datasets")

LOCK_NAME = "prepare.lock"


class DatasetBusyError(DatasetError):
    """Another process is preparing the same dataset right now."""


#: Lock descriptors this process holds; a forked child closes them (see the module doc).
_HELD: set[int] = set()


def _close_in_child() -> None:
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


def lock_path(state_dir: Path) -> Path:
    return Path(state_dir) / LOCK_NAME


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _try_flock(path: Path) -> int | None:
    """An fd holding the flock on ``path``, or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    try:
        same = os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        same = False
    if not same:  # taken over (unlinked) between our open and our flock: not the live lock
        os.close(fd)
        return _try_flock(path)
    return fd


def _acquire(path: Path, name: str) -> int:
    for _attempt in range(2):
        fd = _try_flock(path)
        if fd is not None:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
            return fd
        holder = _read_pid(path)
        if holder is None or _pid_alive(holder):
            break
        log.warning("%s: the prepare lock of PID %d, which has exited, is still held by its leftover "
                    "worker processes; taking it over", name, holder)
        path.unlink(missing_ok=True)
    shown = "unknown" if holder is None else str(holder)
    raise DatasetBusyError(
        f"{name}: another `audiocnn prepare` (PID {shown}) is preparing this dataset now; "
        "wait for it to finish, then run this again"
    )


@contextmanager
def prepare_lock(state_dir: Path, name: str) -> Iterator[None]:
    """Hold the exclusive prepare lock of one dataset for the body of the ``with``."""
    path = lock_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path, name)
    _HELD.add(fd)
    try:
        yield
    finally:
        _HELD.discard(fd)
        os.close(fd)  # releases the flock; the file stays (unlinking it would race a waiter)
