"""`audiocnn features DATASET --shard K/N`: shares of the chunks extracted by separate
processes into one store, merged by the last; byte for byte the store of one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from audiocnn.cli.main import run
from audiocnn.features.frontends import MelConfig
from audiocnn.features.store import CRASH_ENV, store_dir
from audiocnn.features.store import chunks as chunks_mod
from audiocnn.testing.store_data import make_mixed_dataset
from audiocnn.training.data import open_dataset_store

torch.set_num_threads(1)


def every_file(path: Path) -> dict[str, bytes]:
    """Every file of a store; complete.json less the time it was finished."""
    files = {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
    done = json.loads(files.pop("complete.json"))
    done.pop("finished")
    return {**files, "complete.json": json.dumps(done).encode()}


def test_three_shards_one_crashed_and_rerun_make_the_one_process_store(tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.setattr(chunks_mod, "_BLOCK_SECONDS", 0.3)
    monkeypatch.setattr("audiocnn.features.store.extract.DEFAULT_CHUNK_CLIPS", 2)  # 4 chunks
    config = MelConfig(n_mels=32)
    one = open_dataset_store(make_mixed_dataset(tmp_path / "one" / "toy"), config, jobs=1, progress=False)
    make_mixed_dataset(data_dir / "toy", audio_root=tmp_path / "one" / "toy" / "raw")
    args = ["features", "toy", "--set", "n_mels=32", "-j", "1", "--no-progress"]
    path = store_dir(data_dir / "toy", config)

    monkeypatch.setenv(CRASH_ENV, "1")  # share 0's two workers die on their first clip
    assert run([*args, "-j", "2", "--shard", "0/3"]) != 0
    monkeypatch.delenv(CRASH_ENV)
    assert "worker process died" in capsys.readouterr().err
    assert not list((path / "parts").glob("*.json"))

    monkeypatch.setenv("WORLD_SIZE", "3")  # as torchrun starts them
    for rank in ("1", "2"):
        monkeypatch.setenv("RANK", rank)
        assert run(args) == 0
        assert "the last to finish merges" in capsys.readouterr().err
    monkeypatch.delenv("WORLD_SIZE")
    assert not (path / "complete.json").exists()

    assert run([*args, "--shard", "0/3"]) == 0  # re-run alone: finishes its share, then merges
    assert "clips: train 4, valid 2, test 2" in capsys.readouterr().out
    assert every_file(path) == every_file(one.path)
    assert not list(path.glob(".lock*"))


@pytest.mark.parametrize("text", ["3/3", "x"])
def test_a_bad_shard_is_one_line(data_dir, capsys, text):
    assert run(["features", "toy", "--shard", text]) != 0
    assert f"--shard {text}" in capsys.readouterr().err


def test_a_share_leaves_the_temp_files_of_other_shares_alone(data_dir, monkeypatch):
    """Shares start at different times: one starting must not delete the chunk another
    share is writing right now (only its own killed run's temp files are garbage)."""
    monkeypatch.setattr("audiocnn.features.store.extract.DEFAULT_CHUNK_CLIPS", 2)  # 4 chunks
    make_mixed_dataset(data_dir / "toy")
    path = store_dir(data_dir / "toy", MelConfig(n_mels=32))
    names = ["train-000000", "train-000001", "valid-000000", "test-000000"]
    (path / "parts").mkdir(parents=True)
    for name in names:  # as if each chunk's share were writing it now
        (path / "parts" / f".{name}.bin.tmp-writing").write_bytes(b"half")
    assert run(["features", "toy", "--set", "n_mels=32", "-j", "1", "--no-progress", "--shard", "0/2"]) == 0
    mine = {p.stem for p in (path / "parts").glob("*.json")}
    left = {p.name.split(".")[1] for p in (path / "parts").glob(".*.tmp-writing")}
    assert mine and left == set(names) - mine
