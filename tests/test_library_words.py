"""The library speaks in its arguments, the CLI in flags: no string in training, models,
pretrained, the front-ends, the pipeline or the config reader names a ``--flag`` of
audiocnn (a ``pip install --no-deps`` command is pip's), and a run-folder error read
through the CLI names the flags of `audiocnn train`."""

from __future__ import annotations

from pathlib import Path

import pytest

from audiocnn.cli.main import run
from audiocnn.errors import UsageError
from audiocnn.testing.source import flag_strings

PACKAGE = Path(__file__).resolve().parents[1] / "audiocnn"
AREAS = ["training", "models", "pretrained", "features/frontends.py", "pipeline.py", "configio.py", "splits.py"]


def area_modules() -> list[Path]:
    paths = []
    for area in AREAS:
        p = PACKAGE / area
        paths += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return paths


@pytest.mark.parametrize("path", area_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_library_strings_name_no_flag(path):
    flags = [f"line {line}: {text[:80]!r}" for line, text in flag_strings(path) if not text.startswith("pip install")]
    assert not flags, f"{path.name}: strings that name a --flag (name the argument; cli/ shows it as a flag): {flags}"


def test_the_checker_sees_a_flag(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('def f(x):\n    """Docs may say --resume."""\n    raise ValueError(f"--resume {x}")\n')
    assert [text for _, text in flag_strings(bad)] == ["--resume "]


def test_run_folder_errors_name_arguments_and_the_cli_shows_flags(tmp_path, capsys):
    from audiocnn.training.command import train_command

    with pytest.raises(UsageError) as err:
        train_command(tmp_path / "c.yaml", [], run_dir=None, data_dir=tmp_path, restart=True)
    assert err.value.message == "restart=True needs the `run_dir` to start over"
    assert err.value.arguments == ("restart", "run_dir")
    assert run(["--data-dir", str(tmp_path), "train", str(tmp_path / "c.yaml"), "--restart"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == "error: --restart needs the --run-dir to start over (pass --run-dir)"
