"""Training on two "nodes" (two torchrun invocations, one process each, c10d rendezvous on
127.0.0.1, gloo) gives the metrics of one node with two processes."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from audiocnn.testing.processes import child_env
from audiocnn.testing.training import make_dataset, write_config
from audiocnn.training.callbacks import TIMING_COLUMNS, metrics_rows


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(launch: list[str], data: Path, cfg: Path, run_dir: Path, *more: str) -> subprocess.Popen:
    env = child_env(OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", *launch, "-m", "audiocnn.testing.training"]
    cmd += ["--data-dir", str(data), "train", str(cfg), "--run-dir", str(run_dir), "--device", "cpu", *more]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _two_nodes(data: Path, cfg: Path, run_dir: Path, *more: str) -> list[subprocess.Popen]:
    port = _port()
    return [
        _torchrun(
            ["--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(k), "--rdzv-backend", "c10d"]
            + ["--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"test{port}", "--max-restarts", "0"],
            data,
            cfg,
            run_dir,
            *more,
        )
        for k in range(2)
    ]


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in metrics_rows(run_dir / "metrics.csv")]


@pytest.mark.slow
def test_two_nodes_train_like_one_node(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    make_dataset(data, "tones5", "single-label", n_train=8, n_valid=5, n_test=2)
    cfg = write_config(tmp_path / "ddp.yaml", dataset="tones5", model="test-tiny-mel")

    one = _torchrun(["--standalone", "--nproc-per-node", "2"], data, cfg, tmp_path / "one")
    _, err = one.communicate(timeout=300)
    assert one.returncode == 0, err[-3000:]

    nodes = _two_nodes(data, cfg, tmp_path / "two")
    outs = [p.communicate(timeout=300) for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outs[0][1][-3000:] + outs[1][1][-3000:]
    assert sum(bool(out.strip()) for out, _ in outs) == 1  # only global rank 0 prints the run folder
    assert _metrics(tmp_path / "two") == _metrics(tmp_path / "one")
