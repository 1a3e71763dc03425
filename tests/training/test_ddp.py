"""DistributedDataParallel through torchrun: 2 CPU processes, gloo backend."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from audiocnn.cli.main import run
from audiocnn.models.checkpoint import load_checkpoint
from audiocnn.testing.processes import child_env
from audiocnn.testing.training import make_dataset, write_config


@pytest.mark.slow
def test_two_process_gloo_training_matches_layout_and_gathers_every_clip_once(tmp_path):
    torch.set_num_threads(1)
    data = tmp_path / "data"
    data.mkdir()
    # 5 validation clips over 2 ranks: an uneven split (3 + 2) that padding would distort
    make_dataset(data, "tones5", "single-label", n_train=8, n_valid=5, n_test=2)
    cfg = write_config(tmp_path / "ddp.yaml", dataset="tones5", model="test-tiny-mel")

    single = tmp_path / "single"
    assert run(["--data-dir", str(data), "train", str(cfg), "--run-dir", str(single), "--device", "cpu"]) == 0

    ddp = tmp_path / "ddp"
    env = child_env(OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "audiocnn.testing.training",
            "--data-dir",
            str(data),
            "train",
            str(cfg),
            "--run-dir",
            str(ddp),
            "--device",
            "cpu",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes" in proc.stderr
    assert proc.stdout.strip().splitlines() == [str(ddp)]  # only rank 0 prints

    # same files, same metrics.csv layout as the single-process run
    names = {p.name for p in ddp.iterdir()}
    assert (
        names
        == {p.name for p in single.iterdir()}
        >= {"config.yaml", "metrics.csv", "best.safetensors", "last.pt", "curves.png"}
    )
    assert not any(n.startswith(".") for n in names)  # no temp files left by a second writer
    head_ddp = (ddp / "metrics.csv").read_text().splitlines()
    head_single = (single / "metrics.csv").read_text().splitlines()
    assert head_ddp[0] == head_single[0] and len(head_ddp) == len(head_single) == 3
    _, meta = load_checkpoint(ddp / "best.safetensors")
    assert meta["metrics"]["n_clips"] == 5  # every validation clip counted once

    # the gathered validation metrics of the last epoch equal a single-process pass over
    # the valid split with the same weights (duplicated or lost clips would change them)
    from audiocnn.evaluation import evaluate
    from audiocnn.tagging import TagOptions
    from audiocnn.training.callbacks import metrics_rows

    state = torch.load(ddp / "last.pt", weights_only=False)
    model, meta = load_checkpoint(ddp / "best.safetensors")
    model.load_state_dict(state["model"])
    from audiocnn.models.checkpoint import model_metadata, save_checkpoint

    ck = save_checkpoint(
        tmp_path / "last.safetensors", model, model_metadata(model, meta["labels"], {}, dataset="tones5")
    )
    res = evaluate(
        ck,
        TagOptions(chunks=3),
        data_dir=data,
        split="valid",
        device="cpu",
        plots=False,
        progress=False,
        out_dir=tmp_path / "ev",
    )
    last = metrics_rows(ddp / "metrics.csv")[-1]
    assert res["n_clips"] == 5
    assert float(last["accuracy"]) == pytest.approx(res["accuracy"], abs=1e-6)
    assert float(last["roc_auc_macro"]) == pytest.approx(res["roc_auc_macro"], abs=1e-5)
    assert np.isfinite(float(last["valid_loss"]))
