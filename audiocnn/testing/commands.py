"""``audiocnn`` commands run by tests and benchmarks: in this process, or several in one
limited child process; and the one error line a failed command prints."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from audiocnn.cli.main import run
from audiocnn.testing.processes import run_limited

#: what the child of :func:`run_commands` prints on stderr after each command
_EXIT = "--- exit "
_MANY = "import sys; from audiocnn.testing.commands import run_many; sys.exit(run_many(sys.argv[1]))"


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)`` of one in-process ``audiocnn`` command."""
    capsys.readouterr()
    code = run(list(args))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def run_commands(
    *commands: list[str], memory_mb: int = 2048, timeout: float = 60, cwd: Path | None = None
) -> list[tuple[int, str]]:
    """Each ``commands`` entry run as `audiocnn ARGS` (the test models registered), one
    after the other in one child process of :func:`run_limited` (address space capped at
    ``memory_mb``, ended after ``timeout`` seconds). Returns ``(exit code, stderr)`` per
    command."""
    proc = run_limited(
        _MANY,
        json.dumps(list(commands)),
        memory_mb=memory_mb,
        file_mb=None,
        timeout=timeout,
        cwd=cwd,
        env={"OMP_NUM_THREADS": "1"},
    )
    parts = proc.stderr.split(_EXIT)
    codes = [int(p.split("\n", 1)[0]) for p in parts[1:]]
    assert proc.returncode == 0 and len(codes) == len(commands), proc.stderr[-3000:]
    return [(code, err.split("\n", 1)[1] if i else err) for i, (code, err) in enumerate(zip(codes, parts))]


def run_many(commands_json: str) -> int:
    """The child of :func:`run_commands`: each command, then its exit code on stderr."""
    import torch  # deferred: only the child process runs commands this way

    import audiocnn.testing.models  # noqa: F401  # deferred: registers the test models in the child

    torch.set_num_threads(1)
    for args in json.loads(commands_json):
        code = run(args)
        sys.stderr.write(f"\n{_EXIT}{code}\n")
        sys.stderr.flush()
    return 0


def last_line(err: str) -> str:
    """The one error line a failed command prints (no traceback)."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in err, err
    return lines[-1]


def one_error_line(err: str) -> str:
    """The single `error:` line of a failed command; no traceback, no click 'Aborted!'."""
    assert "Traceback" not in err and "Aborted!" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def assert_hints_are_real(line: str, capsys) -> None:
    """Every `audiocnn ...` command quoted in ``line`` is a real command whose options
    appear in its --help."""
    quoted = re.findall(r"`(audiocnn [^`]*)`", line)
    for cmd in quoted:
        words = cmd.split()[1:]
        path = []
        for w in words:  # sub-commands, then the first argument or option
            if w.startswith("-") or path and not re.fullmatch(r"[a-z]+", w):
                break
            path.append(w)
            if run([*path, "--help"]) != 0:
                path.pop()
                break
        capsys.readouterr()
        assert path, f"{cmd!r} names no audiocnn command"
        assert run([*path, "--help"]) == 0
        help_text = capsys.readouterr().out
        for opt in (w for w in words if w.startswith("--")):
            assert opt in help_text, f"{cmd!r}: `audiocnn {' '.join(path)}` has no option {opt}"
