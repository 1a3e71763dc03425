"""README's commands stay true: every `audiocnn ...` line names a real command and options
that command accepts, and the file opens with the two commands CI runs."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from audiocnn.cli.main import run

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _code_lines() -> list[str]:
    lines = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", README, flags=re.S):
        for line in block.splitlines():
            line = line.split(" # ")[0].strip()
            if line.startswith("audiocnn "):
                lines.append(line)
    return lines


def _command_and_options(line: str) -> tuple[list[str], list[str]]:
    words = shlex.split(line.replace("[", " ").replace("]", " ").replace("|", " "))[1:]
    cmd: list[str] = []
    for w in words:
        if w.startswith("-"):
            break
        if (w.isidentifier() or w in ("pretrained",)) and (
            not cmd or (cmd == ["pretrained"] and w in ("list", "import"))
        ):
            cmd.append(w)
            continue
        break
    opts = sorted({w.split("=")[0] for w in words if w.startswith("--")})
    return cmd, opts


LINES = _code_lines()


def test_readme_shows_commands() -> None:
    assert len(LINES) >= 15


@pytest.mark.parametrize("line", LINES)
def test_readme_command_and_options_exist(line: str, capsys) -> None:
    cmd, opts = _command_and_options(line)
    global_opts = {"--help", "--version", "--data-dir", "--verbose"}
    if not cmd:
        assert set(opts) <= global_opts, line
        return
    assert run([*cmd, "--help"]) == 0, f"README shows `{line}`, but `audiocnn {' '.join(cmd)}` does not exist"
    help_text = capsys.readouterr().out
    for opt in opts:
        if opt in global_opts:
            continue
        assert opt in help_text, f"README shows `{line}`, but `audiocnn {' '.join(cmd)}` has no {opt}"


def test_readme_opens_with_the_two_ci_commands() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "readme_commands.py"), str(ROOT / "README.md")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert len(out) == 2
    assert "pip install" in out[0] and "audiocnn tag examples/chorale.flac" in out[0]
    assert out[1] == ".venv/bin/python -m pytest -q"
    assert (ROOT / "examples" / "chorale.flac").is_file()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "readme_commands.py README.md" in ci
