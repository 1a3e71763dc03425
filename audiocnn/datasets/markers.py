"""Completion markers: ``<state dir>/<key>.done``, a small JSON record written last
(atomically) by a step that finished, so running it again is a no-op and an interrupted
step is redone."""

from __future__ import annotations

import json
from pathlib import Path

from audiocnn.fileio import atomic_write_bytes


def marker_path(state_dir: Path, key: str) -> Path:
    return state_dir / f"{key}.done"


def read_marker(state_dir: Path, key: str) -> dict | None:
    p = marker_path(state_dir, key)
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def write_marker(state_dir: Path, key: str, payload: dict) -> None:
    atomic_write_bytes(marker_path(state_dir, key), json.dumps(payload, indent=1, sort_keys=True).encode("utf-8"))


def clear_marker(state_dir: Path, key: str) -> None:
    marker_path(state_dir, key).unlink(missing_ok=True)
