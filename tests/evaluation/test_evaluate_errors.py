"""`evaluate`'s bad inputs are one line (no traceback): an unwritable --out, an unknown
target, too many chunks; it takes the pretrained names `tag` takes and names the clips
it could not score. Every hint names a command that exists."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from audiocnn.cli.main import run
from audiocnn.datasets.manifest import read_manifest, write_manifest
from audiocnn.models.checkpoint import model_metadata, save_checkpoint
from audiocnn.testing.commands import assert_hints_are_real, last_line
from audiocnn.testing.faults import deny_write
from audiocnn.testing.models import TinyMel, make_checkpoint
from audiocnn.testing.training import make_dataset

torch.set_num_threads(1)


def test_evaluate_out_folder_unwritable_or_not_creatable(capsys, tmp_path, monkeypatch):
    bogus = tmp_path / "model.safetensors"
    bogus.write_bytes(b"not a checkpoint")  # would fail to load: the --out check must come first
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert run(["--data-dir", str(tmp_path), "evaluate", str(bogus), "--out", str(blocker / "ev")]) == 1
    line = last_line(capsys.readouterr().err)
    assert line.startswith(f"error: --out {blocker / 'ev'}: cannot create the folder (")
    ro = tmp_path / "ro"
    ro.mkdir()
    deny_write(monkeypatch, ro)
    assert run(["--data-dir", str(tmp_path), "evaluate", str(bogus), "--out", str(ro)]) == 1
    assert last_line(capsys.readouterr().err) == f"error: --out {ro}: the folder is not writable"


# -- 6. evaluate on a pretrained name -------------------------------------------------------------


@pytest.fixture()
def pretrained(tmp_path, monkeypatch) -> Path:
    """A data root with a prepared dataset, and a cache folder with a pretrained checkpoint
    under the name `musicnn-mtt` (a tiny model with that dataset's labels)."""
    from audiocnn.datasets.manifest import read_manifest
    from audiocnn.pretrained.catalog import content_key, import_file_name, installed_package_dir, open_source

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
    line = last_line(capsys.readouterr().err)
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


def test_evaluate_writes_a_clip_name_that_is_not_utf8_as_its_bytes(tmp_path, capsys):
    """scores.csv and misclassified.csv name each clip's file: a name that is not UTF-8 goes
    out as its own bytes (as in tag's .csv results), and evaluate does not stop on it."""
    data = tmp_path / "data"
    data.mkdir()
    make_dataset(data, "tones", "single-label")
    manifest = read_manifest(data / "tones")
    audio = tmp_path / "tones-audio"
    clip = next(c for c in manifest.clips if c.split == "test")
    odd = os.fsdecode(os.fsencode(audio) + b"/odd\xff.wav")
    os.rename(audio / Path(clip.path).name, os.fsencode(odd))
    clips = [dataclasses.replace(c, path=odd) if c is clip else c for c in manifest.clips]
    write_manifest(dataclasses.replace(manifest, clips=clips), data / "tones")
    ckpt = make_checkpoint(tmp_path / "m.safetensors", "test-probe-mel", labels=manifest.labels, task="single-label")
    out_dir = tmp_path / "eval"
    args = ["evaluate", str(ckpt), "--dataset", "tones", "--out", str(out_dir), "--no-plots"]
    assert run(["--data-dir", str(data), *args]) == 0, capsys.readouterr().err
    assert os.fsencode(odd) in (out_dir / "scores.csv").read_bytes()


def test_evaluate_unknown_target_hint_is_real(tmp_path, capsys):
    assert run(["--data-dir", str(tmp_path), "evaluate", "not-a-model"]) == 1
    line = last_line(capsys.readouterr().err)
    assert "not-a-model: no such run folder or checkpoint file" in line
    assert_hints_are_real(line, capsys)


def test_evaluate_eval_chunks_is_bounded_before_anything_loads(tmp_path, capsys):
    """`--eval-chunks 1000000` ran for minutes: each chunk is one window through the network."""
    assert run(["--data-dir", str(tmp_path), "evaluate", "not-a-model", "--eval-chunks", "1000000"]) == 2
    line = last_line(capsys.readouterr().err)
    assert "--eval-chunks must be between 1 and 256, got 1000000" in line


def test_evaluate_of_a_run_folder_without_a_model_says_train_first(tmp_path, capsys):
    """The library names the next call (``train('CONFIG', run_dir=...)``); the CLI shows the command."""
    run_dir = tmp_path / "my run"
    run_dir.mkdir()
    assert run(["evaluate", str(run_dir), "--device", "cpu", "--no-plots"]) == 1
    line = last_line(capsys.readouterr().err)
    assert line == (
        f"error: {run_dir}: run folder without best.safetensors "
        f"(train first: `audiocnn train CONFIG --run-dir '{run_dir}'`)"
    )
    assert_hints_are_real(line, capsys)
