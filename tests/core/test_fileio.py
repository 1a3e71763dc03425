"""Atomic writes: a write that fails (replace, fsync, write) leaves no temp file and keeps
the old one; read-only or uncreatable folders are one clear error."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from audiocnn import fileio

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("fail", ["replace", "fsync", "write"])
def test_atomic_write_removes_its_temp_file_and_keeps_the_old_one(tmp_path, monkeypatch, fail):
    target = tmp_path / "out" / "metrics.json"
    fileio.atomic_write_bytes(target, b"old")
    enospc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if fail == "replace":
        monkeypatch.setattr(os, "replace", lambda *a, **k: (_ for _ in ()).throw(enospc))
    elif fail == "fsync":
        monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(enospc))
    else:
        real_fdopen = os.fdopen
        monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: _FullFile(real_fdopen(fd, *a, **k)))
    with pytest.raises(fileio.FileWriteError) as err:
        fileio.atomic_write_bytes(target, b"new" * 1000)
    monkeypatch.undo()
    assert str(err.value) == f"{target}: cannot write (No space left on device); the previous file is unchanged"
    assert sorted(p.name for p in target.parent.iterdir()) == ["metrics.json"]
    assert target.read_bytes() == b"old"


class _FullFile:
    """A writable file on a full disk: every write fails with ENOSPC."""

    def __init__(self, fh) -> None:
        self.fh = fh

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.fh.close()

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.fh, name)


def test_read_only_or_uncreatable_folders(tmp_path, monkeypatch):
    from audiocnn.training.config import TrainConfig, save_config
    from audiocnn.training.state import save_state

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(fileio.FileWriteError, match=r"file/run/config.yaml: cannot create its folder"):
        save_config(TrainConfig(dataset="d", model="m"), blocker / "run" / "config.yaml")
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "last.pt").write_bytes(b"previous")
    real_open = os.open

    def read_only(path, flags, *a, **kw):  # root ignores chmod: simulate EROFS
        if Path(path).parent == ro and flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(
        fileio.FileWriteError,
        match=r"ro/config.yaml: cannot write \(Read-only file system\); "
        "nothing was written",
    ):
        save_config(TrainConfig(dataset="d", model="m"), ro / "config.yaml")
    from audiocnn.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"ro/last.pt: cannot write \(Read-only file system\)"):
        save_state(ro / "last.pt", {"epoch": 3})
    monkeypatch.undo()
    assert sorted(p.name for p in ro.iterdir()) == ["last.pt"] and (ro / "last.pt").read_bytes() == b"previous"
