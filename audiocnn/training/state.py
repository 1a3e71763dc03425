"""``last.pt``: everything needed to continue a run exactly where it stopped.

Model, optimiser, schedule, grad scaler, early-stopping state, best metric, the per-epoch
history (metrics.csv is regenerated from it, so the CSV can never hold an epoch that
``last.pt`` does not) and the RNG states of python, numpy and torch. Written atomically
(temp file + rename) once per epoch, so a kill at any moment leaves the previous epoch's
file intact.

The state before that is kept as ``last.prev.pt`` (a hard link, so it costs no disk
space until the next ``last.pt`` replaces it): should ``last.pt`` ever be unreadable (a
torn copy, a disk fault), ``--resume`` continues from the epoch before instead of losing
the run.

A run folder may come from someone else, so ``last.pt`` is read with
``torch.load(weights_only=True)``: tensors and plain python data only, never an object
whose unpickling would run code. What audiocnn writes is exactly that (numpy's RNG state
is saved as a tensor); the numpy array of a state written before that is allowed too. A
file that names anything else is refused, and not replaced by ``last.prev.pt`` either: it
did not come from audiocnn, so whoever changed the folder may have changed that one too.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audiocnn.errors import CheckpointError
from audiocnn.fileio import FileWriteError, atomic_write_bytes, temp_path

log = logging.getLogger("audiocnn.train")

STATE_FORMAT = 1


def rng_state() -> dict[str, Any]:
    """The global RNG states as plain data and tensors (what ``weights_only`` loads)."""
    name, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, key, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError, IndexError):  # resumed on a machine with fewer GPUs
            torch.cuda.set_rng_state_all(state["cuda"])


def previous_path(path: str | os.PathLike) -> Path:
    """``last.pt`` -> ``last.prev.pt``: the state saved before ``path``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _looks_complete(path: Path) -> bool:
    """Cheap check that ``path`` is a whole torch file (a zip with its central directory
    at the end): a truncated or empty file must never become the fallback."""
    try:
        with zipfile.ZipFile(path) as zf:
            return bool(zf.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def _keep_previous(path: Path) -> None:
    """Make ``last.prev.pt`` the current ``last.pt`` (which stays in place until the new
    one has been renamed over it)."""
    if not _looks_complete(path):
        return  # keep the older, good previous state rather than a broken one
    prev = previous_path(path)
    tmp = temp_path(prev)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        try:
            os.link(path, tmp)
        except OSError:  # no hard links here (some network or FUSE file systems): copy
            atomic_write_bytes(prev, path.read_bytes())
            return
        os.replace(tmp, prev)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise CheckpointError(f"{prev}: cannot keep the previous training state ({exc.strerror or exc})") from None


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``path`` atomically, keeping the state it replaces as ``last.prev.pt``.

    Raises CheckpointError (one line: path and cause) when the disk is full or the folder
    read-only; no temp file is left and the states already written stay readable.
    """
    path = Path(path)
    buf = io.BytesIO()
    torch.save({"format": STATE_FORMAT, **state}, buf)
    try:
        if path.is_file():
            _keep_previous(path)
        atomic_write_bytes(path, buf.getvalue())
    except FileWriteError as exc:
        raise CheckpointError(
            f"{exc.message} (training state after epoch {state.get('epoch', '?')})",
            hint=f"free some disk space, then continue with `audiocnn train CONFIG --run-dir {path.parent} --resume`",
        ) from None
    return path


class UnsafeStateError(CheckpointError):
    """A training state that would run code when unpickled: never loaded, no fallback."""


def _legacy_numpy_globals() -> list[Any]:
    """What the numpy RNG array in a state written before it became a tensor needs (an
    array of numbers: no code runs)."""
    return [np.ndarray(0).__reduce__()[0], np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def _read_state(path: Path) -> dict[str, Any]:
    try:
        with torch.serialization.safe_globals(_legacy_numpy_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, or not plain data
        _refuse_if_unsafe(path, exc)
        cause = f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else 'empty'}"
        if path.is_file() and path.stat().st_size == 0:
            cause = "empty file"
        raise CheckpointError(f"{path}: unreadable training state ({cause})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not an audiocnn training state (format {STATE_FORMAT})")
    return state


def _refuse_if_unsafe(path: Path, exc: Exception) -> None:
    """UnsafeStateError when ``path`` names python objects beyond tensors and plain data
    (read from the pickle's opcodes, nothing is executed)."""
    if not isinstance(exc, pickle.UnpicklingError):
        return
    try:
        with torch.serialization.safe_globals(_legacy_numpy_globals()):
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not readable enough to tell: an unreadable state
        return
    if names:
        raise UnsafeStateError(
            f"{path}: refused: this training state would run code when loaded (it calls "
            f"{', '.join(sorted(names)[:3])}); audiocnn never writes such a file, so it was not loaded",
            hint="someone changed this run folder, do not resume it: "
            f"start the run folder over with `audiocnn train CONFIG --run-dir {path.parent} --restart`, "
            "or train into a fresh --run-dir",
        )


def is_training_state(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a readable audiocnn training state (read safely, as resume does)."""
    try:
        _read_state(Path(path))
    except CheckpointError:
        return False
    return True


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """The state in ``path`` or, when that is unreadable or missing, the previous one
    (``last.prev.pt``) with a warning. CheckpointError names the file and the way out."""
    path = Path(path)
    prev = previous_path(path)
    if not path.is_file() and not prev.is_file():
        raise CheckpointError(
            f"{path}: no such file; nothing to resume",
            hint="start the run without --resume, or pass the --run-dir of an earlier run",
        )
    try:
        if not path.is_file():
            raise CheckpointError(f"{path}: no such file")
        return _read_state(path)
    except UnsafeStateError:
        raise  # never replaced by last.prev.pt: the folder has been tampered with
    except CheckpointError as exc:
        first = exc
    restart = (
        f"start the run folder over with `audiocnn train CONFIG --run-dir {path.parent} --restart`, "
        "or train into a fresh --run-dir"
    )
    if not prev.is_file():
        raise CheckpointError(f"{first.message}; there is no {prev.name} to fall back on", hint=restart)
    try:
        state = _read_state(prev)
    except UnsafeStateError:
        raise
    except CheckpointError as exc:
        raise CheckpointError(f"{first.message}; {exc.message}", hint=restart) from None
    log.warning("%s; resuming from the previous state %s (after epoch %s)", first.message, prev, state.get("epoch"))
    return state


class Recoverables:
    """One registry of what ``last.pt`` holds: each entry is saved and restored by the
    same pair of functions, in the order added, so what is saved and what a resume
    restores can never drift apart.

    ``add(name, obj)`` takes anything with ``state_dict``/``load_state_dict``;
    ``add(name, get=..., set=...)`` takes the pair itself (e.g. an optimiser that must be
    rebuilt before its state is loaded).
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple[Any, Any]] = {}

    def add(self, name: str, obj: Any = None, *, get: Any = None, set: Any = None) -> None:  # noqa: A002
        if name in self._entries:
            raise ValueError(f"recoverable {name!r} is registered twice")
        if obj is not None:
            get, set = obj.state_dict, obj.load_state_dict
        if get is None or set is None:
            raise ValueError(f"recoverable {name!r} needs an object or a get/set pair")
        self._entries[name] = (get, set)

    def state_dict(self) -> dict[str, Any]:
        return {name: get() for name, (get, _set) in self._entries.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = [name for name in self._entries if name not in state]
        if missing:
            raise CheckpointError(f"training state lacks {', '.join(missing)}; it was written by another version")
        for name, (_get, set_) in self._entries.items():
            set_(state[name])
