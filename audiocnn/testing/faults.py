"""Faults injected with pytest's ``monkeypatch``: a folder that is not writable, a disk
that fills."""

from __future__ import annotations

import errno
import os
from pathlib import Path


def deny_write(monkeypatch, folder: Path) -> None:
    """A read-only folder as access(2) reports it (root ignores permission bits)."""
    real = os.access

    def access(path, mode, *a, **kw):
        if Path(path) == folder and mode & os.W_OK:
            return False
        return real(path, mode, *a, **kw)

    monkeypatch.setattr(os, "access", access)


def enospc_for(monkeypatch, name: str, after: int = 0) -> list[str]:
    """os.replace onto a file called ``name`` fails with ENOSPC after ``after`` successes."""
    real = os.replace
    seen: list[str] = []

    def replace(src, dst, *a, **kw):
        if Path(dst).name == name:
            seen.append(str(dst))
            if len(seen) > after:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", replace)
    return seen
