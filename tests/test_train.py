"""`audiocnn train` / `audiocnn evaluate` end to end on tiny models and datasets (CPU)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import TinyMel, last_line, make_dataset, run_limited, write_config

from audiocnn.cli.main import run
from audiocnn.datasets.manifest import read_manifest
from audiocnn.models.checkpoint import load_checkpoint, read_metadata

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Two prepared fixture datasets (single- and multi-label) shared by the module."""
    d = tmp_path_factory.mktemp("train") / "data"
    d.mkdir()
    make_dataset(d, "tones", "single-label")
    make_dataset(d, "tags", "multi-label")
    return d


def cli(data: Path, *args: str) -> int:
    return run(["--data-dir", str(data), *args])


def rows(path: Path, drop_timing: bool = True) -> list[dict[str, str]]:
    from audiocnn.training.callbacks import metrics_rows

    return metrics_rows(path, drop_timing=drop_timing)


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC
    import matplotlib.image

    img = matplotlib.image.imread(str(path))
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50


def test_single_label_train_evaluate_resume(data, tmp_path, capsys):
    cfg = write_config(tmp_path / "tones-mel.yaml", dataset="tones", model="test-tiny-mel")
    run_dir = tmp_path / "run"
    assert cli(data, "train", str(cfg), "--run-dir", str(run_dir), "--device", "cpu", "--set", "eval_chunks=4") == 0
    out = capsys.readouterr()
    assert out.out.strip() == str(run_dir)  # stdout: the run folder, for scripts
    assert "best accuracy" in out.err and "audiocnn evaluate" in out.err

    # metrics.csv: one row per epoch with the columns
    with open(run_dir / "metrics.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["epoch"] for r in table] == ["1", "2"]
    assert list(table[0]) == [
        "epoch",
        "train_loss",
        "valid_loss",
        "roc_auc_macro",
        "pr_auc_macro",
        "accuracy",
        "balanced_accuracy",
        "lr",
        "time_s",
        "samples_per_s",
        "data_wait",
        "bn_stats_s",
    ]
    for r in table:
        assert float(r["train_loss"]) > 0 and 0 <= float(r["accuracy"]) <= 1
        assert float(r["lr"]) == pytest.approx(0.01) and float(r["samples_per_s"]) > 0

    # resolved config, best checkpoint with complete metadata
    from audiocnn.training.config import load_config

    saved = load_config(run_dir / "config.yaml")
    assert saved.eval_chunks == 4 and saved.dataset == "tones" and saved.model == "test-tiny-mel"
    model, meta = load_checkpoint(run_dir / "best.safetensors")
    manifest = read_manifest(data / "tones")
    assert meta["labels"] == manifest.labels and meta["task"] == "single-label"
    assert meta["model"] == "test-tiny-mel" and meta["dataset"] == "tones"
    assert meta["frontend"] == model.frontend_config.to_dict() and meta["frontend"]["n_mels"] == 16
    assert meta["epoch"] in (1, 2) and "accuracy" in meta["metrics"] and meta["monitor"] == "accuracy"
    best_row = table[meta["epoch"] - 1]
    assert meta["metrics"]["accuracy"] == pytest.approx(float(best_row["accuracy"]), abs=1e-6)
    assert_png(run_dir / "curves.png")

    # evaluate: table then json
    assert cli(data, "evaluate", str(run_dir), "--split", "test") == 0
    text = capsys.readouterr().out
    assert "roc_auc_macro" in text and "accuracy" in text and "balanced_accuracy" in text
    assert cli(data, "evaluate", str(run_dir), "--format", "json") == 0
    res = json.loads(capsys.readouterr().out)
    # by default a clip is scored with the windows `audiocnn tag` uses, not the run's eval_chunks
    assert res["split"] == "test" and res["n_clips"] == 4 and res["framing"] == "windows" and res["eval_chunks"] is None
    assert 0 <= res["roc_auc_macro"] <= 1 and 0 <= res["pr_auc_macro"] <= 1 and 0 <= res["accuracy"] <= 1
    ev = Path(res["out_dir"])
    assert ev == run_dir / "eval-test"
    saved_metrics = json.loads((ev / "metrics.json").read_text())
    assert saved_metrics["accuracy"] == res["accuracy"]
    assert np.asarray(saved_metrics["confusion_matrix"]).sum() == 4
    with open(ev / "per_tag.csv", newline="") as fh:
        per_tag = list(csv.DictReader(fh))
    assert [r["label"] for r in per_tag] == manifest.labels
    for name in ("per_tag_roc_auc.png", "roc_pr_curves.png", "confusion_matrix.png", "curves.png"):
        assert_png(ev / name)

    # evaluating the checkpoint file itself, on another split and chunk count
    assert (
        cli(
            data,
            "evaluate",
            str(run_dir / "best.safetensors"),
            "--split",
            "valid",
            "--eval-chunks",
            "2",
            "--format",
            "json",
            "--no-plots",
        )
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert res["split"] == "valid" and res["eval_chunks"] == 2 and res["n_clips"] == 4

    # --resume on a finished run changes nothing
    before = (run_dir / "metrics.csv").read_text()
    assert cli(data, "train", str(cfg), "--run-dir", str(run_dir), "--device", "cpu", "--resume") == 0
    assert (run_dir / "metrics.csv").read_text() == before
    # and without --resume the run folder is protected
    assert cli(data, "train", str(cfg), "--run-dir", str(run_dir), "--device", "cpu") == 2
    assert "already holds a run" in capsys.readouterr().err


def test_multi_label_waveform_model_with_workers(data, tmp_path, capsys):
    cfg = write_config(
        tmp_path / "tags-wave.yaml",
        dataset="tags",
        model="test-tiny-wave",
        workers=1,
        class_weighting="balanced",
        label_smoothing=0.1,
    )
    run_dir = tmp_path / "run"
    assert cli(data, "train", str(cfg), "--run-dir", str(run_dir), "--device", "cpu") == 0
    table = rows(run_dir / "metrics.csv")
    assert [r["epoch"] for r in table] == ["1", "2"]
    assert "accuracy" not in table[0] and "roc_auc_macro" in table[0]
    _, meta = load_checkpoint(run_dir / "best.safetensors")
    assert meta["task"] == "multi-label" and meta["monitor"] == "roc_auc_macro"
    assert meta["labels"] == read_manifest(data / "tags").labels
    assert meta["frontend"]["kind"] == "waveform"
    capsys.readouterr()
    assert cli(data, "evaluate", str(run_dir), "--format", "json") == 0
    res = json.loads(capsys.readouterr().out)
    assert "accuracy" not in res and res["n_clips"] == 4
    assert set(res) >= {"roc_auc_macro", "pr_auc_macro", "roc_auc_micro", "pr_auc_micro", "n_clips", "split"}
    # labels absent from the 4 test clips are reported, not fatal
    per_tag = json.loads((run_dir / "eval-test" / "metrics.json").read_text())["per_tag"]
    assert len(per_tag) == 4
    assert res["n_labels_scored"] == sum(t["roc_auc"] is not None for t in per_tag)
    for name in ("per_tag_roc_auc.png", "roc_pr_curves.png", "curves.png"):
        assert_png(run_dir / "eval-test" / name)
    assert not (run_dir / "eval-test" / "confusion_matrix.png").exists()


def test_resume_after_kill_matches_uninterrupted_run(data, tmp_path, monkeypatch):
    """Kill after epoch 1 (right after last.pt is written), resume: same rows, same weights."""
    import audiocnn.training.loop as loop

    cfg = write_config(
        tmp_path / "resume.yaml",
        dataset="tones",
        model="test-tiny-mel",
        epochs=3,
        schedule={"name": "plateau", "patience": 1, "factor": 0.5, "restore_best": True},
    )
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert cli(data, "train", str(cfg), "--run-dir", str(full), "--device", "cpu") == 0

    real_save = loop.save_state

    def save_then_die(path, state):
        real_save(path, state)
        raise KeyboardInterrupt  # what a kill between epochs looks like to the run folder

    monkeypatch.setattr(loop, "save_state", save_then_die)
    assert cli(data, "train", str(cfg), "--run-dir", str(killed), "--device", "cpu") == 130
    monkeypatch.setattr(loop, "save_state", real_save)
    assert len(rows(killed / "metrics.csv")) == 1
    assert cli(data, "train", str(cfg), "--run-dir", str(killed), "--device", "cpu", "--resume") == 0

    assert rows(killed / "metrics.csv") == rows(full / "metrics.csv")
    assert len(rows(full / "metrics.csv")) == 3
    a = torch.load(full / "last.pt", weights_only=False)
    b = torch.load(killed / "last.pt", weights_only=False)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert a["schedule"] == b["schedule"] and a["best_epoch"] == b["best_epoch"]
    from safetensors.torch import load_file

    wa, wb = load_file(full / "best.safetensors"), load_file(killed / "best.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_bf16_autocast_on_cpu(data, tmp_path, monkeypatch):
    seen: list[torch.dtype] = []
    real = TinyMel.forward_features

    def spy(self, feats):
        out = real(self, feats)
        if self.training:
            seen.append(self.conv(feats[:1] / 40.0).dtype)
        return out

    monkeypatch.setattr(TinyMel, "forward_features", spy)
    cfg = write_config(tmp_path / "amp.yaml", dataset="tones", model="test-tiny-mel", epochs=1, amp="bf16")
    assert cli(data, "train", str(cfg), "--run-dir", str(tmp_path / "run"), "--device", "cpu") == 0
    assert seen and all(d == torch.bfloat16 for d in seen)
    table = rows(tmp_path / "run" / "metrics.csv")
    assert np.isfinite(float(table[0]["train_loss"])) and np.isfinite(float(table[0]["valid_loss"]))
    # weights stay float32 (autocast, not a half-precision model)
    _, meta = load_checkpoint(tmp_path / "run" / "best.safetensors")
    assert meta["metrics"]["n_clips"] == 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_device_cuda_without_gpu_is_an_error(data, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", dataset="tones", model="test-tiny-mel")
    assert cli(data, "train", str(cfg), "--run-dir", str(tmp_path / "run"), "--device", "cuda") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "CUDA is not available" in err
    assert not (tmp_path / "run").exists()


def test_init_from_checkpoint_and_freeze_backbone(data, tmp_path):
    """A model trained on `tones` (3 classes) starts the `tags` (4 tags) run: backbone
    weights carried over and, frozen, exactly unchanged; the head is new."""
    base_cfg = write_config(tmp_path / "base.yaml", dataset="tones", model="test-tiny-mel", epochs=1)
    assert cli(data, "train", str(base_cfg), "--run-dir", str(tmp_path / "base"), "--device", "cpu") == 0
    init = tmp_path / "base" / "best.safetensors"
    from safetensors.torch import load_file

    before = load_file(init)
    cfg = write_config(tmp_path / "ft.yaml", dataset="tags", model="test-tiny-mel", epochs=2)
    assert (
        cli(
            data,
            "train",
            str(cfg),
            "--run-dir",
            str(tmp_path / "ft"),
            "--device",
            "cpu",
            "--set",
            f"init={init}",
            "--set",
            "freeze_backbone=true",
            "--set",
            "lr=0.05",
        )
        == 0
    )
    after = load_file(tmp_path / "ft" / "best.safetensors")
    backbone = [k for k in before if not k.startswith("head.")]
    assert backbone and any("running_mean" in k for k in backbone)
    for k in backbone:  # weights and BatchNorm statistics
        assert torch.equal(before[k], after[k]), k
    assert after["head.1.weight"].shape == (4, 8) and before["head.1.weight"].shape == (3, 8)
    meta = read_metadata(tmp_path / "ft" / "best.safetensors")
    assert meta["labels"] == read_manifest(data / "tags").labels and meta["task"] == "multi-label"

    # without freezing, the same init trains the backbone too
    assert (
        cli(
            data,
            "train",
            str(cfg),
            "--run-dir",
            str(tmp_path / "ft2"),
            "--device",
            "cpu",
            "--set",
            f"init={init}",
            "--set",
            "lr=0.05",
        )
        == 0
    )
    last = torch.load(tmp_path / "ft2" / "last.pt", weights_only=False)["model"]
    assert not torch.equal(before["conv.weight"], last["conv.weight"])


def test_init_with_same_labels_keeps_the_head(data, tmp_path):
    from audiocnn.training.config import config_from_mapping
    from audiocnn.training.setup import build_model

    cfg = write_config(tmp_path / "base.yaml", dataset="tones", model="test-tiny-mel", epochs=1)
    assert run(["--data-dir", str(data), "train", str(cfg), "--run-dir", str(tmp_path / "r"), "--device", "cpu"]) == 0
    ckpt = tmp_path / "r" / "best.safetensors"
    labels = read_manifest(data / "tones").labels
    model, info = build_model(config_from_mapping({"dataset": "tones", "init": str(ckpt)}), labels, "single-label")
    ref, _ = load_checkpoint(ckpt)
    assert info["head_reset"] is False and model.registry_name == "test-tiny-mel"
    for (k, v), (_, w) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(v, w), k
    from audiocnn.errors import ConfigError

    with pytest.raises(ConfigError, match="is a 'test-tiny-mel' checkpoint"):
        build_model(
            config_from_mapping({"dataset": "tones", "model": "test-tiny-wave", "init": str(ckpt)}),
            labels,
            "single-label",
        )
    with pytest.raises(ConfigError, match="no such checkpoint file"):
        build_model(
            config_from_mapping({"dataset": "tones", "init": str(tmp_path / "nope.safetensors")}),
            labels,
            "single-label",
        )


def test_sizes_that_only_pad_or_cannot_fit_are_refused(data, tmp_path, monkeypatch, capsys):
    """A crop longer than the clips and the model's input (the old code padded each to 10
    million frames), more chunks than the clips hold, a batch over 1/8 of the memory: one
    line each, before any crop is made. The hostile two in a child capped at 2 GB."""
    import audiocnn.training.setup as S

    cfg = write_config(tmp_path / "c.yaml", dataset="tones", model="test-tiny-mel", epochs=1)
    train = ["--data-dir", str(data), "train", str(cfg), "--device", "cpu", "--run-dir"]
    (c1, e1), (c2, e2) = run_limited(
        [*train, str(tmp_path / "r1"), "--set", "crop_frames=10000000"],
        [*train, str(tmp_path / "r2"), "--set", "eval_chunks=1000000"],
        timeout=90,
    )
    assert c1 == 1 and last_line(e1) == (
        "error: config key 'crop_frames' must be at most 94 for 'tones', got 10000000: its longest clip has "
        "94 frames and test-tiny-mel takes 63; a longer crop is only padding"
    )
    assert c2 == 1 and last_line(e2) == (
        "error: config key 'eval_chunks' must be at most 32 for 'tones', got 1000000: its valid clips hold at most "
        "32 distinct crops of 63 frames"
    )
    monkeypatch.setattr(S, "machine_memory", lambda: 128 << 10)
    capsys.readouterr()  # crop_frames at its limit passes the crop check, then meets the memory one
    assert cli(data, *train[2:], str(tmp_path / "r3"), "--set", "crop_frames=94", "--set", "eval_chunks=16") == 1
    assert last_line(capsys.readouterr().err) == (
        "error: config batch_size = 4 crops of 94 frames per batch: 23.5 KiB of input, more than 1/8 of this "
        "machine's memory (128.0 KiB) (make them or crop_frames smaller)"
    )


def test_cli_errors_are_one_line(data, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", dataset="tones", model="test-tiny-mel")
    assert cli(data, "train", str(cfg), "--set", "lrr=0.1", "--device", "cpu") == 1
    err = capsys.readouterr().err
    assert "unknown config key 'lrr'" in err and "valid keys:" in err and len(err.strip().splitlines()) == 1
    missing = write_config(tmp_path / "m.yaml", dataset="not-prepared", model="test-tiny-mel")
    assert cli(data, "train", str(missing), "--run-dir", str(tmp_path / "x"), "--device", "cpu") == 1
    assert "not prepared" in capsys.readouterr().err
    assert cli(data, "train", str(cfg), "--run-dir", str(tmp_path / "never"), "--resume", "--device", "cpu") == 1
    assert "nothing to resume" in capsys.readouterr().err
    assert cli(data, "evaluate", str(tmp_path / "nothing-here")) == 1
    assert "no such run folder or checkpoint" in capsys.readouterr().err
    assert cli(data, "evaluate", str(tmp_path), "--format", "yaml") == 2


def test_ties_of_the_monitored_metric_go_to_the_lower_validation_loss(data, tmp_path, capsys):
    """With 4 validation clips accuracy reaches 1.0 early and ties while the loss still
    falls: best.safetensors is the tied epoch with the lowest validation loss, and train
    says the split is too small to trust."""
    cfg = write_config(tmp_path / "tie.yaml", dataset="tones", model="test-tiny-mel", epochs=6)
    run_dir = tmp_path / "run"
    assert cli(data, "train", str(cfg), "--run-dir", str(run_dir), "--device", "cpu") == 0
    history = rows(run_dir / "metrics.csv")
    top = max(float(r["accuracy"]) for r in history)
    tied = [r for r in history if float(r["accuracy"]) == top]
    expect = int(min(tied, key=lambda r: float(r["valid_loss"]))["epoch"])
    assert expect != int(tied[0]["epoch"])  # the first epoch at the top is not the best
    assert read_metadata(run_dir / "best.safetensors")["epoch"] == expect
    err = capsys.readouterr().err
    assert f"best accuracy {top:.4f} at epoch {expect};" in err
    assert (
        "tones: the valid split has 4 clips, 1 to 2 per class (low 1, mid 1, high 2): too few to trust its scores "
        "or to choose the best epoch by them (fewer than 5 clips of a class: one clip moves its recall by more "
        "than 20 points); use a larger split (prepare the dataset with another split scheme) or cross-validation"
    ) in err
