"""Experiment config: schema, YAML round trip, --set overrides, errors, shipped configs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from audiocnn.configio import apply_overrides, valid_keys
from audiocnn.errors import ConfigError
from audiocnn.training.config import TrainConfig, config_from_mapping, load_config, save_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SHIPPED = [
    "gtzan-samplecnn",
    "gtzan-musicnn",
    "mtat-samplecnn",
    "mtat-fcn",
    "mtat-musicnn",
    "mtat-shortchunk-resnet",
    "mtat-crnn",
    "mtat-harmonic-cnn",
    "mtat-cnnsa",
    "fma-small-musicnn",
]
BASE = {"dataset": "gtzan", "model": "fcn"}


def test_defaults_and_yaml_round_trip(tmp_path):
    cfg = config_from_mapping(BASE, ["lr=3e-4", "schedule.name=cosine", "model_kwargs.n_mels=128"])
    path = save_config(cfg, tmp_path / "config.yaml")
    again = load_config(path)
    assert again == cfg
    assert again.eval_chunks == 16  # the literature's default
    assert again.model_kwargs == {"n_mels": 128}


def test_values_are_yaml_scalars():
    cfg = config_from_mapping(
        BASE,
        [
            "lr=1e-4",  # YAML 1.1 reads this as a string; it must still be a float
            "epochs=3",
            "amp=bf16",
            "freeze_backbone=true",
            "init=null",
            "grad_clip=1.5",
            "schedule.sgd_lrs=[0.1, 0.01]",
            "model_kwargs={dropout: 0.3, channels: [1, 2]}",
        ],
    )
    assert cfg.lr == pytest.approx(1e-4) and isinstance(cfg.lr, float)
    assert cfg.epochs == 3 and cfg.amp == "bf16" and cfg.freeze_backbone is True
    assert cfg.init is None and cfg.grad_clip == 1.5
    assert cfg.schedule.sgd_lrs == [0.1, 0.01]
    assert cfg.model_kwargs == {"dropout": 0.3, "channels": [1, 2]}


def test_every_issue_key_is_addressable():
    keys = set(valid_keys(TrainConfig))
    for key in (
        "dataset",
        "split_scheme",
        "model",
        "model_kwargs",
        "task",
        "epochs",
        "batch_size",
        "optimizer",
        "lr",
        "schedule",
        "seed",
        "amp",
        "workers",
        "eval_chunks",
        "init",
        "freeze_backbone",
        "early_stopping",
        "schedule.patience",
        "early_stopping.patience",
    ):
        assert key in keys


def test_nested_shorthands():
    cfg = config_from_mapping(BASE, ["schedule=plateau", "early_stopping=7"])
    assert cfg.schedule.name == "plateau"
    assert cfg.early_stopping.enabled and cfg.early_stopping.patience == 7
    cfg = config_from_mapping(
        {**BASE, "schedule": "skip", "early_stopping": 5}, ["early_stopping=false", "schedule.adam_epochs=3"]
    )
    assert cfg.schedule.name == "skip" and cfg.schedule.adam_epochs == 3
    assert cfg.early_stopping.enabled is False


def test_overrides_do_not_mutate_input():
    raw = {"dataset": "a", "model": "b", "schedule": {"name": "plateau"}}
    out = apply_overrides(raw, ["schedule.patience=2"], TrainConfig)
    assert raw == {"dataset": "a", "model": "b", "schedule": {"name": "plateau"}}
    assert out["schedule"] == {"name": "plateau", "patience": 2}


@pytest.mark.parametrize(
    "overrides, expect",
    [
        (["lrr=1"], "unknown config key 'lrr'; did you mean 'lr'?"),
        (["schedule.patiance=1"], "unknown config key 'schedule.patiance'"),
        (["lr.x=1"], "has no sub-keys"),
        (["lr"], "`overrides` expects key=value"),  # the CLI says --set: training/test_config_errors.py
        (["epochs=many"], "'epochs' must be an integer"),
        (["lr=fast"], "'lr' must be a number"),
        (["freeze_backbone=maybe"], "must be true or false"),
        (["optimizer=rmsprop"], "'optimizer' must be one of adam, adamw, sgd"),
        (["amp=fp8"], "'amp' must be one of"),
        (["task=regression"], "'task' must be one of"),
        (["epochs=0"], "'epochs' must be >= 1"),
        (["schedule.factor=2"], "'schedule.factor' must be in (0, 1)"),
        (["dataset=''"], "config key 'dataset' is required"),
        (["dataset="], "'dataset' must be a string, got None"),
    ],
)
def test_errors_name_the_key(overrides, expect):
    with pytest.raises(ConfigError) as info:
        config_from_mapping(BASE, overrides)
    assert expect in str(info.value)


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ConfigError) as info:
        config_from_mapping(BASE, ["colour=blue"])
    msg = str(info.value)
    assert "valid keys:" in msg and "batch_size" in msg and "early_stopping.patience" in msg


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config(lst)
    typo = tmp_path / "typo.yaml"
    typo.write_text("dataset: x\nmodel: y\nbatchsize: 3\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown config key 'batchsize'; did you mean 'batch_size'"):
        load_config(typo)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_load(name):
    path = CONFIGS / f"{name}.yaml"
    cfg = load_config(path)
    assert isinstance(cfg, TrainConfig)
    text = path.read_text()
    assert "#" in text and ("arxiv" in text.lower() or "github.com" in text.lower()), "cite the source"
    if name.startswith("mtat-"):  # the paper's test-split numbers, with the table they come from
        assert re.search(r"ROC-AUC \.\d{4}", text) and re.search(r"PR-AUC \.\d{4}", text) and "Table" in text
    # every key in the file is explicit about the paper's value (no silent defaults for these)
    raw = yaml.safe_load(text)
    for key in ("dataset", "model", "epochs", "batch_size", "optimizer", "lr", "schedule"):
        assert key in raw, f"{name}: {key} not set"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_build_their_model(name):
    from audiocnn.models.registry import create_model, list_models

    cfg = load_config(CONFIGS / f"{name}.yaml")
    if cfg.model not in list_models():
        pytest.skip(f"model {cfg.model!r} is not in this build's zoo")
    model = create_model(cfg.model, num_classes=10, task=cfg.task or "multi-label", **cfg.model_kwargs)
    assert model.input_frames > 0
