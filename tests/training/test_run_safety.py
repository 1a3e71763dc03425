"""Crash safety and concurrency of training runs: two trainings on one run folder, a disk
that fills while saving, truncated or hostile training state, folders audiocnn did not
write."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from audiocnn import fileio
from audiocnn.cli.main import run
from audiocnn.testing.commands import last_line
from audiocnn.testing.faults import enospc_for
from audiocnn.testing.processes import child_env, wait_for
from audiocnn.testing.training import make_dataset, write_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- training runs ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("hardening") / "data"
    d.mkdir()
    make_dataset(d, "tones", "single-label")
    return d


def cli(data: Path, *args: str) -> int:
    return run(["--data-dir", str(data), *args])


def _rows(path: Path) -> list[dict[str, str]]:
    from audiocnn.training.callbacks import metrics_rows

    return metrics_rows(path)


def _epoch(path: Path) -> int:
    return int(torch.load(path, weights_only=False)["epoch"])


# -- 2. two trainings on one run folder ---------------------------------------------------------


def test_second_training_on_a_busy_run_folder_is_refused_at_once(data, tmp_path, capsys):
    cfg = write_config(tmp_path / "long.yaml", dataset="tones", model="test-tiny-mel", epochs=100_000)
    rd = tmp_path / "run"
    lock = rd / "train.lock"
    log = open(tmp_path / "first.log", "wb")
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "audiocnn.testing.training",
            "--data-dir",
            str(data),
            "train",
            str(cfg),
            "--run-dir",
            str(rd),
            "--device",
            "cpu",
        ],
        env=child_env(OMP_NUM_THREADS="1"),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        assert wait_for(lambda: lock.is_file() and lock.read_text().strip() != "", 60), "no lock taken"
        t0 = time.monotonic()
        code = cli(data, "train", str(cfg), "--run-dir", str(rd), "--device", "cpu", "--set", "epochs=1")
        err = capsys.readouterr().err
        assert code == 1 and time.monotonic() - t0 < 5
        line = last_line(err)
        assert f"another `audiocnn train` (PID {first.pid}) is using this run folder" in line, line
        assert str(rd) in line and "--run-dir" in line
        assert first.poll() is None, "the first run must be unharmed"
        first.kill()  # kill -9: no clean-up, its lock file stays behind with a dead PID
        first.wait(60)
    finally:
        log.close()
        if first.poll() is None:
            first.kill()
            first.wait()
    assert lock.read_text().split()[0] == str(first.pid)
    assert cli(data, "train", str(cfg), "--run-dir", str(rd), "--device", "cpu", "--set", "epochs=1", "--restart") == 0
    assert [r["epoch"] for r in _rows(rd / "metrics.csv")] == ["1"]
    assert not lock.exists()


# -- 3. failing writes ---------------------------------------------------------------------------


def test_disk_full_while_saving_training_state(data, tmp_path, monkeypatch, capsys):
    cfg = write_config(tmp_path / "c.yaml", dataset="tones", model="test-tiny-mel", epochs=3)
    rd = tmp_path / "run"
    with monkeypatch.context() as m:
        enospc_for(m, "last.pt", after=1)  # epoch 1 is saved, epoch 2 hits a full disk
        assert cli(data, "train", str(cfg), "--run-dir", str(rd), "--device", "cpu") == 1
    line = last_line(capsys.readouterr().err)
    assert f"{rd / 'last.pt'}: cannot write (No space left on device)" in line
    assert "--resume" in line and "epoch 2" in line
    assert not [p.name for p in rd.iterdir() if p.name.startswith(".") or ".tmp" in p.name]
    assert _epoch(rd / "last.pt") == 1  # what was written stays readable
    assert not (rd / "train.lock").exists()
    assert cli(data, "train", str(cfg), "--run-dir", str(rd), "--device", "cpu", "--resume") == 0
    assert [r["epoch"] for r in _rows(rd / "metrics.csv")] == ["1", "2", "3"]


def test_a_plot_that_cannot_be_written_leaves_no_temp_file(tmp_path, monkeypatch):
    from audiocnn.training import plots

    per_tag = [{"label": "a", "roc_auc": 0.9, "pr_auc": 0.8, "n_positive": 3}]
    target = tmp_path / "per_tag_roc_auc.png"
    plots.plot_per_tag_auc(per_tag, target)
    before = target.read_bytes()
    enospc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "replace", lambda *a, **k: (_ for _ in ()).throw(enospc))
    with pytest.raises(fileio.FileWriteError):
        plots.plot_per_tag_auc(per_tag, target)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["per_tag_roc_auc.png"]
    assert target.read_bytes() == before


# -- 4. unreadable last.pt ------------------------------------------------------------------------


def test_truncated_last_pt_resumes_from_the_previous_state(data, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", dataset="tones", model="test-tiny-mel", epochs=2)
    full, rd = tmp_path / "full", tmp_path / "run"
    assert cli(data, "train", str(cfg), "--run-dir", str(full), "--device", "cpu", "--set", "epochs=3") == 0
    assert cli(data, "train", str(cfg), "--run-dir", str(rd), "--device", "cpu") == 0
    assert _epoch(rd / "last.pt") == 2 and _epoch(rd / "last.prev.pt") == 1
    blob = (rd / "last.pt").read_bytes()
    (rd / "last.pt").write_bytes(blob[: len(blob) // 2])
    capsys.readouterr()
    assert cli(data, "train", str(cfg), "--run-dir", str(rd), "--device", "cpu", "--resume", "--set", "epochs=3") == 0
    err = capsys.readouterr().err
    assert "last.pt: unreadable training state" in err and "last.prev.pt (after epoch 1)" in err
    assert _rows(rd / "metrics.csv") == _rows(full / "metrics.csv")  # epoch 2 redone exactly
    assert _epoch(rd / "last.pt") == 3 and _epoch(rd / "last.prev.pt") == 2


@pytest.mark.parametrize("prev", ["missing", "empty"])
def test_empty_last_pt_without_a_good_previous_state(data, tmp_path, capsys, prev):
    cfg = write_config(tmp_path / "c.yaml", dataset="tones", model="test-tiny-mel", epochs=1)
    rd = tmp_path / "run"
    assert cli(data, "train", str(cfg), "--run-dir", str(rd), "--device", "cpu") == 0
    (rd / "last.pt").write_bytes(b"")
    if prev == "missing":
        (rd / "last.prev.pt").unlink(missing_ok=True)
    else:
        (rd / "last.prev.pt").write_bytes(b"")
    capsys.readouterr()
    assert cli(data, "train", str(cfg), "--run-dir", str(rd), "--device", "cpu", "--resume") == 1
    line = last_line(capsys.readouterr().err)
    assert f"{rd / 'last.pt'}: unreadable training state (empty file)" in line
    assert f"`audiocnn train {cfg} --run-dir {rd} --restart`" in line and "fresh --run-dir" in line
    assert cli(data, "train", str(cfg), "--run-dir", str(rd), "--device", "cpu") == 2
    line = last_line(capsys.readouterr().err)
    assert "already holds a run" in line and "--restart" in line
    assert cli(data, "train", str(cfg), "--run-dir", str(rd), "--device", "cpu", "--restart", "--set", "epochs=2") == 0
    assert [r["epoch"] for r in _rows(rd / "metrics.csv")] == ["1", "2"] and _epoch(rd / "last.pt") == 2


class _Payload:
    """Unpickling this creates ``marker``: what a crafted ``last.pt`` could do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _rewrite_state(path: Path, **changes) -> None:
    state = torch.load(path, weights_only=False)  # our own file, written by the test's run
    state.update(changes)
    path.unlink()  # not through a hard link to last.prev.pt
    torch.save(state, path)


