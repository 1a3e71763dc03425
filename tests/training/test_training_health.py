"""Training health: a diverging run stops in one line and stays resumable; overfitting is said."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from audiocnn.cli.main import run
from audiocnn.testing.training import make_dataset, write_config
from audiocnn.training import health as H
from audiocnn.training.state import load_state

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("health") / "data"
    d.mkdir()
    make_dataset(d, "tones", "single-label")
    return d


def _train(data: Path, cfg: Path, run_dir: Path, *extra: str) -> int:
    return run(["--data-dir", str(data), "train", str(cfg), "--run-dir", str(run_dir), "--device", "cpu", *extra])


def _nan_after(monkeypatch, steps: int) -> None:
    """The training loss becomes NaN from training step ``steps + 1`` on (counted over the
    whole process), as a run that diverges does."""
    from audiocnn.training import losses

    real = losses.TaggingLoss.forward
    calls = {"n": 0}

    def forward(self, logits, target, reduction="mean"):
        loss = real(self, logits, target, reduction)
        if reduction == "mean":  # training steps (validation sums)
            calls["n"] += 1
            if calls["n"] > steps:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(losses.TaggingLoss, "forward", forward)


def test_nan_loss_stops_with_one_line_naming_epoch_and_step(data, tmp_path, capsys, monkeypatch):
    cfg = write_config(tmp_path / "c.yaml", dataset="tones", model="test-tiny-mel", epochs=2)
    _nan_after(monkeypatch, 1)
    assert _train(data, cfg, tmp_path / "run") == 1
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "diverged" in ln]
    assert len(lines) == 1 and "Traceback" not in err
    assert "the loss is nan at epoch 1, step 2" in lines[0] and "lr" in lines[0]
    assert not (tmp_path / "run" / "last.pt").exists()  # nothing NaN was saved


def test_divergence_keeps_the_last_good_state_and_resume_continues(data, tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    good = write_config(
        tmp_path / "good.yaml", dataset="tones", model="test-tiny-mel", optimizer="sgd", lr=0.01, momentum=0.0, epochs=2
    )
    assert _train(data, good, run_dir) == 0
    before = (run_dir / "last.pt").read_bytes()
    with monkeypatch.context() as m:
        _nan_after(m, 1)  # the second step of epoch 3 diverges
        assert _train(data, good, run_dir, "--resume", "--set", "epochs=4") == 1
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if "diverged" in ln)
    assert "at epoch 3, step 2" in line and "after epoch 2" in line and "--resume" in line
    assert (run_dir / "last.pt").read_bytes() == before
    state = load_state(run_dir / "last.pt")
    assert state["epoch"] == 2 and all(
        torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point()
    )
    assert _train(data, good, run_dir, "--resume", "--set", "epochs=3") == 0
    assert load_state(run_dir / "last.pt")["epoch"] == 3


def _row(train: float, valid: float) -> dict:
    return {"train_loss": train, "valid_loss": valid}


def test_overfitting_note_needs_rising_valid_and_falling_train_loss():
    rising = [_row(1.0, 0.5), _row(0.8, 0.6), _row(0.6, 0.7), _row(0.4, 0.9)]
    note = H.overfitting_note(rising)
    assert note and "overfitting" in note and "0.5000 -> 0.9000" in note
    assert H.overfitting_note(rising[1:]) is None  # only two rises
    assert H.overfitting_note([*rising[:3], _row(0.4, 0.65)]) is None  # valid loss fell at the end
    assert H.overfitting_note([*rising[:3], _row(0.7, 0.9)]) is None  # training loss rose too
    assert H.overfitting_note([_row(1.0, float("nan"))] * 4) is None


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_the_epoch_log_says_when_the_model_overfits(data, tmp_path, monkeypatch):
    seen = []

    def fake(history):
        seen.append(len(history))
        return "the model is overfitting: (test)" if len(history) == 2 else None

    monkeypatch.setattr(H, "overfitting_note", fake)
    cfg = write_config(tmp_path / "c.yaml", dataset="tones", model="test-tiny-mel", epochs=2)
    collect = _Collect()
    logger = logging.getLogger("audiocnn.train")
    logger.addHandler(collect)
    try:
        assert _train(data, cfg, tmp_path / "run") == 0
    finally:
        logger.removeHandler(collect)
    assert seen == [1, 2]
    assert [ln for ln in collect.lines if "overfitting" in ln] == ["epoch 2: the model is overfitting: (test)"]
