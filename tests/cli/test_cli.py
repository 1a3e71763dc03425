"""CLI skeleton: every command has help, errors are one line, exit codes are right."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import typer

from audiocnn import __version__
from audiocnn.cli import common
from audiocnn.cli.main import app, run
from audiocnn.errors import DatasetError, NotAvailableError

COMMANDS = ["prepare", "verify", "info", "datasets", "models", "train", "evaluate", "tag"]


def test_help_lists_every_command(capsys) -> None:
    assert run(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", COMMANDS)
def test_command_help(capsys, name: str) -> None:
    assert run([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"audiocnn {name}" in out
    assert "Usage" in out


def test_version(capsys) -> None:
    assert run(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"audiocnn {__version__}"


def test_unknown_command_is_usage_error(capsys) -> None:
    assert run(["frobnicate"]) == 2
    assert "No such command" in capsys.readouterr().err


@pytest.fixture()
def temp_command():
    """Add a command to the app for one test, then remove it again."""
    added = []

    def add(fn, name):
        app.command(name)(fn)
        added.append(app.registered_commands[-1])

    yield add
    for cmd in added:
        app.registered_commands.remove(cmd)


def test_not_available_exits_2_with_one_line(capsys, temp_command) -> None:
    def later() -> None:
        raise NotAvailableError("`audiocnn later` is not available yet in this version")

    temp_command(later, "later")
    assert run(["later"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "error: `audiocnn later` is not available yet in this version\n"


def test_error_is_one_line_unless_verbose(capsys, temp_command) -> None:
    def broken() -> None:
        raise DatasetError("data/x/manifest.jsonl: no manifest", hint="run `audiocnn prepare x`")

    temp_command(broken, "broken")
    assert run(["broken"]) == 1
    err = capsys.readouterr().err
    assert err == "error: data/x/manifest.jsonl: no manifest (run `audiocnn prepare x`)\n"
    assert run(["-v", "broken"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("(run `audiocnn prepare x`)")


def test_data_dir_option_and_env(tmp_path, monkeypatch, temp_command) -> None:
    seen = []

    def where() -> None:
        seen.append(common.state.data_dir)

    temp_command(where, "where")
    monkeypatch.delenv("AUDIOCNN_DATA_DIR", raising=False)
    assert run(["where"]) == 0
    monkeypatch.setenv("AUDIOCNN_DATA_DIR", str(tmp_path / "env"))
    assert run(["where"]) == 0
    assert run(["--data-dir", str(tmp_path / "opt"), "where"]) == 0
    assert [str(p) for p in seen] == ["data", str(tmp_path / "env"), str(tmp_path / "opt")]


def test_console_script_entry_point() -> None:
    proc = subprocess.run([sys.executable, "-m", "audiocnn", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"audiocnn {__version__}"


def test_typer_app_has_no_hidden_commands() -> None:
    names = {c.name for c in app.registered_commands}
    assert set(COMMANDS) <= names
    assert isinstance(app, typer.Typer)


def test_the_flags_of_next_calls_are_real_options(capsys):
    """Each flag cli/ writes for a library argument of a suggested command is an option of it."""
    for command, names in common.COMMAND_FLAGS.items():
        assert run([command, "--help"]) == 0
        help_text = capsys.readouterr().out
        for flag in names.values():
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text), f"{command} has no option {flag}"
