"""Transfer learning: a frozen backbone's embeddings cached per clip and chunk (the head
trains exactly as it would on the network's output), and fine-tuning the last blocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from audiocnn.cli.main import run
from audiocnn.features.store import StoreDataset
from audiocnn.models.checkpoint import load_checkpoint
from audiocnn.testing.training import make_dataset, write_config
from audiocnn.training.config import config_from_mapping
from audiocnn.training.data import open_dataset_store
from audiocnn.training.embeddings import EmbeddingDataset, HeadOnly, cache_key, compute_embeddings
from audiocnn.training.losses import TaggingLoss
from audiocnn.training.setup import freeze_backbone, set_train_mode, uses_embedding_cache

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, Path]:
    """(data dir with `tones` and `tags`, a test-tiny-mel checkpoint trained on `tones`)."""
    root = tmp_path_factory.mktemp("transfer")
    data = root / "data"
    data.mkdir()
    make_dataset(data, "tones", "single-label")
    make_dataset(data, "tags", "multi-label", n_train=12)
    cfg = write_config(root / "base.yaml", dataset="tones", model="test-tiny-mel", epochs=1)
    assert run(["--data-dir", str(data), "train", str(cfg), "--run-dir", str(root / "base"), "--device", "cpu"]) == 0
    return data, root / "base" / "best.safetensors"


def _train(data: Path, cfg: Path, run_dir: Path, *sets: str) -> int:
    argv = ["--data-dir", str(data), "train", str(cfg), "--run-dir", str(run_dir), "--device", "cpu"]
    for s in sets:
        argv += ["--set", s]
    return run(argv)


def test_cached_embeddings_give_the_head_the_same_gradients(base):
    data, ckpt = base
    model, _meta = load_checkpoint(ckpt)
    model.reset_head(4)
    freeze_backbone(model)
    store = open_dataset_store(data / "tags", model.frontend_config, progress=False)
    crop, chunks = model.input_frames, 3
    emb = compute_embeddings(
        model, store, "train", crop=crop, chunks=chunks, device=torch.device("cpu"), autocast=torch.enable_grad
    )
    crops = StoreDataset(store, "train", mode="eval", crop_frames=crop, eval_chunks=chunks)
    assert emb.shape == (len(crops), chunks, 8)
    # one chunk per clip, as an epoch draws them
    train = EmbeddingDataset(emb, store.targets("train"), mode="train", seed=3)
    train.set_epoch(5)
    picks = [train.chunk_of(i) for i in range(len(train))]
    x_full = torch.stack([crops[i][0][j] for i, j in enumerate(picks)])
    x_emb = torch.stack([train[i][0] for i in range(len(train))])
    y = torch.stack([train[i][1] for i in range(len(train))])
    loss_fn = TaggingLoss("multi-label", 4)
    grads = []
    for net, x in ((model, x_full), (HeadOnly(model), x_emb)):
        set_train_mode(model, frozen_backbone=True)
        model.head.eval()  # dropout off: the same function on both paths
        model.zero_grad(set_to_none=True)
        loss_fn(net(x, from_features=True), y).backward()
        grads.append([p.grad.clone() for p in model.head.parameters()])
        assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("head."))
    for g_full, g_emb in zip(*grads):
        assert g_full.abs().sum() > 0
        torch.testing.assert_close(g_full, g_emb, rtol=1e-5, atol=1e-6)


def test_chunk_draws_follow_the_seed_and_epoch():
    emb = np.random.default_rng(0).standard_normal((50, 8, 4)).astype(np.float32)
    a = EmbeddingDataset(emb, np.zeros(50, dtype=np.int64), mode="train", seed=1)
    b = EmbeddingDataset(emb, np.zeros(50, dtype=np.int64), mode="train", seed=1)
    a.set_epoch(2), b.set_epoch(2)
    draws = [a.chunk_of(i) for i in range(50)]
    assert draws == [b.chunk_of(i) for i in range(50)] and len(set(draws)) > 4
    b.set_epoch(3)
    assert draws != [b.chunk_of(i) for i in range(50)]
    assert torch.equal(a[7][0], torch.from_numpy(emb[7, draws[7]]))
    assert EmbeddingDataset(emb, np.zeros(50), mode="eval")[7][0].shape == (8, 4)


def test_cache_key_follows_weights_and_chunks(base):
    data, ckpt = base
    model, _ = load_checkpoint(ckpt)
    store = open_dataset_store(data / "tags", model.frontend_config, progress=False)
    key = cache_key(model, store, 8, {"train": 2, "valid": 3}, "None")
    model.reset_head(4)  # a new head does not change the embeddings
    assert cache_key(model, store, 8, {"train": 2, "valid": 3}, "None") == key
    assert cache_key(model, store, 8, {"train": 4, "valid": 3}, "None") != key
    assert cache_key(model, store, 9, {"train": 2, "valid": 3}, "None") != key
    with torch.no_grad():
        model.conv.weight.add_(1e-3)
    assert cache_key(model, store, 8, {"train": 2, "valid": 3}, "None") != key


def test_frozen_run_trains_the_head_on_cached_embeddings(base, tmp_path, capsys):
    data, ckpt = base
    cfg = write_config(tmp_path / "ft.yaml", dataset="tags", model="test-tiny-mel", epochs=3, lr=0.05)
    sets = (f"init={ckpt}", "freeze_backbone=true", "embedding_chunks=2")
    assert uses_embedding_cache(config_from_mapping({"dataset": "tags", "init": "x", "freeze_backbone": True}))
    assert _train(data, cfg, tmp_path / "a", *sets) == 0
    caches = sorted((data / "tags" / "embeddings").glob("*/train.npy"))
    assert len(caches) == 1 and np.load(caches[0]).shape[1] == 2
    assert "embeddings: train split" in capsys.readouterr().err
    before, after = load_file(ckpt), load_file(tmp_path / "a" / "best.safetensors")
    for k in (k for k in before if not k.startswith("head.")):
        assert torch.equal(before[k], after[k]), k
    stamp = caches[0].stat().st_mtime_ns
    assert _train(data, cfg, tmp_path / "b", *sets) == 0  # a second run reuses the cache
    assert "embeddings: train split" not in capsys.readouterr().err and caches[0].stat().st_mtime_ns == stamp
    assert load_file(tmp_path / "b" / "best.safetensors").keys() == after.keys()
    from audiocnn.training.callbacks import metrics_rows

    assert metrics_rows(tmp_path / "a" / "metrics.csv") == metrics_rows(tmp_path / "b" / "metrics.csv")
    # resumed after epoch 2 of 3, the cached run ends where the uninterrupted one did
    cfg2 = write_config(tmp_path / "ft2.yaml", dataset="tags", model="test-tiny-mel", epochs=2, lr=0.05)
    assert _train(data, cfg2, tmp_path / "c", *sets) == 0
    argv = ["--data-dir", str(data), "train", str(cfg2), "--run-dir", str(tmp_path / "c"), "--resume"]
    assert run([*argv, "--device", "cpu", "--set", "epochs=3"]) == 0
    assert metrics_rows(tmp_path / "c" / "metrics.csv") == metrics_rows(tmp_path / "a" / "metrics.csv")


def test_the_cache_off_and_the_cache_on_validate_alike(base, tmp_path):
    """Validation of a cached run scores the same chunks as the network would: with a
    learning rate too small to move the head, both paths report the same metrics."""
    data, ckpt = base
    cfg = write_config(tmp_path / "ft.yaml", dataset="tags", model="test-tiny-mel", epochs=1, lr=1e-12)
    common = (f"init={ckpt}", "freeze_backbone=true")
    assert _train(data, cfg, tmp_path / "on", *common) == 0
    assert _train(data, cfg, tmp_path / "off", *common, "embedding_cache=false") == 0
    from audiocnn.training.callbacks import metrics_rows

    on, off = metrics_rows(tmp_path / "on" / "metrics.csv")[0], metrics_rows(tmp_path / "off" / "metrics.csv")[0]
    for key in ("valid_loss", "roc_auc_macro", "pr_auc_macro"):
        assert float(on[key]) == pytest.approx(float(off[key]), abs=1e-5), key


def test_fine_tuning_the_last_blocks(base, tmp_path):
    data, ckpt = base
    cfg = write_config(tmp_path / "ft.yaml", dataset="tags", model="test-tiny-mel", epochs=1, lr=0.05)
    assert _train(data, cfg, tmp_path / "ft", f"init={ckpt}", "freeze_backbone=true", "unfreeze_blocks=1") == 0
    before, after = load_file(ckpt), torch.load(tmp_path / "ft" / "last.pt", weights_only=False)["model"]
    # test-tiny-mel's blocks are conv, bn: the last (bn) trains, conv stays
    assert torch.equal(before["conv.weight"], after["conv.weight"])
    assert not torch.equal(before["bn.weight"], after["bn.weight"])
    assert not torch.equal(before["bn.running_mean"], after["bn.running_mean"])
    assert _train(data, cfg, tmp_path / "bad", f"init={ckpt}", "freeze_backbone=true", "unfreeze_blocks=5") != 0