def test_a_state_that_would_run_code_is_refused_and_never_replaced(data, tmp_path, capsys):
    """A crafted last.pt (or last.prev.pt behind a broken last.pt) is one line naming the
    file; nothing in it runs, nothing is resumed, nothing in the folder changes."""
    cfg = write_config(tmp_path / "c.yaml", dataset="tones", model="test-tiny-mel", epochs=2)
    rd, marker = tmp_path / "run", tmp_path / "marker"
    assert cli(data, "train", str(cfg), "--run-dir", str(rd), "--device", "cpu") == 0
    good = torch.load(rd / "last.pt", weights_only=False)
    _rewrite_state(rd / "last.pt", history=[*good["history"], _Payload(marker)])
    for broken in ("last.pt", "last.prev.pt"):
        if broken == "last.prev.pt":  # the crafted state as the fallback of an empty last.pt
            (rd / "last.prev.pt").unlink()
            os.replace(rd / "last.pt", rd / "last.prev.pt")
            (rd / "last.pt").write_bytes(b"")
        before = {p.name: p.read_bytes() for p in rd.iterdir() if p.name != "config.yaml"}
        capsys.readouterr()
        assert (
            cli(data, "train", str(cfg), "--run-dir", str(rd), "--device", "cpu", "--resume", "--set", "epochs=3") == 1
        )
        line = last_line(capsys.readouterr().err)
        assert line.startswith(f"error: {rd / broken}: refused: this training state would run code when loaded ("), line
        assert f"`audiocnn train {cfg} --run-dir {rd} --restart`" in line
        assert not marker.exists()
        assert {p.name: p.read_bytes() for p in rd.iterdir() if p.name != "config.yaml"} == before


