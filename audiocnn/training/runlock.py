"""One training per run folder: ``<run_dir>/train.lock`` (flock + the holder's PID).

Two ``audiocnn train --run-dir R`` at once would interleave their epochs in one
``metrics.csv`` and overwrite each other's ``last.pt``; the second is refused before it
writes anything, naming the first one's PID. The lock file is removed on exit; a lock left
by a killed run is free (the kernel drops a dead process's flock) or, when a child of the
dead run still holds it, taken over (see :mod:`audiocnn.fileio`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Iterator

from audiocnn.errors import AudiocnnError
from audiocnn.fileio import FileWriteError, acquire_lock, release_lock

log = logging.getLogger("audiocnn.train")

RUN_LOCK_NAME = "train.lock"
#: what ``audiocnn train`` writes into a run folder (what ``--restart`` removes)
RUN_OUTPUTS = ("last.pt", "last.prev.pt", "best.safetensors", "metrics.csv", "curves.png", "config.yaml",
               "tensorboard")


class RunFolderBusy(AudiocnnError):
    """Another training is writing this run folder right now."""


def _busy(run_dir: Path):
    def make(pid: int | None) -> RunFolderBusy:
        who = f" (PID {pid})" if pid else ""
        return RunFolderBusy(
            f"{run_dir}: another `audiocnn train`{who} is using this run folder right now",
            hint="wait for it to finish, or pass another --run-dir",
        )

    return make


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold ``run_dir``'s lock for a ``with`` block (creating the folder); a folder this
    call created and nothing else wrote into is removed again on the way out."""
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FileWriteError(f"{run_dir}: cannot create the run folder ({exc.strerror or exc})") from None
    fd = None
    try:
        fd = acquire_lock(run_dir / RUN_LOCK_NAME, _busy(run_dir))
        yield run_dir
    finally:
        release_lock(fd)
        if created:
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # only succeeds when empty


def holds_run(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` already holds (part of) a training run's state."""
    run_dir = Path(run_dir)
    return (run_dir / "last.pt").exists() or (run_dir / "last.prev.pt").exists()


def clear_run(run_dir: str | os.PathLike) -> list[str]:
    """Remove what an earlier training wrote into ``run_dir`` (``--restart``); other
    files (evaluations, notes) are left alone. Returns the names removed."""
    run_dir = Path(run_dir)
    removed = []
    for name in RUN_OUTPUTS:
        p = run_dir / name
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
            else:
                continue
        except OSError as exc:
            raise FileWriteError(f"{p}: cannot remove it to restart the run ({exc.strerror or exc})") from None
        removed.append(name)
    if removed:
        log.info("restart: removed %s from %s", ", ".join(removed), run_dir)
    return removed
