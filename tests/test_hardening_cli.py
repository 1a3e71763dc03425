"""Bad inputs are one line (no traceback): unwritable output folders, broken or
out-of-range configs; `tag`'s summary and table survive odd file names; `evaluate`
takes the pretrained names `tag` takes. Every hint names a command that exists."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from conftest import synth_tone, write_audio
from tag_fixtures import SR, make_checkpoint
from train_helpers import TinyMel, last_line, make_dataset, run_limited, write_config

from audiocnn.cli.main import run
from audiocnn.models.checkpoint import model_metadata, save_checkpoint

torch.set_num_threads(1)


def _one_line_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), err
    assert "Traceback" not in err, err
    return lines[-1]


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


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", "test-probe-mel")


@pytest.fixture(scope="module")
def song(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("songs")
    return write_audio(d / "a.wav", synth_tone(2.0, SR, seed=1), SR)


def _tag(capsys, *args: str) -> tuple[int, str, str]:
    code = run(["tag", *args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _deny_write(monkeypatch, folder: Path) -> None:
    """A read-only folder as access(2) reports it (root ignores permission bits)."""
    real = os.access

    def access(path, mode, *a, **kw):
        if Path(path) == folder and mode & os.W_OK:
            return False
        return real(path, mode, *a, **kw)

    monkeypatch.setattr(os, "access", access)


# -- 5. output folders ---------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--taggram", "--embeddings"])
def test_tag_read_only_output_folder_fails_before_the_model_loads(capsys, song, tmp_path, monkeypatch, option):
    out = tmp_path / "out"
    out.mkdir()
    _deny_write(monkeypatch, out)
    # the model does not exist: an error about it would mean it was loaded first
    code, stdout, err = _tag(capsys, str(song), "--model", str(tmp_path / "none.safetensors"), option, str(out))
    line = _one_line_error(err)
    assert code == 2 and stdout == ""
    assert line == f"error: {option} {out}: the folder is not writable"


def test_tag_output_folder_under_a_file(capsys, song, ckpt, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = _tag(capsys, str(song), "--model", str(ckpt), "--embeddings", str(blocker / "sub"))
    line = _one_line_error(err)
    assert code == 2 and line.startswith(f"error: --embeddings {blocker / 'sub'}: cannot create the folder (")


def test_evaluate_out_folder_unwritable_or_not_creatable(capsys, tmp_path, monkeypatch):
    bogus = tmp_path / "model.safetensors"
    bogus.write_bytes(b"not a checkpoint")  # would fail to load: the --out check must come first
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert run(["--data-dir", str(tmp_path), "evaluate", str(bogus), "--out", str(blocker / "ev")]) == 1
    line = _one_line_error(capsys.readouterr().err)
    assert line.startswith(f"error: --out {blocker / 'ev'}: cannot create the folder (")
    ro = tmp_path / "ro"
    ro.mkdir()
    _deny_write(monkeypatch, ro)
    assert run(["--data-dir", str(tmp_path), "evaluate", str(bogus), "--out", str(ro)]) == 1
    assert _one_line_error(capsys.readouterr().err) == f"error: --out {ro}: the folder is not writable"


# -- 5. configs ----------------------------------------------------------------------------------

BASE = "dataset: tones\nmodel: test-tiny-mel\n"


def _train_error(tmp_path, capsys, text: bytes | str, *sets: str) -> str:
    cfg = tmp_path / "exp.yaml"
    cfg.write_bytes(text if isinstance(text, bytes) else text.encode())
    args = ["--data-dir", str(tmp_path), "train", str(cfg), "--run-dir", str(tmp_path / "run"), "--device", "cpu"]
    for s in sets:
        args += ["--set", s]
    assert run(args) == 1
    line = _one_line_error(capsys.readouterr().err)
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
    results = run_limited(
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
    assert _one_line_error(capsys.readouterr().err) == "error: --set expects key=value, got 'n_mels'"


# -- 6. tag's summary and table -----------------------------------------------------------------


def test_summary_counts_missing_files(capsys, ckpt, song, tmp_path):
    code, out, err = _tag(capsys, str(tmp_path / "gone.wav"), str(song), "--model", str(ckpt))
    assert code == 1
    assert re.fullmatch(r"tagged 1 of 2 files in [\d.]+ s; 1 failed", err.strip().splitlines()[-1]), err


def test_control_characters_in_file_names_are_escaped(capsys, ckpt, tmp_path):
    odd = write_audio(tmp_path / "we\nird\x1b[2J.wav", synth_tone(2.0, SR, seed=2), SR)
    bad = tmp_path / "bro\nken.wav"
    bad.write_bytes(b"RIFF" + os.urandom(40))
    code, out, err = _tag(capsys, str(odd), str(bad), "--model", str(ckpt), "--top-k", "2")
    assert code == 1
    escaped = str(tmp_path / "we\\nird\\x1b[2J.wav")
    lines = out.splitlines()
    assert lines[0].startswith(f"{escaped}  [") and "\x1b" not in out
    assert len(lines) == 1 + 1 + 2 + 1 + 1  # head, column names, two tags, predicted, blank separator
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(tmp_path / "bro\\nken.wav") in errors[0]
    assert f"[1/2] {escaped}:" in err
    assert re.fullmatch(r"tagged 1 of 2 files in [\d.]+ s; 1 failed", err.strip().splitlines()[-1]), err


def test_a_one_line_error_stays_one_line(capsys, tmp_path):
    cfg = tmp_path / "x\ny.yaml"
    assert run(["train", str(cfg)]) == 1
    assert capsys.readouterr().err == f"error: {tmp_path}/x\\ny.yaml: no such config file (see the files in configs/)\n"


# -- 6. evaluate on a pretrained name -------------------------------------------------------------


@pytest.fixture()
def pretrained(tmp_path, monkeypatch) -> Path:
    """A data root with a prepared dataset, and a cache folder with a pretrained checkpoint
    under the name `musicnn-mtt` (a tiny model with that dataset's labels)."""
    from audiocnn.datasets.manifest import read_manifest
    from audiocnn.pretrained.musicnn import content_key, import_file_name, installed_package_dir, open_source

    data = tmp_path / "data"
    data.mkdir()
    make_dataset(data, "tones", "single-label")
    labels = read_manifest(data / "tones").labels
    torch.manual_seed(0)
    model = TinyMel(len(labels), "single-label")
    meta = model_metadata(model, labels, {}, pretrained="musicnn-mtt", dataset="MagnaTagATune", source="tests")
    key = content_key(open_source(None), "musicnn-mtt") if installed_package_dir() else "0" * 12
    monkeypatch.setenv("AUDIOCNN_CACHE_DIR", str(tmp_path / "cache"))
    save_checkpoint(tmp_path / "cache" / "pretrained" / import_file_name("musicnn-mtt", key), model, meta)
    return data


def test_evaluate_accepts_pretrained_names(pretrained, capsys):
    assert run(["--data-dir", str(pretrained), "evaluate", "musicnn-mtt", "--device", "cpu", "--no-plots"]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert line.startswith("error: musicnn-mtt: a pretrained model (trained on MagnaTagATune outside audiocnn)")
    assert "`audiocnn evaluate musicnn-mtt --dataset mtat`" in line and "`audiocnn prepare mtat`" in line
    assert_hints_are_real(line, capsys)
    assert run(["--data-dir", str(pretrained), "datasets"]) == 0
    assert "mtat" in capsys.readouterr().out
    code = run(
        [
            "--data-dir",
            str(pretrained),
            "evaluate",
            "musicnn-mtt",
            "--dataset",
            "tones",
            "--split",
            "valid",
            "--device",
            "cpu",
            "--no-plots",
            "--format",
            "json",
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    got = json.loads(out.out)
    assert got["n_clips"] == 4 and Path(got["checkpoint"]).name.startswith("musicnn-mtt-")
    # the results go beside the dataset, not into the model cache
    assert got["out_dir"] == str(pretrained / "tones" / "eval-musicnn-mtt-valid")


def test_evaluate_names_the_clips_it_could_not_score(tmp_path, capsys):
    """Deleted test clips: each named, one summary line, and the label only they had is
    not reported as "absent from the split"."""
    data = tmp_path / "data"
    data.mkdir()
    make_dataset(data, "tones", "single-label")  # test-012 and test-015 are the test split's "low" clips
    labels = ["high", "low", "mid"]
    ckpt = make_checkpoint(tmp_path / "m.safetensors", "test-probe-mel", labels=labels, task="single-label")
    for clip in ("test-012", "test-015"):
        (tmp_path / "tones-audio" / f"{clip}.wav").unlink()
    capsys.readouterr()
    out_dir = tmp_path / "eval"
    args = ["evaluate", str(ckpt), "--dataset", "tones", "--out", str(out_dir), "--no-plots"]
    assert run(["--data-dir", str(data), *args]) == 0
    cap = capsys.readouterr()
    assert (
        "2 of 4 test clip(s) could not be scored and are left out of these metrics: test-012, test-015 "
        "(check the files with `audiocnn verify tones`)" in cap.err
    )
    assert "not scored: low (its 2 clip(s) in the split could not be scored: test-012, test-015)" in cap.out
    assert "absent from the split" not in cap.out + cap.err
    assert json.loads((out_dir / "metrics.json").read_text())["unscored_clips"] == ["test-012", "test-015"]


def test_evaluate_unknown_target_hint_is_real(tmp_path, capsys):
    assert run(["--data-dir", str(tmp_path), "evaluate", "not-a-model"]) == 1
    line = _one_line_error(capsys.readouterr().err)
    assert "not-a-model: no such run folder or checkpoint file" in line
    assert_hints_are_real(line, capsys)


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
    line = _one_line_error(capsys.readouterr().err)
    for opt in ("--resume", "--restart", "--run-dir"):
        assert opt in line
    assert run(["train", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert all(opt in help_text for opt in ("--resume", "--restart", "--run-dir"))
    (rd / "last.pt").write_bytes(b"")
    (rd / "last.prev.pt").unlink(missing_ok=True)
    assert run(["--data-dir", str(data), "train", str(cfg), "--run-dir", str(rd), "--device", "cpu", "--resume"]) == 1
    assert_hints_are_real(_one_line_error(capsys.readouterr().err), capsys)


def test_evaluate_eval_chunks_is_bounded_before_anything_loads(tmp_path, capsys):
    """`--eval-chunks 1000000` ran for minutes: each chunk is one window through the network."""
    assert run(["--data-dir", str(tmp_path), "evaluate", "not-a-model", "--eval-chunks", "1000000"]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "--eval-chunks must be between 1 and 256, got 1000000" in line