def test_a_state_from_before_numpy_rng_tensors_resumes_exactly(data, tmp_path):
    """last.pt files written before the numpy RNG state became a tensor still resume."""
    import numpy as np

    from audiocnn.training.state import rng_state, set_rng_state

    np.random.seed(7)
    saved = rng_state()
    expect = np.random.random(4)
    set_rng_state(saved)
    assert np.array_equal(np.random.random(4), expect)

    cfg = write_config(tmp_path / "c.yaml", dataset="tones", model="test-tiny-mel", epochs=2)
    full, rd = tmp_path / "full", tmp_path / "run"
    assert cli(data, "train", str(cfg), "--run-dir", str(full), "--device", "cpu", "--set", "epochs=3") == 0
    assert cli(data, "train", str(cfg), "--run-dir", str(rd), "--device", "cpu") == 0
    state = torch.load(rd / "last.pt", weights_only=True)
    for r in state["rng"]:
        name, key, *rest = r["numpy"]
        r["numpy"] = (name, key.numpy().astype(np.uint32), *rest)  # as the old code saved it
    _rewrite_state(rd / "last.pt", rng=state["rng"])
    assert cli(data, "train", str(cfg), "--run-dir", str(rd), "--device", "cpu", "--resume", "--set", "epochs=3") == 0
    assert _rows(rd / "metrics.csv") == _rows(full / "metrics.csv")


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_folder_audiocnn_did_not_write_is_never_written_or_cleared(data, tmp_path, capsys):
    """A user's folder with a config.yaml, metrics.csv... is refused, --restart too; in a
    run folder, --restart removes what training wrote and nothing of the user's."""
    cfg = write_config(tmp_path / "c.yaml", dataset="tones", model="test-tiny-mel", epochs=1)
    mine = tmp_path / "myproj"
    (mine / "tensorboard").mkdir(parents=True)
    for name in ("config.yaml", "metrics.csv", "best.safetensors", "curves.png", "tensorboard/notes.txt"):
        (mine / name).write_text(f"the user's {name}\n")
    before = _tree(mine)
    for extra in ([], ["--restart"], ["--resume"]):
        capsys.readouterr()
        assert cli(data, "train", str(cfg), "--run-dir", str(mine), "--device", "cpu", *extra) == 2
        assert last_line(capsys.readouterr().err) == (
            f"error: {mine} is not an audiocnn run folder (no audiocnn-run.json) and not empty (best.safetensors, "
            "config.yaml, curves.png, ...); audiocnn writes into, restarts and deletes from no other folder "
            "(pass a new or empty --run-dir)"
        )
        assert _tree(mine) == before

    rd = tmp_path / "run"
    assert cli(data, "train", str(cfg), "--run-dir", str(rd), "--device", "cpu") == 0
    assert json.loads((rd / "audiocnn-run.json").read_text())["audiocnn"] == "run folder"
    (rd / "tensorboard").mkdir(exist_ok=True)
    (rd / "tensorboard" / "events.out.tfevents.1.host.1.0").write_bytes(b"")  # what SummaryWriter writes
    (rd / "tensorboard" / "notes.txt").write_text("the user's notes\n")
    (rd / "notes.txt").write_text("the user's notes\n")
    assert cli(data, "train", str(cfg), "--run-dir", str(rd), "--device", "cpu", "--restart") == 0
    assert sorted(p.name for p in (rd / "tensorboard").iterdir()) == ["notes.txt"] and (rd / "notes.txt").is_file()

    (rd / "audiocnn-run.json").unlink()  # a run folder written before the marker is still one
    assert cli(data, "train", str(cfg), "--run-dir", str(rd), "--device", "cpu") == 2
    assert "already holds a run" in last_line(capsys.readouterr().err)
    assert cli(data, "train", str(cfg), "--run-dir", str(rd), "--device", "cpu", "--resume", "--set", "epochs=2") == 0
    assert (rd / "audiocnn-run.json").is_file() and _epoch(rd / "last.pt") == 2


def test_restart_and_resume_together_is_a_usage_error(data, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", dataset="tones", model="test-tiny-mel", epochs=1)
    assert cli(data, "train", str(cfg), "--run-dir", str(tmp_path / "r"), "--resume", "--restart") == 2
    assert "--resume and --restart" in last_line(capsys.readouterr().err)
