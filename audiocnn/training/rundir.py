"""The run folder: its layout, its lock, and which folder a ``train`` command uses.

``RunDir`` names every file ``audiocnn train`` writes (``config.yaml``, ``metrics.csv``,
``best.safetensors``, ``last.pt`` and ``last.prev.pt``, ``curves.png``, ``tensorboard/``,
``eval-<split>/``), so training, evaluation and resume agree on one layout.

A run folder says it is one: ``audiocnn-run.json`` is written before anything else goes
in. ``train`` writes into, restarts or deletes from no folder that is neither empty nor
marked (a folder from before the marker is recognised by its ``best.safetensors`` or
``last.pt``, and marked), so a user's own ``config.yaml`` or ``metrics.csv`` in a folder
named by mistake stays untouched; ``--restart`` deletes only the files training writes
(in ``tensorboard/``, only its event files).

One training per run folder: ``<run_dir>/train.lock`` (flock + the holder's PID). Two
``audiocnn train --run-dir R`` at once would interleave their epochs in one
``metrics.csv`` and overwrite each other's ``last.pt``; the second is refused before it
writes anything, naming the first one's PID. The lock file is removed on exit; a lock left
by a killed run is free (the kernel drops a dead process's flock) or, when a child of the
dead run still holds it, taken over (see :mod:`audiocnn.fileio`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator

from audiocnn import __version__
from audiocnn.constants import BEST_CHECKPOINT_NAME
from audiocnn.errors import AudiocnnError, UsageError
from audiocnn.fileio import FileWriteError, acquire_lock, atomic_write_bytes, release_lock
from audiocnn.models.checkpoint import read_metadata
from audiocnn.training.config import TrainConfig, save_config
from audiocnn.training.state import is_training_state

log = logging.getLogger("audiocnn.train")

CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.csv"
BEST_NAME = BEST_CHECKPOINT_NAME
LAST_NAME = "last.pt"
PREV_NAME = "last.prev.pt"
CURVES_NAME = "curves.png"
FILTERS_PNG_NAME = "harmonic_filters.png"  # harmonic-cnn: its band-pass filters, initial and learned
FILTERS_CSV_NAME = "harmonic_filters.csv"
TENSORBOARD_NAME = "tensorboard"
RUN_LOCK_NAME = "train.lock"
RUN_MARKER_NAME = "audiocnn-run.json"
#: what ``audiocnn train`` writes into a run folder (what ``--restart`` removes; of
#: ``tensorboard/`` only the event files, see :data:`TENSORBOARD_EVENTS`)
RUN_OUTPUTS = (
    LAST_NAME,
    PREV_NAME,
    BEST_NAME,
    METRICS_NAME,
    CURVES_NAME,
    FILTERS_PNG_NAME,
    FILTERS_CSV_NAME,
    CONFIG_NAME,
    TENSORBOARD_NAME,
)
#: the files tensorboard's SummaryWriter writes
TENSORBOARD_EVENTS = "events.out.tfevents.*"


@dataclass(frozen=True)
class RunDir:
    """One run folder and the names of what lives in it."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def __str__(self) -> str:
        return str(self.path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def config(self) -> Path:
        return self.path / CONFIG_NAME

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_NAME

    @property
    def best(self) -> Path:
        return self.path / BEST_NAME

    @property
    def last(self) -> Path:
        return self.path / LAST_NAME

    @property
    def curves(self) -> Path:
        return self.path / CURVES_NAME

    @property
    def filters_png(self) -> Path:
        return self.path / FILTERS_PNG_NAME

    @property
    def filters_csv(self) -> Path:
        return self.path / FILTERS_CSV_NAME

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD_NAME

    def eval_dir(self, split: str) -> Path:
        return self.path / f"eval-{split}"

    def begin(self, config: TrainConfig) -> None:
        """Mark the folder as a run's (refusing one audiocnn did not write, see
        :func:`check_run_owner`) and write the resolved config: what a run does first."""
        mark_run_folder(self.path)
        save_config(config, self.config)

    def holds_run(self) -> bool:
        return holds_run(self.path)

    @classmethod
    def of_checkpoint(cls, checkpoint: Path) -> RunDir | None:
        """The run folder a checkpoint file lies in (None for a loose checkpoint)."""
        parent = Path(checkpoint).parent
        return cls(parent) if (parent / CONFIG_NAME).is_file() else None


def default_run_dir(config_name: str, runs_root: str | os.PathLike = "runs") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(runs_root) / f"{config_name}-{stamp}"


def latest_run_dir(config_name: str, runs_root: str | os.PathLike = "runs") -> Path | None:
    """Newest ``runs/<config_name>-<stamp>`` holding a ``last.pt`` (what ``--resume`` picks)."""
    root = Path(runs_root)
    if not root.is_dir():
        return None
    pat = re.compile(re.escape(config_name) + r"-\d{8}-\d{6}(-\d+)?$")
    runs = sorted(p for p in root.iterdir() if p.is_dir() and pat.match(p.name) and (p / LAST_NAME).is_file())
    return runs[-1] if runs else None


def unique_path(path: Path) -> Path:
    """``path``, or ``path-1``, ``path-2``... when it exists (two runs started in one second)."""
    if not path.exists():
        return path
    i = 1
    while Path(f"{path}-{i}").exists():
        i += 1
    return Path(f"{path}-{i}")


def choose_run_dir(config_name: str, run_dir: str | os.PathLike | None, *, resume: bool, world_size: int) -> RunDir:
    """The folder a ``train`` command writes: the one given; with ``resume`` the newest run
    of the config; else a new ``runs/<config>-<timestamp>``."""
    if run_dir:
        return RunDir(Path(run_dir))
    if resume:
        found = latest_run_dir(config_name)
        if found is None:
            raise UsageError(
                f"resume=True: no earlier run of {config_name!r} under runs/",
                hint="pass `run_dir`",
                arguments=("resume", "run_dir"),
            )
        return RunDir(found)
    if world_size > 1:
        raise UsageError(
            "with torchrun every process must agree on the run folder", hint="pass `run_dir`", arguments=("run_dir",)
        )
    return RunDir(unique_path(default_run_dir(config_name)))


def check_run_folder(run: RunDir, *, resume: bool, restart: bool, is_main: bool) -> None:
    """Refuse a folder audiocnn did not write, and to overwrite an earlier run unless asked
    to resume it or to start it over (``restart`` clears what training wrote; evaluations
    and notes stay)."""
    if resume and restart:
        raise UsageError(
            "resume=True and restart=True contradict each other",
            hint="pass one of them",
            arguments=("resume", "restart"),
        )
    check_run_owner(run.path)
    if restart and is_main:
        clear_run(run.path)
    elif not resume and not restart and run.holds_run():
        raise UsageError(
            f"{run.path} already holds a run",
            hint="add resume=True to continue it, restart=True to start it over, or choose another `run_dir`",
            arguments=("resume", "restart", "run_dir"),
        )


def is_run_folder(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds an audiocnn run: its marker, or (a folder written before
    the marker) an audiocnn ``best.safetensors`` or training state."""
    run_dir = Path(run_dir)
    if (run_dir / RUN_MARKER_NAME).is_file():
        return True
    with contextlib.suppress(AudiocnnError):
        if (run_dir / BEST_NAME).is_file() and read_metadata(run_dir / BEST_NAME):
            return True
    return any(is_training_state(run_dir / name) for name in (LAST_NAME, PREV_NAME) if (run_dir / name).is_file())


def check_run_owner(run_dir: str | os.PathLike) -> None:
    """UsageError unless ``run_dir`` is missing, empty (but for its lock) or an audiocnn run
    folder: training overwrites and ``--restart`` deletes files by name, which must never
    be a user's own ``config.yaml``, ``metrics.csv`` or ``tensorboard/``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    others = sorted(p.name for p in run_dir.iterdir() if p.name != RUN_LOCK_NAME)
    if others and not is_run_folder(run_dir):
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise UsageError(
            f"{run_dir} is not an audiocnn run folder (no {RUN_MARKER_NAME}) and not empty ({shown}); "
            "audiocnn writes into, restarts and deletes from no other folder",
            hint="pass a new or empty `run_dir`",
            arguments=("run_dir",),
        )


def mark_run_folder(run_dir: str | os.PathLike) -> None:
    """Write ``run_dir``'s marker (after :func:`check_run_owner`) before anything else."""
    run_dir = Path(run_dir)
    check_run_owner(run_dir)
    marker = run_dir / RUN_MARKER_NAME
    if not marker.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        created = datetime.now().isoformat(timespec="seconds")
        info = {"audiocnn": "run folder", "version": __version__, "created": created}
        atomic_write_bytes(marker, (json.dumps(info) + "\n").encode())


class RunFolderBusy(AudiocnnError):
    """Another training is writing this run folder right now."""


def _busy(run_dir: Path):
    def make(pid: int | None) -> RunFolderBusy:
        who = f" (PID {pid})" if pid else ""
        return RunFolderBusy(
            f"{run_dir}: another `audiocnn train`{who} is using this run folder right now",
            hint="wait for it to finish, or pass another `run_dir`",
            arguments=("run_dir",),
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
    """Remove what an earlier training wrote into ``run_dir`` (``--restart``, after
    :func:`check_run_owner`); other files (evaluations, notes, a user's files in
    ``tensorboard/``) are left alone. Returns the names removed."""
    run_dir = Path(run_dir)
    removed = []
    for name in RUN_OUTPUTS:
        p = run_dir / name
        try:
            if p.is_dir() and not p.is_symlink():
                if name != TENSORBOARD_NAME:
                    continue
                for event in p.glob(TENSORBOARD_EVENTS):
                    event.unlink()
                with contextlib.suppress(OSError):
                    p.rmdir()  # only when nothing else is in it
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
