"""The library speaks in its arguments, the CLI in flags: no string in training, models,
pretrained, the front-ends, the pipeline or the config reader names a ``--flag`` of
audiocnn (a ``pip install --no-deps`` command is pip's), and a run-folder error read
through the CLI names the flags of `audiocnn train`."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from audiocnn.cli.main import run
from audiocnn.errors import UsageError

PACKAGE = Path(__file__).resolve().parents[1] / "audiocnn"
AREAS = ["training", "models", "pretrained", "features/frontends.py", "pipeline.py", "configio.py", "splits.py"]
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]+")


def strings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string literal (f-strings by their literal parts), docstrings aside."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and n.body
        and isinstance(n.body[0], ast.Expr)
        and isinstance(n.body[0].value, ast.Constant)
    }
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.JoinedStr):
            skip.update(id(v) for v in n.values)
            out.append((n.lineno, "".join(v.value for v in n.values if isinstance(v, ast.Constant))))
    out += [
        (n.lineno, n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skip
    ]
    return out


def area_modules() -> list[Path]:
    paths = []
    for area in AREAS:
        p = PACKAGE / area
        paths += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return paths


@pytest.mark.parametrize("path", area_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_library_strings_name_no_flag(path):
    flags = [
        f"line {line}: {text[:80]!r}"
        for line, text in strings(path)
        if FLAG.search(text) and not text.startswith("pip install")
    ]
    assert not flags, f"{path.name}: strings that name a --flag (name the argument; cli/ shows it as a flag): {flags}"


def test_the_checker_sees_a_flag(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('def f(x):\n    """Docs may say --resume."""\n    raise ValueError(f"--resume {x}")\n')
    assert [text for _, text in strings(bad) if FLAG.search(text)] == ["--resume "]


def test_run_folder_errors_name_arguments_and_the_cli_shows_flags(tmp_path, capsys):
    from audiocnn.training.command import train_command

    with pytest.raises(UsageError) as err:
        train_command(tmp_path / "c.yaml", [], run_dir=None, data_dir=tmp_path, restart=True)
    assert err.value.message == "restart=True needs the `run_dir` to start over"
    assert err.value.arguments == ("restart", "run_dir")
    assert run(["--data-dir", str(tmp_path), "train", str(tmp_path / "c.yaml"), "--restart"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == "error: --restart needs the --run-dir to start over (pass --run-dir)"
