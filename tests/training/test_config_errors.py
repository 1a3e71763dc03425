"""Broken or out-of-range configs and overrides are one line (no traceback), and the
hints of `train`'s errors name options that exist."""

from __future__ import annotations

import pytest
import torch

from audiocnn.cli.main import run
from audiocnn.testing.commands import assert_hints_are_real, last_line, run_commands
from audiocnn.testing.training import make_dataset, write_config

torch.set_num_threads(1)

# -- 5. configs ----------------------------------------------------------------------------------

BASE = "dataset: tones\nmodel: test-tiny-mel\n"


def _train_error(tmp_path, capsys, text: bytes | str, *sets: str) -> str:
    cfg = tmp_path / "exp.yaml"
    cfg.write_bytes(text if isinstance(text, bytes) else text.encode())
    args = ["--data-dir", str(tmp_path), "train", str(cfg), "--run-dir", str(tmp_path / "run"), "--device", "cpu"]
    for s in sets:
        args += ["--set", s]
    assert run(args) == 1
    line = last_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()
    return line


def test_non_utf8_config(tmp_path, capsys):
    line = _train_error(tmp_path, capsys, BASE.encode() + b"# caf\xe9\n")
    assert line == f"error: {tmp_path / 'exp.yaml'}:3: not UTF-8 text (byte 0xe9 at offset 41) (save the file as UTF-8)"


def test_yaml_syntax_error_names_file_line_and_column(tmp_path, capsys):
    line = _train_error(tmp_path, capsys, BASE + "lr: [0.1\nepochs: 3\n")
    assert line.startswith(f"error: {tmp_path / 'exp.yaml'}:4:7: not valid YAML (")


def test_duplicate_yaml_key_is_an_error(tmp_path, capsys):
    line = _train_error(tmp_path, capsys, BASE + "lr: 0.1\nschedule:\n  name: plateau\n  name: cosine\n")
    assert f"{tmp_path / 'exp.yaml'}:6: duplicate key 'name' (first given on line 5)" in line
    line = _train_error(tmp_path, capsys, BASE + "lr: 0.1\nepochs: 2\nlr: 0.001\n")
    assert f"{tmp_path / 'exp.yaml'}:5: duplicate key 'lr' (first given on line 3)" in line


