"""One ``prepare`` of a dataset at a time: an exclusive lock on ``.state/prepare.lock``.

Two prepares of one dataset would race: the first probes clips while the second is still
writing them and excludes intact clips as empty or truncated. The lock is held for the
whole prepare; a second one is refused at once, naming the PID of the holder.

The lock is :func:`audiocnn.fileio.acquire_lock` (the one every writer uses): a holder
that dies does not block, forked children (the probe and feature-store worker pools)
never keep it alive, and a lock still held while its recorded holder is dead is taken
over -- this module adds the prepare's messages, and says so when it takes one over.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from audiocnn.errors import DatasetError
from audiocnn.fileio import acquire_lock, release_lock

log = logging.getLogger("audiocnn.datasets")

LOCK_NAME = "prepare.lock"


class DatasetBusyError(DatasetError):
    """Another process is preparing the same dataset right now."""


def lock_path(state_dir: Path) -> Path:
    return Path(state_dir) / LOCK_NAME


def _recorded(path: Path) -> tuple[int | None, tuple[int, int] | None]:
    """(PID recorded in the lock file, its (device, inode)), or Nones when there is none."""
    try:
        st = os.stat(path)
        words = path.read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError):
        return None, None
    pid = int(words[0]) if words and words[0].isdigit() else None
    return pid, (st.st_dev, st.st_ino)


def _try_flock(path: Path) -> int | None:
    """A descriptor holding the flock on ``path``, or None when another process holds it.
    A bare probe that records nothing (what a check of the lock needs); the prepare
    itself takes the lock with :func:`prepare_lock`."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextmanager
def prepare_lock(state_dir: Path, name: str) -> Iterator[None]:
    """Hold the exclusive prepare lock of one dataset for the body of the ``with``.

    Raises :class:`DatasetBusyError` while another prepare runs, ``OSError`` or
    ``FileWriteError`` when ``state_dir`` cannot be written.
    """
    path = lock_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)

    def busy(holder: int | None) -> DatasetBusyError:
        shown = "unknown" if holder is None else str(holder)
        return DatasetBusyError(
            f"{name}: another `audiocnn prepare` (PID {shown}) is preparing this dataset now; "
            "wait for it to finish, then run this again"
        )

    before, file_before = _recorded(path)
    fd = acquire_lock(path, busy)
    if file_before is not None and before != os.getpid():
        with contextlib.suppress(OSError):
            st = os.fstat(fd) if fd is not None else None
            if st is not None and (st.st_dev, st.st_ino) != file_before:
                # acquire_lock replaced a file that was still locked although its holder is
                # gone (an orphaned worker of a killed prepare kept it)
                log.warning(
                    "%s: the prepare lock of PID %s, which has exited, is still held by its leftover "
                    "worker processes; taking it over",
                    name,
                    before,
                )
    try:
        yield
    finally:
        release_lock(fd)
