"""`audiocnn tag LIBRARY --output FILE` split over processes (`--shard K/N`, torchrun's
RANK/WORLD_SIZE): each share into its part file, resumable, merged into the records of a
single-process run."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from audiocnn.cli.main import run
from audiocnn.shards import Shard, assign, parse_shard, shard_from_env
from audiocnn.testing.audio import synth_tone, write_audio
from audiocnn.testing.models import SR, make_checkpoint

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "probe.safetensors", labels=["rock", "jazz", "piano"])


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("library")
    for i in range(9):
        write_audio(d / f"album{i % 2}" / f"song{i}.wav", synth_tone(1.0 + 0.25 * i, SR, seed=i), SR)
    (d / "album0" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 4)
    return d


def _tag(capsys, *args: str) -> tuple[int, str]:
    code = run(["tag", *args])
    return code, capsys.readouterr().err


def _records(path: Path) -> dict[str, dict]:
    header, *recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert header["audiocnn"] == "tag-results"
    by_path = {r["path"]: r for r in recs}
    assert len(by_path) == len(recs), "a file has more than one record"
    return by_path


def test_shares_are_stable_balanced_and_whole():
    names = [f"/music/{i:03d}.flac" for i in range(200)]
    sizes = {n: random.Random(n).randint(1, 1000) for n in names}
    shares = dict(zip(names, assign(names, 3, str, sizes.get)))
    shuffled = names[::-1]
    assert dict(zip(shuffled, assign(shuffled, 3, str, sizes.get))) == shares  # whatever the list's order
    loads = [sum(sizes[n] for n in names if shares[n] == k) for k in range(3)]
    assert max(loads) - min(loads) <= max(sizes.values())  # greedy: within one file of each other
    assert parse_shard("2/3") == Shard(2, 3) and str(Shard(2, 3)) == "2/3"
    assert Shard(1, 3).part_path("/x/tags.jsonl") == Path("/x/tags.part-1-of-3.jsonl")
    assert shard_from_env({"RANK": "1", "WORLD_SIZE": "4"}) == Shard(1, 4)
    assert shard_from_env({"RANK": "0", "WORLD_SIZE": "1"}) is None and shard_from_env({}) is None


@pytest.mark.parametrize("text", ["3/3", "1", "a/b", "1/0"])
def test_a_bad_shard_is_one_line(capsys, ckpt, library, tmp_path, text):
    code, err = _tag(capsys, str(library), "-m", str(ckpt), "-o", str(tmp_path / "t.jsonl"), "--shard", text)
    assert code != 0 and f"--shard {text}" in err and "Traceback" not in err
    code, err = _tag(capsys, str(library), "-m", str(ckpt), "--shard", "0/2")
    assert code != 0 and "needs --output" in err


def test_three_ranks_one_killed_and_rerun_merge_to_a_single_run(capsys, ckpt, library, tmp_path, monkeypatch):
    single = tmp_path / "single.jsonl"
    _tag(capsys, str(library), "-m", str(ckpt), "-o", str(single))
    out = tmp_path / "tags.jsonl"
    args = [str(library), "-m", str(ckpt), "-o", str(out)]

    # rank 1 runs first and is killed part-way: one record kept, the next cut short
    _tag(capsys, *args, "--shard", "1/3")
    part1 = Shard(1, 3).part_path(out)
    head, first, *rest = part1.read_bytes().splitlines(keepends=True)
    assert rest, "share 1 should hold more than one file"
    part1.write_bytes(head + first + rest[0][:20])

    monkeypatch.setenv("WORLD_SIZE", "3")  # rank 0 as torchrun starts it: RANK / WORLD_SIZE
    monkeypatch.setenv("RANK", "0")
    _, err = _tag(capsys, *args)
    assert "share 0/3:" in err and "share 1/3 has" in err and not out.exists()
    monkeypatch.delenv("WORLD_SIZE")
    _, err = _tag(capsys, *args, "--shard", "2/3")
    assert "not merging yet" in err and not out.exists()

    # rank 1 re-run alone completes its share; being the last, it merges
    _, err = _tag(capsys, *args, "--shard", "1/3")
    assert "skipping 1 file already in" in err and "tagged 2 of 3 files" in err
    assert "merged 10 records of 3 part files" in err
    assert _records(out) == _records(single)
    assert not list(tmp_path.glob("tags.part-*")) and not list(tmp_path.glob(".*lock"))

    # a re-run skips everything the merged file holds (the broken file is tried again)
    _, err = _tag(capsys, *args, "--shard", "0/3")
    assert "tagged 0 of" in err
    assert len(_records(out)) == 10


def test_merge_by_hand_then_the_rest(capsys, ckpt, library, tmp_path):
    single = tmp_path / "single.jsonl"
    _tag(capsys, str(library), "-m", str(ckpt), "-o", str(single))
    out = tmp_path / "tags.jsonl"
    args = [str(library), "-m", str(ckpt), "-o", str(out)]
    _tag(capsys, *args, "--shard", "0/2")
    assert not out.exists()
    code, err = _tag(capsys, "--merge", str(out))  # by hand: what there is so far
    assert code == 0 and "of 1 part files into" in err
    part = _records(out)
    assert 0 < len(part) < 10 and all(_records(single)[p] == r for p, r in part.items())
    code, err = _tag(capsys, "--merge", str(out))
    assert code != 0 and "no part files" in err
    _, err = _tag(capsys, *args, "--shard", "1/2")  # share 0 is in the merged file: complete
    assert "merged" in err and _records(out) == _records(single)