def _laughs(indent: str = "  ") -> str:
    """Nine levels of nine aliases ("billion laughs"): 9**9 values once expanded."""
    lines = [f"{indent}a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"{indent}a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return "\n".join(lines) + "\n"


#: the same as one flow value for --set (six levels of ten: 10**6 values)
FLOW_LAUGHS = (
    "[&a [1,1,1,1,1,1,1,1,1,1],"
    + ",".join(f"&{b} [" + ",".join([f"*{a}"] * 10) + "]" for a, b in zip("abcde", "bcdef"))
    + ","
    + ",".join(["*f"] * 9)
    + "]"
)


def test_yaml_alias_bombs_are_refused_at_once(tmp_path):
    """Aliases expanding past 100,000 values are refused before anything copies them;
    under an unknown key, the unknown key is the error. 2 GB, 60 s for all four."""
    bombs = {name: tmp_path / f"{name}.yaml" for name in ("nothere", "model_kwargs")}
    for name, cfg in bombs.items():
        cfg.write_text(BASE + f"{name}:\n" + _laughs())
    train = ["--data-dir", str(tmp_path), "train"]
    results = run_commands(
        *([*train, str(cfg), "--run-dir", str(tmp_path / "run")] for cfg in bombs.values()),
        [*train, str(bombs["nothere"]), "--run-dir", str(tmp_path / "run"), "--set", f"model_kwargs.x={FLOW_LAUGHS}"],
        ["--data-dir", str(tmp_path), "features", "tones", "--set", f"n_mels={FLOW_LAUGHS}"],
        timeout=60,
    )
    (c1, e1), (c2, e2), (c3, e3), (c4, e4) = results
    assert c1 == 1 and last_line(e1).startswith(f"error: {bombs['nothere']}: unknown config key 'nothere'; ")
    many = "YAML aliases expand to more than 100,000 values (write the values out; a config needs no aliases)"
    assert c2 == 1 and last_line(e2) == f"error: {bombs['model_kwargs']}: {many}"
    assert c3 == 1 and last_line(e3).startswith(f"error: {bombs['nothere']}: unknown config key 'nothere'; ")
    assert c4 == 2 and last_line(e4) == f"error: --set n_mels: {many}"
    assert not (tmp_path / "run").exists()


def test_self_referring_or_deep_yaml_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "exp.yaml"
    line = _train_error(tmp_path, capsys, BASE + "model_kwargs:\n  a: &x [1, *x]\n")
    assert line == f"error: {cfg}: a YAML alias refers to a value that contains it (write the value out)"
    line = _train_error(tmp_path, capsys, BASE + "model_kwargs: " + "[" * 5000 + "]" * 5000 + "\n")
    assert line == f"error: {cfg}: lists and mappings nested too deeply"
    line = _train_error(tmp_path, capsys, BASE, "model_kwargs.a=" + "[" * 70 + "]" * 70)
    assert line == f"error: {cfg}: --set model_kwargs.a: lists and mappings nested more than 64 levels deep"
    cfg.write_text(BASE + "model_kwargs: {a: &x [1, 2], b: *x}\n")  # a small alias is fine
    from audiocnn.training.config import load_config

    assert load_config(cfg).model_kwargs == {"a": [1, 2], "b": [1, 2]}


@pytest.mark.parametrize(
    "override, expect",
    [
        ("lr=nan", "config key 'lr' must be a finite number, got nan"),
        ("lr=.inf", "config key 'lr' must be a finite number, got inf"),
        ("grad_clip=nan", "config key 'grad_clip' must be a finite number, got nan"),
        ("schedule.sgd_lrs=[0.1, .nan]", "config key 'schedule.sgd_lrs' must be a finite number, got [0.1, nan]"),
        ("seed=-5", "config key 'seed' must be in [0, 4294967295], got -5"),
        ("seed=4294967296", "config key 'seed' must be in [0, 4294967295], got 4294967296"),
        ("momentum=1.5", "config key 'momentum' must be in [0, 1), got 1.5"),
        ("weight_decay=-1", "config key 'weight_decay' must be >= 0, got -1.0"),
        ("early_stopping.min_delta=-0.1", "config key 'early_stopping.min_delta' must be >= 0, got -0.1"),
        ("model_kwargs={a: 1, a: 2}", "cannot parse value '{a: 1, a: 2}' as YAML (duplicate key 'a')"),
    ],
)
def test_numeric_config_values_are_checked(tmp_path, capsys, override, expect):
    line = _train_error(tmp_path, capsys, BASE, override)
    assert line == f"error: {tmp_path / 'exp.yaml'}: {expect}"


def test_overrides_are_key_value_pairs_named_as_set(tmp_path, capsys):
    """The library names its argument (``overrides``); the CLI says --set, in train and features alike."""
    line = _train_error(tmp_path, capsys, BASE, "lr")
    assert line == f"error: {tmp_path / 'exp.yaml'}: --set expects key=value, got 'lr'"
    assert run(["--data-dir", str(tmp_path), "features", "tones", "--set", "n_mels"]) == 2
    assert last_line(capsys.readouterr().err) == "error: --set expects key=value, got 'n_mels'"


def test_a_one_line_error_stays_one_line(capsys, tmp_path):
    cfg = tmp_path / "x\ny.yaml"
    assert run(["train", str(cfg)]) == 1
    assert capsys.readouterr().err == f"error: {tmp_path}/x\\ny.yaml: no such config file (see the files in configs/)\n"


def test_train_hints_are_real(tmp_path, capsys):
    """The hints of the run-folder errors name real options of `audiocnn train`."""
    data = tmp_path / "data"
    data.mkdir()
    make_dataset(data, "tones", "single-label")
    cfg = write_config(tmp_path / "c.yaml", dataset="tones", model="test-tiny-mel", epochs=1)
    rd = tmp_path / "run"
    assert run(["--data-dir", str(data), "train", str(cfg), "--run-dir", str(rd), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert run(["--data-dir", str(data), "train", str(cfg), "--run-dir", str(rd), "--device", "cpu"]) == 2
    line = last_line(capsys.readouterr().err)
    for opt in ("--resume", "--restart", "--run-dir"):
        assert opt in line
    assert run(["train", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert all(opt in help_text for opt in ("--resume", "--restart", "--run-dir"))
    (rd / "last.pt").write_bytes(b"")
    (rd / "last.prev.pt").unlink(missing_ok=True)
    assert run(["--data-dir", str(data), "train", str(cfg), "--run-dir", str(rd), "--device", "cpu", "--resume"]) == 1
    assert_hints_are_real(last_line(capsys.readouterr().err), capsys)
