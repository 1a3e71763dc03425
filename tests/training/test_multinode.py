"""Training on two "nodes" (two torchrun invocations, one process each, c10d rendezvous on
127.0.0.1, gloo) gives the metrics of one node with two processes, and a run whose nodes
are killed one at a time continues with `--resume` to the metrics of an uninterrupted one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from audiocnn.errors import CheckpointError
from audiocnn.testing.processes import child_env, children, wait_for
from audiocnn.testing.training import make_dataset, write_config
from audiocnn.training.callbacks import TIMING_COLUMNS, metrics_rows
from audiocnn.training.state import load_state


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(launch: list[str], data: Path, cfg: Path, run_dir: Path, *more: str) -> subprocess.Popen:
    env = child_env(OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", *launch, "-m", "audiocnn.testing.training"]
    cmd += ["--data-dir", str(data), "train", str(cfg), "--run-dir", str(run_dir), "--device", "cpu", *more]
    # a session of its own: killing a "node" kills torchrun and its worker together
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


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


EPOCHS = 5  # enough for two kills, each after an epoch is saved, to land before the last one


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(data dir, config, run folder) of a finished two-node run."""
    root = tmp_path_factory.mktemp("nodes")
    data = root / "data"
    data.mkdir()
    make_dataset(data, "tones5", "single-label", n_train=8, n_valid=5, n_test=2)
    cfg = write_config(root / "ddp.yaml", dataset="tones5", model="test-tiny-mel", epochs=EPOCHS)
    nodes = _two_nodes(data, cfg, root / "two")
    outs = [p.communicate(timeout=300) for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outs[0][1][-3000:] + outs[1][1][-3000:]
    assert sum(bool(out.strip()) for out, _ in outs) == 1  # only global rank 0 prints the run folder
    return data, cfg, root / "two"


@pytest.mark.slow
def test_two_nodes_train_like_one_node(two_nodes, tmp_path):
    data, cfg, two = two_nodes
    one = _torchrun(["--standalone", "--nproc-per-node", "2"], data, cfg, tmp_path / "one")
    _, err = one.communicate(timeout=300)
    assert one.returncode == 0, err[-3000:]
    assert _metrics(two) == _metrics(tmp_path / "one")


def _saved_epoch(run_dir: Path) -> int:
    """The epoch `--resume` would continue after (0: none saved yet)."""
    try:
        return int(load_state(run_dir / "last.pt")["epoch"])
    except CheckpointError:
        return 0


def _global_rank(node: subprocess.Popen) -> int:
    """The RANK torchrun gave this node's one worker."""
    assert wait_for(lambda: children(node.pid), timeout=60), "torchrun started no worker"
    env = Path(f"/proc/{children(node.pid)[0]}/environ").read_bytes().split(b"\0")
    return int(next(v for v in env if v.startswith(b"RANK=")).split(b"=")[1])


def _kill_one_node(nodes: list[subprocess.Popen], run_dir: Path, rank: int, after: int) -> int:
    """Once ``run_dir`` holds a state saved after epoch ``after``, SIGKILL the node
    running global ``rank`` (torchrun and its worker); the other node must then fail on
    its own (its worker's next collective, or its torchrun's rendezvous, finds the peer
    gone). Returns the epoch the run can resume after."""
    ranks = [_global_rank(p) for p in nodes]
    victim, survivor = nodes[ranks.index(rank)], nodes[1 - ranks.index(rank)]
    saved = wait_for(lambda: _saved_epoch(run_dir) > after or victim.poll() is not None, timeout=120, step=0.01)
    assert saved and victim.poll() is None, victim.communicate()[1][-3000:] if saved else "no epoch saved in 2 min"
    for pid in [*children(victim.pid), victim.pid]:  # torchrun starts each worker in a session of its own
        os.killpg(pid, signal.SIGKILL)
    victim.communicate(timeout=30)
    try:
        survivor.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(survivor.pid, signal.SIGKILL)
        survivor.communicate()
        pytest.fail(f"the node of rank {1 - rank} kept running a minute after the other node was killed")
    assert survivor.returncode != 0
    return _saved_epoch(run_dir)


@pytest.mark.slow
def test_two_nodes_resume_after_each_node_is_killed(two_nodes, tmp_path):
    """Kill the node of global rank 0 (the one that writes) after an epoch, resume both
    nodes; kill the node of rank 1 an epoch later, resume again: every epoch once, in
    order, and the metrics and weights of the uninterrupted two-node run."""
    data, cfg, full = two_nodes
    run = tmp_path / "killed"
    done = 0
    for rank, more in ((0, ()), (1, ("--resume",))):
        before = done
        done = _kill_one_node(_two_nodes(data, cfg, run, *more), run, rank, after=done)
        assert before < done < EPOCHS, f"the kill landed after epoch {done} of {EPOCHS}"
    kept = metrics_rows(run / "metrics.csv", drop_timing=False)[:done]
    nodes = _two_nodes(data, cfg, run, "--resume")
    outs = [p.communicate(timeout=300) for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outs[0][1][-3000:] + outs[1][1][-3000:]
    resumed = metrics_rows(run / "metrics.csv", drop_timing=False)
    assert resumed[:done] == kept  # the saved epochs were not run again (their timings are kept)
    assert [int(r["epoch"]) for r in resumed] == list(range(1, EPOCHS + 1))
    assert _metrics(run) == _metrics(full)
    a, b = load_state(full / "last.pt")["model"], load_state(run / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
