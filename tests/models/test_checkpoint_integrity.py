"""Checkpoints carry a digest of their tensors; a damaged one is one line, never a model
that runs and answers garbage. Older checkpoints without the digest still load."""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import pytest
import torch

from audiocnn.cli.main import run
from audiocnn.errors import CheckpointError
from audiocnn.models.checkpoint import DIGEST_KEY, load_checkpoint, load_weights, read_metadata, tensor_digest
from audiocnn.testing.audio import synth_tone, write_audio
from audiocnn.testing.commands import last_line, run_commands
from audiocnn.testing.models import SR, make_checkpoint

LABELS = ["rock", "jazz", "piano", "vocal"]


def _data_start(path: Path) -> int:
    """Offset of the first tensor byte: 8-byte header length, then the JSON header."""
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    return 8 + n


def flip_tensor_bytes(path: Path, count: int = 16) -> None:
    """Invert ``count`` bytes in the middle of the tensor data (the header stays valid)."""
    data = bytearray(path.read_bytes())
    start = _data_start(path)
    mid = start + (len(data) - start) // 2
    for i in range(mid, mid + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture()
def song(tmp_path) -> Path:
    return write_audio(tmp_path / "song.wav", synth_tone(2.0, SR, seed=4), SR)


@pytest.fixture()
def ckpt(tmp_path) -> Path:
    return make_checkpoint(tmp_path / "model.safetensors", "test-probe-mel", labels=LABELS)


def _tag(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = run(["tag", *args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_saved_checkpoint_records_the_digest_of_its_tensors(ckpt):
    meta = read_metadata(ckpt)
    state = load_weights(ckpt)
    assert meta[DIGEST_KEY] == tensor_digest(state) and len(meta[DIGEST_KEY]) == 64
    # the digest is a property of the weights, not of the order they are listed in
    assert tensor_digest(dict(reversed(list(state.items())))) == meta[DIGEST_KEY]


def test_flipped_tensor_bytes_fail_tag_with_one_line(ckpt, song, capsys):
    code, out, err = _tag(capsys, str(song), "--model", str(ckpt), "--format", "json", "--device", "cpu")
    assert code == 0, err
    assert json.loads(out.splitlines()[0])["path"].endswith("song.wav")

    flip_tensor_bytes(ckpt)
    read_metadata(ckpt)  # the header is intact: only the weights are damaged
    code, out, err = _tag(capsys, str(song), "--model", str(ckpt), "--device", "cpu")
    assert code == 1 and out == "" and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {ckpt} is corrupt: tensor checksum mismatch; re-download or retrain it"]


def test_every_loader_verifies(ckpt, tmp_path):
    flip_tensor_bytes(ckpt)
    with pytest.raises(CheckpointError, match="tensor checksum mismatch"):
        load_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match="tensor checksum mismatch"):
        load_weights(ckpt)

    from audiocnn.training.config import TrainConfig
    from audiocnn.training.setup import build_model

    with pytest.raises(CheckpointError, match="tensor checksum mismatch"):
        build_model(TrainConfig(init=str(ckpt)), LABELS, "multi-label")


def test_best_weights_reloaded_after_training_are_verified(ckpt):
    from audiocnn.training.loop import load_best as _load_best

    model, _meta = load_checkpoint(ckpt)
    flip_tensor_bytes(ckpt)
    with pytest.raises(CheckpointError, match="tensor checksum mismatch"):
        _load_best(model, ckpt, torch.device("cpu"))


def test_checkpoint_from_before_the_digest_still_loads(ckpt, song, capsys, caplog):
    from safetensors.torch import save

    meta = read_metadata(ckpt)
    state = load_weights(ckpt)
    del meta[DIGEST_KEY]
    ckpt.write_bytes(save(state, metadata={"audiocnn": json.dumps(meta)}))
    with caplog.at_level(logging.DEBUG, logger="audiocnn.models.checkpoint"):
        model, loaded = load_checkpoint(ckpt)
    assert DIGEST_KEY not in loaded and "weights not verified" in caplog.text
    code, _out, err = _tag(capsys, str(song), "--model", str(ckpt), "--device", "cpu")
    assert code == 0, err


def test_pretrained_import_carries_the_digest(tmp_path):
    from audiocnn.pretrained import import_musicnn
    from audiocnn.pretrained.catalog import installed_package_dir

    pkg = installed_package_dir()
    if pkg is None or not (pkg / "MTT_musicnn" / ".index").is_file():
        pytest.skip("musicnn package not installed (pip install --no-deps musicnn==0.1.0)")
    (path,) = import_musicnn(None, ["musicnn-mtt"], cache_dir=tmp_path)
    meta = read_metadata(path)
    assert meta[DIGEST_KEY] == tensor_digest(load_weights(path))
    flip_tensor_bytes(path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value) == f"{path} is corrupt: tensor checksum mismatch; delete it to import it again"


def _rewrite_metadata(path: Path, **changes) -> Path:
    """The same tensors with metadata keys changed (None: removed), as a hand edit would."""
    from safetensors.torch import save

    meta, state = read_metadata(path), load_weights(path)
    meta.update(changes)
    path.write_bytes(save(state, metadata={"audiocnn": json.dumps({k: v for k, v in meta.items() if v is not None})}))
    return path


@pytest.mark.parametrize(
    "change, expect",
    [
        ({"num_classes": 5}, "weights do not fit the metadata: model 'test-probe-mel' with num_classes=5 and "),
        ({"frontend": None}, "checkpoint metadata lacks 'frontend' (the file is damaged or was not written by "),
        ({"num_classes": "4"}, "checkpoint metadata 'num_classes' must be a whole number >= 1, got '4' ("),
        ({"labels": ["rock"]}, "checkpoint metadata has 1 labels for 4 outputs ("),
        ({"frontend": {"kind": "mel", "n_mels": 10**9}}, "checkpoint metadata 'frontend': n_mels must be a whole "),
    ],
)
def test_metadata_is_checked_against_the_weights(ckpt, song, capsys, change, expect):
    _rewrite_metadata(ckpt, **change)
    code, _out, err = _tag(capsys, str(song), "--model", str(ckpt), "--device", "cpu")
    assert code == 1 and last_line(err).startswith(f"error: {ckpt}: {expect}"), err


def test_metadata_asking_for_a_huge_model_allocates_nothing(tmp_path, song):
    """timbral_filters: 1e9 (the old code built the model first: 1 TB): one line from the
    tensor shapes in the file's header, within 2 GB (tag, evaluate and export all load
    through load_checkpoint)."""
    ckpt = make_checkpoint(tmp_path / "musicnn.safetensors", "musicnn", labels=LABELS)
    kwargs = read_metadata(ckpt)["model_kwargs"]
    huge = _rewrite_metadata(ckpt, model_kwargs={**kwargs, "timbral_filters": 10**9})
    [(code, err)] = run_commands(["tag", str(song), "--model", str(huge), "--device", "cpu"], timeout=60)
    assert code == 1 and last_line(err).startswith(
        f"error: {huge}: weights do not fit the metadata: model 'musicnn' with num_classes=4 and model_kwargs "
    ), err
    assert "'timbral_filters': 1000000000" in err
    assert "has bn_pool.bias of shape [4000000690], the file holds [1506]" in err
