"""StoreDataset: crops, eval chunks, targets, DataLoader workers, DistributedSampler."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from audiocnn.datasets.manifest import Clip, Manifest, write_manifest
from audiocnn.errors import ConfigError
from audiocnn.features.frontends import MelConfig, WaveformConfig
from audiocnn.features.store import StoreDataset
from audiocnn.testing.audio import synth_tone, write_audio
from audiocnn.training.data import open_dataset_store

torch.set_num_threads(1)

LABELS = ["a", "b", "c", "d"]
# clip seconds at 8 kHz: one clip shorter than the crop used below (0.25 s)
SECONDS = [1.0, 0.6, 1.4, 0.2, 0.9, 1.1]


def build_store(root: Path, task: str, config):
    raw = root / "raw"
    clips = []
    for k, sec in enumerate(SECONDS):
        write_audio(raw / f"c{k}.wav", synth_tone(sec, 8000, seed=k), 8000)
        labels = [LABELS[k % 4]] if task == "single-label" else [LABELS[j] for j in range(4) if (k + 1) >> j & 1]
        clips.append(
            Clip(
                id=f"c{k}",
                path=f"c{k}.wav",
                duration=sec,
                sample_rate=8000,
                labels=labels,
                split="train" if k < 5 else "valid",
            )
        )
    write_manifest(Manifest(name=root.name, dataset="folder", task=task, labels=LABELS, clips=clips), root)
    return open_dataset_store(root, config, jobs=1, progress=False, min_seconds=0.1)


@pytest.fixture(scope="module")
def wave_store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("w") / "single", "single-label", WaveformConfig(sample_rate=8000))


@pytest.fixture(scope="module")
def mel_store(tmp_path_factory):
    config = MelConfig(sample_rate=8000, n_fft=256, hop_length=128, n_mels=24)
    return build_store(tmp_path_factory.mktemp("m") / "multi", "multi-label", config)


def test_train_mode_waveform_single_label(wave_store) -> None:
    ds = StoreDataset(wave_store, "train", mode="train", crop_frames=2000, seed=3)
    assert len(ds) == 5
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (2000,) and x.dtype == torch.float32
        assert y.dtype == torch.int64 and y.shape == () and int(y) == i % 4
        n = wave_store.length("train", i)
        start = ds.crop_start(i)
        assert 0 <= start <= max(0, n - 2000)
        full = wave_store.read("train", i)
        expect = np.pad(full[start : start + 2000], (0, max(0, 2000 - (n - start))))
        np.testing.assert_array_equal(x.numpy(), expect)
    # the 0.2 s clip (1600 samples) is zero-padded at the end
    x, _ = ds[3]
    assert wave_store.length("train", 3) == 1600
    assert torch.all(x[1600:] == 0) and torch.any(x[:1600] != 0)


def test_crops_depend_on_seed_and_epoch_only(wave_store) -> None:
    a = StoreDataset(wave_store, "train", crop_frames=500, seed=1)
    b = StoreDataset(wave_store, "train", crop_frames=500, seed=1)
    starts = [a.crop_start(i) for i in range(5)]
    assert starts == [b.crop_start(i) for i in range(5)]
    a.set_epoch(1)
    assert a.epoch == 1
    assert [a.crop_start(i) for i in range(5)] != starts
    c = StoreDataset(wave_store, "train", crop_frames=500, seed=2)
    assert [c.crop_start(i) for i in range(5)] != starts


def test_eval_mode_chunks_cover_the_clip(wave_store, mel_store) -> None:
    ds = StoreDataset(wave_store, "train", mode="eval", crop_frames=1000, eval_chunks=4)
    x, y = ds[2]
    n = wave_store.length("train", 2)
    assert x.shape == (4, 1000)
    full = wave_store.read("train", 2)
    np.testing.assert_array_equal(x[0].numpy(), full[:1000])
    np.testing.assert_array_equal(x[-1].numpy(), full[n - 1000 :])
    starts = ds.chunk_starts(2)
    assert starts[0] == 0 and starts[-1] == n - 1000 and np.all(np.diff(starts) > 0)
    mds = StoreDataset(mel_store, "train", mode="eval", crop_frames=20, eval_chunks=3)
    x, y = mds[0]
    assert x.shape == (3, 24, 20) and x.dtype == torch.float32
    short = StoreDataset(mel_store, "train", mode="eval", crop_frames=200, eval_chunks=3)
    x, _ = short[0]  # 1.0 s clip = 63 frames < 200: every chunk is the padded clip
    frames = mel_store.length("train", 0)
    assert x.shape == (3, 24, 200) and torch.all(x[:, :, frames:] == 0)
    assert torch.equal(x[0], x[2])


def test_multilabel_mel_targets(mel_store) -> None:
    ds = StoreDataset(mel_store, "train", crop_frames=16)
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (24, 16)
        assert y.dtype == torch.float32 and y.shape == (4,)
        expected = [float((i + 1) >> j & 1) for j in range(4)]
        assert y.tolist() == expected
    valid = StoreDataset(mel_store, "valid", crop_frames=16)
    assert len(valid) == 1


def batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def test_dataloader_workers_and_epochs(mel_store) -> None:
    ds = StoreDataset(mel_store, "train", crop_frames=10, seed=5)
    ds.store.read("train", 0)  # an open memory map must not stop pickling
    pickle.loads(pickle.dumps(ds))
    serial = {}
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        serial[epoch] = batches(DataLoader(ds, batch_size=2, num_workers=0))
    loader = DataLoader(ds, batch_size=2, num_workers=2, persistent_workers=True)
    for epoch in (0, 1):
        ds.set_epoch(epoch)  # reaches the persistent workers through shared memory
        got = batches(loader)
        assert len(got) == len(serial[epoch]) == 3
        for (xa, ya), (xb, yb) in zip(got, serial[epoch], strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(serial[0], serial[1], strict=True))


def test_distributed_sampler_splits_the_clips(wave_store) -> None:
    ds = StoreDataset(wave_store, "train", crop_frames=800, seed=0)
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
        sampler.set_epoch(0)
        indices = list(iter(sampler))
        loader = DataLoader(ds, batch_size=2, sampler=sampler, num_workers=2)
        got = batches(loader)
        assert sum(len(y) for _, y in got) == 3  # 5 clips padded to 6 over 2 replicas
        xs = torch.cat([x for x, _ in got])
        for row, i in zip(xs, indices, strict=True):
            assert torch.equal(row, ds[i][0])
        seen += indices
    assert set(seen) == set(range(5))


def test_bad_arguments(wave_store) -> None:
    with pytest.raises(ConfigError, match="mode"):
        StoreDataset(wave_store, "train", mode="test", crop_frames=10)
    with pytest.raises(ConfigError, match="crop_frames"):
        StoreDataset(wave_store, "train", crop_frames=0)
    with pytest.raises(IndexError):
        StoreDataset(wave_store, "train", crop_frames=10)[5]
