"""Atomic file writes and single-writer locks, shared by every module that writes results
(no torch import here, so dataset preparation can use it without paying for torch).

Writes go to a temp file beside the target, are fsynced and renamed over it: readers see
the old file or the new one, never a torn one. A write that fails removes its temp file
(on a full disk a leftover would keep the disk full) and raises :class:`FileWriteError`,
one line naming the path and the cause; the previous file, if any, is untouched.

Locks are ``flock`` on a lock file that records the holder's PID. Forked children (feature
workers, DataLoader workers) must not keep a run's lock alive after the run died, so the
lock descriptors are closed in every forked child (``os.register_at_fork``); and a lock
that is still held although the PID recorded in it is gone (held by a child forked some
other way) is taken over.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from audiocnn.errors import AudiocnnError

try:  # pragma: no cover - always there on Linux and macOS
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, run unguarded
    fcntl = None  # type: ignore[assignment]


class FileWriteError(AudiocnnError):
    """A result file or folder could not be written (disk full, read-only, not a folder)."""


def _cause(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def write_error(path: str | os.PathLike, exc: OSError, *, existed: bool) -> FileWriteError:
    """The one-line error of a failed write of ``path``."""
    kept = "the previous file is unchanged" if existed else "nothing was written"
    return FileWriteError(f"{path}: cannot write ({_cause(exc)}); {kept}")


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename in ``path`` durable (best effort: not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temp_path(path: str | os.PathLike) -> Path:
    """The temp file name a write of ``path`` uses (hidden, per process)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically; ``durable=False`` skips the fsyncs where
    losing the file to a power cut only means redoing work.

    Raises :class:`FileWriteError` (temp file removed, old file intact) when it fails.
    """
    path = Path(path)
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FileWriteError(f"{path}: cannot create its folder ({_cause(exc)})") from None
    tmp = temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise write_error(path, exc, existed=existed) from None
        raise
    if durable:
        fsync_dir(path.parent)


def json_text(obj: object) -> str:
    """``obj`` as one line of strict JSON, UTF-8 text as it is.

    Never a bare ``NaN`` or ``Infinity`` (not JSON: a ValueError instead). A file name
    that is not valid UTF-8 is held by Python as surrogate escapes (byte ``0xff`` as
    ``\\udcff``, see :func:`os.fsdecode`); they are written as the JSON escape ``\\udcff``,
    so the text stays valid UTF-8 and ``os.fsencode(json.loads(text)[...])`` gives back the
    name's exact bytes.
    """
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def atomic_write_npy(path: str | os.PathLike, array: np.ndarray, *, durable: bool = True) -> None:
    """Write ``array`` as a ``.npy`` file atomically (see :func:`atomic_write_bytes`)."""
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue(), durable=durable)


def ensure_writable_dir(path: str | os.PathLike, what: str | None = None) -> Path:
    """Create ``path`` if needed and check a file can be written into it, so that a
    command fails before its slow part rather than after it. ``what`` (e.g. ``--out``)
    prefixes the message. Raises :class:`FileWriteError`."""
    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FileWriteError(f"{label}: cannot create the folder ({_cause(exc)})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise FileWriteError(f"{label}: the folder is not writable")
    try:  # access() does not see every reason (immutable folders, some network mounts)
        fd, probe = tempfile.mkstemp(prefix=".audiocnn-write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise FileWriteError(f"{label}: the folder is not writable ({_cause(exc)})") from None
    return path


# -- locks -----------------------------------------------------------------------------------

#: lock descriptors held by this process (closed in forked children)
_HELD: dict[int, Path] = {}


def _close_locks_in_child() -> None:
    # A forked child shares the parent's open file description, and with it the flock:
    # closing the child's copy does not release the parent's lock, it only stops the
    # child from keeping the lock alive after the parent is gone.
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_locks_in_child)


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of ``pid`` from /proc, or None where there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    return (fields[0], fields[19]) if len(fields) > 19 else None


def _holder_alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, start = stat
    if state in ("Z", "X"):  # killed, not reaped yet
        return False
    return started is None or start == started  # else: the PID was reused


def _read_holder(fd: int) -> tuple[int, str | None] | None:
    try:
        words = os.pread(fd, 64, 0).decode("ascii", "replace").split()
        return int(words[0]), (words[1] if len(words) > 1 else None)
    except (OSError, ValueError, IndexError):
        return None


def _same_file(path: Path, fd: int) -> bool:
    try:
        a, b = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _break_stale(path: Path, fd: int) -> None:
    """Unlink the lock file ``fd`` refers to, unless someone replaced it meanwhile; the
    folder's own flock makes check-and-unlink one step between competing processes."""
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(dfd, fcntl.LOCK_EX)
        if _same_file(path, fd):
            os.unlink(path)
    finally:
        os.close(dfd)


def _try_lock(path: Path) -> tuple[int | None, int | None]:
    """``(fd, None)`` when locked; ``(None, holder PID or None)`` when busy; ``(None, -1)``
    to try again (a stale lock was broken, or the file was replaced under us)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            os.close(fd)
            raise
        holder = _read_holder(fd)
        if holder is None or _holder_alive(*holder):
            os.close(fd)
            return None, holder[0] if holder else None
        _break_stale(path, fd)
        os.close(fd)
        return None, -1
    if not _same_file(path, fd):  # released and removed between our open and flock
        os.close(fd)
        return None, -1
    stat = _proc_stat(os.getpid())
    record = f"{os.getpid()} {stat[1]}\n" if stat else f"{os.getpid()}\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, record.encode("ascii"), 0)
    return fd, None


def acquire_lock(path: str | os.PathLike, busy: Callable[[int | None], AudiocnnError]) -> int | None:
    """Take the exclusive lock ``path`` without waiting; ``busy(holder_pid)`` is the error
    raised when a live process holds it. Returns the descriptor (None without flock)."""
    path = Path(path)
    if fcntl is None:  # pragma: no cover - Windows
        return None
    for _ in range(5):
        try:
            fd, holder = _try_lock(path)
        except OSError as exc:
            raise FileWriteError(f"{path}: cannot create the lock file ({_cause(exc)})") from None
        if fd is not None:
            _HELD[fd] = path
            return fd
        if holder != -1:
            raise busy(holder)
    raise busy(None)


def release_lock(fd: int | None) -> None:
    """Remove the lock file (while still holding it, so nobody locks a doomed file) and
    unlock. Safe to call with None."""
    if fd is None:
        return
    path = _HELD.pop(fd, None)
    if path is not None and _same_file(path, fd):
        with contextlib.suppress(OSError):
            os.unlink(path)
    with contextlib.suppress(OSError):
        os.close(fd)


@contextlib.contextmanager
def held_lock(path: str | os.PathLike, busy: Callable[[int | None], AudiocnnError]) -> Iterator[None]:
    """``acquire_lock`` for the duration of a ``with`` block."""
    fd = acquire_lock(path, busy)
    try:
        yield
    finally:
        release_lock(fd)
