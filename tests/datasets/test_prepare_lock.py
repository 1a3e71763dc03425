"""One prepare at a time, and a read-only data dir: the lock names its holder, a dead
holder (or a forked child of one) does not block, a prepared copy still answers."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from audiocnn.datasets.lock import _try_flock, lock_path
from audiocnn.testing.commands import one_error_line, run_cli
from audiocnn.testing.datasets import make_folder

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("fast_retries")


# ----------------------------------------------------------------------------- read-only data dir
_RO_MOUNT = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" || exit 97; shift; exec "$@"'


def _run_read_only(folder: Path, args: list[str]) -> subprocess.CompletedProcess:
    """The CLI with ``folder`` read-only: mode 0555 for a normal user; for root (who writes
    anywhere) a read-only bind mount in a private mount namespace, seen by nobody else."""
    cmd = [sys.executable, "-m", "audiocnn.cli.main", *args]
    if os.geteuid() != 0:
        for p in [folder, *folder.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
        finally:
            for p in [folder, *folder.rglob("*")]:
                p.chmod(0o755 if p.is_dir() else 0o644)
    if shutil.which("unshare") is None:
        pytest.skip("running as root without unshare: no way to make a folder read-only")
    res = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", _RO_MOUNT, "sh", str(folder), *cmd],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    if res.returncode == 97 or "unshare failed" in res.stderr:
        pytest.skip(f"cannot make a read-only mount here: {res.stderr.strip()}")
    return res


def test_read_only_data_dir_is_one_line_and_a_prepared_copy_still_answers(tmp_path, capsys):
    src = make_folder(tmp_path / "music", {"calm": 3, "loud": 3})
    data = tmp_path / "data"
    data.mkdir()
    args = ["--data-dir", str(data), "prepare", "folder", "--source", str(src), "--name", "m", "-j", "1"]
    res = _run_read_only(data, args)
    line = one_error_line(res.stderr)
    assert res.returncode == 1 and line.startswith(f"error: {data}: not writable") and "--data-dir" in line

    assert run_cli(capsys, *args)[0] == 0  # prepared where it is writable ...
    res = _run_read_only(data, args)  # ... then read-only: asking again is still a no-op
    assert res.returncode == 0 and "nothing to do" in res.stderr, res.stderr


# ----------------------------------------------------------------------------- one prepare at a time
HOLDER = """
import sys, time
from pathlib import Path
from audiocnn.datasets.lock import prepare_lock
with prepare_lock(Path(sys.argv[1]), "m"):
    print("locked", flush=True)
    time.sleep(120)
"""

FORKER = """
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from audiocnn.datasets.lock import prepare_lock
with prepare_lock(Path(sys.argv[1]), "m"):
    if sys.argv[2] == "pool":  # the probe pool of `prepare -j N` (fork on Linux)
        pool = ProcessPoolExecutor(max_workers=1)
        child = pool.submit(os.getpid).result()
    else:
        child = os.fork()
        if child == 0:
            time.sleep(120)
            os._exit(0)
    print(child, flush=True)
    os._exit(0)  # the parent dies without cleaning up; its worker lives on
"""

RAW_FLOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, (sys.argv[2] + "\\n").encode())
print("locked", flush=True)
time.sleep(120)
"""


def _python(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True, cwd=REPO)


def _stop(proc_or_pid) -> None:
    if isinstance(proc_or_pid, int):
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc_or_pid, signal.SIGKILL)
        return
    proc_or_pid.kill()
    proc_or_pid.wait(10)


def test_second_prepare_is_refused_naming_the_holder_and_a_dead_holder_does_not_block(tmp_path, capsys):
    src = make_folder(tmp_path / "music", {"calm": 3, "loud": 3})
    data = tmp_path / "data"
    holder = _python(HOLDER, str(data / "m" / ".state"))
    try:
        assert holder.stdout.readline().strip() == "locked"
        args = ["--data-dir", str(data), "prepare", "folder", "--source", str(src), "--name", "m", "-j", "1"]
        code, _out, err = run_cli(capsys, *args)
        line = one_error_line(err)
        assert code == 1 and line.startswith("error: m: another `audiocnn prepare`") and f"PID {holder.pid}" in line
        assert not (data / "m" / "manifest.jsonl").exists()
    finally:
        _stop(holder)  # SIGKILL: the kernel drops its lock
    code, _out, err = run_cli(capsys, *args)
    assert code == 0, err


@pytest.mark.parametrize("how", ["fork", "pool"])
def test_a_forked_child_does_not_keep_the_lock_of_a_dead_parent(tmp_path, how):
    state = tmp_path / "data" / "m" / ".state"
    forker = _python(FORKER, str(state), how)
    child = int(forker.stdout.readline())
    forker.wait(10)
    try:
        os.kill(child, 0)  # the orphan is alive ...
        # ... and holds nothing: it drops its copy of the lock right after the fork (a few ms,
        # longer on a busy machine), so probe for up to a second
        fd = None
        for _ in range(50):
            fd = _try_flock(lock_path(state))
            if fd is not None:
                break
            time.sleep(0.02)
        assert fd is not None, "the forked child still holds the prepare lock"
        os.close(fd)
    finally:
        _stop(child)


def test_a_lock_held_for_a_dead_pid_is_taken_over(tmp_path, capsys):
    src = make_folder(tmp_path / "music", {"calm": 3, "loud": 3})
    data = tmp_path / "data"
    (data / "m" / ".state").mkdir(parents=True)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    holder = _python(RAW_FLOCK, str(lock_path(data / "m" / ".state")), gone.stdout.strip())
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _out, err = run_cli(
            capsys, "--data-dir", str(data), "prepare", "folder", "--source", str(src), "--name", "m", "-j", "1"
        )
        assert code == 0, err
        assert f"lock of PID {gone.stdout.strip()}, which has exited" in err and "taking it over" in err
    finally:
        _stop(holder)
