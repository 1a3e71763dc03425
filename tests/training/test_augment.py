"""Augmentation: each transform changes a batch the way it claims, reproducibly by seed;
runs with it resume exactly; validation never sees it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from audiocnn.cli.main import run
from audiocnn.errors import ConfigError
from audiocnn.features.frontends import WaveformConfig
from audiocnn.features.store import StoreDataset
from audiocnn.testing.models import SR
from audiocnn.testing.training import make_dataset, write_config
from audiocnn.training.augment import BatchAugment, WorkerAugment, pitch_shift, time_stretch
from audiocnn.training.callbacks import metrics_rows
from audiocnn.training.config import config_from_mapping
from audiocnn.training.data import open_dataset_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BASE = {"dataset": "d", "model": "m"}


def _aug(seed: int = 0, task: str = "multi-label", num_classes: int = 3, **augment):
    cfg = config_from_mapping({**BASE, "augment": augment}).augment
    return BatchAugment(cfg, task=task, num_classes=num_classes, seed=seed)


def _waves(b: int = 8, n: int = 4000) -> torch.Tensor:
    t = torch.arange(n) / SR
    return torch.stack([0.1 * (i + 1) * torch.sin(2 * torch.pi * (200 + 50 * i) * t) for i in range(b)])


def test_gain_polarity_and_noise_do_what_they_say():
    x, y = _waves(), torch.zeros(8, 3)
    out, _ = _aug(gain={"p": 1.0, "min_db": 6.0, "max_db": 6.0})(x, y, 0)
    torch.testing.assert_close(out, x * 10 ** (6 / 20))
    out, _ = _aug(polarity={"p": 1.0})(x, y, 0)
    torch.testing.assert_close(out, -x)
    out, _ = _aug(noise={"p": 1.0, "min_snr_db": 20.0, "max_snr_db": 20.0})(x, y, 0)
    snr = 10 * torch.log10(x.pow(2).mean(1) / (out - x).pow(2).mean(1))
    assert torch.allclose(snr, torch.full_like(snr, 20.0), atol=0.5)
    out, _ = _aug(gain={"p": 0.5, "min_db": -6.0, "max_db": 6.0})(x, y, 0)
    ratio = (out / x)[:, 10]
    assert (ratio == 1).any() and (ratio != 1).any()  # per example, about half of them
    assert ((ratio >= 10 ** (-6 / 20) - 1e-6) & (ratio <= 10 ** (6 / 20) + 1e-6)).all()
    same, _ = _aug()(x, y, 0)  # every p is 0 by default
    assert torch.equal(same, x)


def test_spec_masks_are_bands_set_to_the_example_mean():
    x = torch.rand(6, 16, 50) + torch.arange(6)[:, None, None]
    y = torch.zeros(6, 3)
    out, _ = _aug(time_mask={"p": 1.0, "count": 1, "max_width": 10})(x, y, 3)
    for i in range(6):
        mean = x[i].mean()
        cols = (out[i] != x[i]).any(dim=0).nonzero().flatten()
        if len(cols):
            assert len(cols) <= 10 and cols.max() - cols.min() + 1 == len(cols)  # one contiguous band
            torch.testing.assert_close(out[i][:, cols], mean.expand(16, len(cols)))
        assert torch.equal(out[i][:, (out[i] == x[i]).all(dim=0)], x[i][:, (out[i] == x[i]).all(dim=0)])
    assert (out != x).any()
    out, _ = _aug(freq_mask={"p": 1.0, "count": 2, "max_width": 3})(x, y, 3)
    rows = (out != x).any(dim=2)
    assert rows.any() and (rows.sum(dim=1) <= 6).all()
    assert ((out != x).any(dim=1) == (out != x).any(dim=1)[:, :1]).all()  # whole rows: every frame


@pytest.mark.parametrize("task", ["single-label", "multi-label"])
def test_mixup_mixes_inputs_and_targets_with_one_weight(task):
    b = 8
    x = torch.arange(b, dtype=torch.float32)[:, None].repeat(1, 5)  # example i is all i
    y = (
        torch.arange(b) % 3
        if task == "single-label"
        else (torch.rand(b, 3, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    )
    out_x, out_y = _aug(task=task, mixup={"p": 1.0, "alpha": 0.4})(x, y, 0)
    onehot = torch.nn.functional.one_hot(y, 3).float() if task == "single-label" else y
    mixed = 0
    for i in range(b):
        v = float(out_x[i, 0])
        for j in range(b):  # v = lam * i + (1 - lam) * j for one j
            if j != i and abs(j - i) > 0:
                lam = (v - j) / (i - j)
                if 0.5 <= lam <= 1.0 + 1e-6 and torch.allclose(out_y[i], lam * onehot[i] + (1 - lam) * onehot[j]):
                    mixed += 1
                    break
        else:
            assert v == i and torch.equal(out_y[i], onehot[i])  # paired with itself
    assert mixed >= b // 2
    if task == "single-label":
        torch.testing.assert_close(out_y.sum(dim=1), torch.ones(b))


def test_batch_draws_follow_seed_epoch_and_step():
    x, y = _waves(), torch.zeros(8, 3)
    kw = {"gain": {"p": 0.5}, "noise": {"p": 0.5}, "polarity": {"p": 0.5}}
    a, b = _aug(seed=1, **kw), _aug(seed=1, **kw)
    a.start_epoch(2), b.start_epoch(2)
    xa, ya = a(x, y, 4)
    xb, yb = b(x, y, 4)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a(x, y, 5)[0], xa)
    b.start_epoch(3)
    assert not torch.equal(b(x, y, 4)[0], xa)
    assert not torch.equal(_aug(seed=2, **kw)(x, y, 4)[0], _aug(seed=1, **kw)(x, y, 4)[0])


def _peak_hz(y: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return float(np.fft.rfftfreq(len(y), 1 / sr)[np.argmax(spec)])


def test_pitch_shift_and_time_stretch():
    sr = 16000
    t = np.arange(sr) / sr
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    up = pitch_shift(tone, sr, 2.0)
    assert len(up) == len(tone) and _peak_hz(up[2000:-2000], sr) == pytest.approx(440 * 2 ** (2 / 12), rel=0.02)
    # a 4 Hz tremolo played 1.25x faster becomes a 5 Hz tremolo, at the same pitch
    am = (np.sin(2 * np.pi * 1000 * t) * (1 + 0.9 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)
    fast = time_stretch(am, 1.25)
    assert len(fast) == pytest.approx(len(am) / 1.25, abs=600)
    envelope = np.abs(fast) - np.abs(fast).mean()
    kernel = np.ones(160) / 160
    assert _peak_hz(np.convolve(envelope, kernel, "same"), sr) == pytest.approx(5.0, abs=0.6)
    assert _peak_hz(fast, sr) == pytest.approx(1000, rel=0.02)


def test_worker_augment_is_seeded_per_clip_and_epoch(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    make_dataset(data, "tones", "single-label", seconds=2.0)
    store = open_dataset_store(data / "tones", WaveformConfig(sample_rate=SR), progress=False)
    cfg = config_from_mapping(
        {**BASE, "augment": {"pitch_shift": {"p": 1.0, "semitones": 3}, "time_stretch": {"p": 1.0}}}
    ).augment
    base = StoreDataset(store, "train", mode="train", crop_frames=4000, seed=0)
    ds = WorkerAugment(base, cfg, SR)
    ds.set_epoch(1)
    first = [ds[i][0] for i in range(3)]
    assert all(x.shape == (4000,) for x in first)
    assert all(not torch.equal(x, base[i][0]) for i, x in enumerate(first))
    assert all(torch.equal(x, ds[i][0]) for i, x in enumerate(first))  # the same draws on a re-read
    d = ds.draws(0)
    assert 0.9 <= d["rate"] <= 1.1 and -3 <= d["semitones"] <= 3
    ds.set_epoch(2)
    assert ds.draws(0) != d
    off = WorkerAugment(base, config_from_mapping(BASE).augment, SR)
    assert torch.equal(off[0][0], base[0][0])


def test_augment_config_is_checked():
    with pytest.raises(ConfigError, match="augment.gain.p"):
        config_from_mapping({**BASE, "augment": {"gain": {"p": 1.5}}})
    with pytest.raises(ConfigError, match="min_db"):
        config_from_mapping(BASE, ["augment.gain.min_db=10", "augment.gain.max_db=0"])
    with pytest.raises(ConfigError, match="unknown config key 'augment.gain.probability'"):
        config_from_mapping(BASE, ["augment.gain.probability=0.5"])
    assert not config_from_mapping(BASE).augment.on()


# -- through the training loop -------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("aug") / "data"
    d.mkdir()
    make_dataset(d, "tones", "single-label")
    return d


EVERYTHING = [
    "augment.gain.p=0.5",
    "augment.polarity.p=0.5",
    "augment.noise.p=0.5",
    "augment.pitch_shift.p=0.5",
    "augment.time_stretch.p=0.5",
    "augment.time_mask.p=1",
    "augment.time_mask.max_width=3",
    "augment.freq_mask.p=1",
    "augment.freq_mask.max_width=3",
    "augment.mixup.p=0.5",
]


def _train(data: Path, cfg: Path, run_dir: Path, *sets: str, resume: bool = False) -> int:
    argv = ["--data-dir", str(data), "train", str(cfg), "--run-dir", str(run_dir), "--device", "cpu"]
    argv += ["--resume"] if resume else []
    for s in sets:
        argv += ["--set", s]
    return run(argv)


def test_augmented_run_is_reproducible_and_resumes_exactly(data, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", dataset="tones", model="test-tiny-mel", epochs=2)
    assert _train(data, cfg, tmp_path / "a", *EVERYTHING) == 0
    a = metrics_rows(tmp_path / "a" / "metrics.csv")
    # the same seed, a first epoch and a resumed second one: the same augmented batches
    one = write_config(tmp_path / "one.yaml", dataset="tones", model="test-tiny-mel", epochs=1)
    assert _train(data, one, tmp_path / "c", *EVERYTHING) == 0
    assert _train(data, one, tmp_path / "c", *EVERYTHING, "epochs=2", resume=True) == 0
    assert metrics_rows(tmp_path / "c" / "metrics.csv") == a
    assert _train(data, cfg, tmp_path / "plain") == 0
    assert metrics_rows(tmp_path / "plain" / "metrics.csv")[0]["train_loss"] != a[0]["train_loss"]


def test_validation_is_not_augmented(data, tmp_path):
    """Weights held still (lr ~ 0): the augmented run trains on other batches, yet
    validates exactly like the plain one."""
    cfg = write_config(tmp_path / "c.yaml", dataset="tones", model="test-tiny-mel", epochs=1, lr=1e-12)
    device_side = [s for s in EVERYTHING if s.split(".")[1] in ("time_mask", "freq_mask", "mixup")]
    assert _train(data, cfg, tmp_path / "aug", *device_side, "augment.mixup.p=1") == 0
    assert _train(data, cfg, tmp_path / "plain") == 0
    aug, plain = metrics_rows(tmp_path / "aug" / "metrics.csv")[0], metrics_rows(tmp_path / "plain" / "metrics.csv")[0]
    assert aug["train_loss"] != plain["train_loss"]
    for key in ("valid_loss", "roc_auc_macro", "pr_auc_macro", "accuracy"):
        assert float(aug[key]) == pytest.approx(float(plain[key]), abs=1e-6), key


def test_masks_need_a_mel_model(data, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", dataset="tones", model="test-tiny-wave", epochs=1)
    assert _train(data, cfg, tmp_path / "w", "augment.time_mask.p=1") != 0
    assert "need a mel model" in capsys.readouterr().err
    assert _train(data, cfg, tmp_path / "w2", "augment.gain.p=1", "augment.pitch_shift.p=1") == 0
