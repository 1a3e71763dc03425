"""Child processes for tests and benchmarks: run one under limits, and watch processes
through /proc."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path


def child_env(**extra: str) -> dict[str, str]:
    """This environment for a child Python, which imports what this process imports
    (``PYTHONPATH`` is this process's ``sys.path``), plus ``extra``."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **extra}


def run_limited(
    script: str,
    *args: str,
    memory_mb: int = 1024,
    file_mb: int | None = 16,
    timeout: float = 60,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """``python -c script args...`` with its address space capped at ``memory_mb``
    (RLIMIT_AS), the size of any file it writes capped at ``file_mb`` (a write past it
    fails with EFBIG, as on a full disk; None: no cap), and a timeout: a hostile input
    that regresses fails its test instead of eating the machine. ``env``: variables added
    to :func:`child_env`. Importing torch alone takes about 0.8 GB of address space."""

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
        if file_mb is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_mb << 20, file_mb << 20))
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limits,  # noqa: PLW1509 (no threads to deadlock in the child before exec)
        cwd=cwd,
        env=child_env(**(env or {})),
    )


def proc_state(pid: int) -> str | None:
    """State letter of ``pid`` (None when gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()[0]


def alive(pid: int) -> bool:
    return proc_state(pid) not in (None, "Z", "X")


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            if int(text[text.rfind(")") + 2 :].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def wait_for(predicate, timeout: float, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
