"""The learning checks: every model family trained briefly on CPU must learn timbre.

Shared by ``tests/models/test_learning.py`` (one run per model and task, true labels, against
the bars) and ``benchmarks/learning_calibration.py`` (several seeds with true and with
shuffled labels, which is where the bars come from).

The models are the registered families at reduced width and at 8 kHz (a 1.5 s log-mel
window of 64 bins, or 6,561 raw samples for the sample-level nets), so that a check costs
seconds; the layer structure, the BatchNorm settings (musicnn and vgg keep TensorFlow's
decay of 0.99) and the training code are the real ones. Each run goes through the real
path: ``prepare folder`` -> feature store -> ``train`` -> ``evaluate`` on the held-back
test split (clips scored from their audio files, as ``audiocnn tag`` scores them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from audiocnn.evaluation import evaluate
from audiocnn.tagging import TagOptions
from audiocnn.testing.learning_data import SOURCES, shuffle_labels, write_folder
from audiocnn.testing.training import prepare_folder
from audiocnn.training.config import config_from_mapping
from audiocnn.training.loop import train

SR = 8000
MEL = {
    "kind": "mel",
    "sample_rate": SR,
    "n_fft": 512,
    "hop_length": 128,
    "n_mels": 64,
    "f_max": 4000.0,
    "compression": "db",
}
WAVE = {"kind": "waveform", "sample_rate": SR}
MEL_WINDOW = 12000  # 1.5 s, 94 frames: what vgg's five poolings need at least

MODEL_KWARGS: dict[str, dict[str, Any]] = {
    "musicnn": {
        "frontend": MEL,
        "timbral_filters": 16,
        "temporal_filters": 8,
        "temporal_lengths": [32, 16, 8],
        "midend_filters": 16,
        "backend_units": 32,
        "input_length": MEL_WINDOW,
    },
    "vgg": {"frontend": MEL, "filters": 16, "input_length": MEL_WINDOW},
    "fcn": {
        "frontend": MEL,
        "channels": [16, 32, 32, 32, 32],
        "pools": [[2, 2], [2, 2], [2, 2], [2, 2], [4, 5]],
        "input_length": MEL_WINDOW,
    },
    "shortchunk-cnn": {"frontend": MEL, "channels": [16, 16, 32, 32, 32, 32], "input_length": MEL_WINDOW},
    "shortchunk-resnet": {"frontend": MEL, "channels": [16, 16, 32, 32, 32, 32], "input_length": MEL_WINDOW},
    "crnn": {
        "frontend": MEL,
        "channels": [16, 32, 32, 32],
        "pools": [[2, 2], [2, 2], [4, 2], [4, 2]],
        "rnn_units": 16,
        "input_length": MEL_WINDOW,
    },
    "cnnsa": {
        "frontend": MEL,
        "channels": [16, 16, 32, 32, 32, 32],
        "strides": [[2, 2], [2, 2], [2, 2], [2, 1], [2, 1], [2, 1]],
        "attention_heads": 4,
        "ffn_dim": 64,
        "input_length": MEL_WINDOW,
    },
    "harmonic-cnn": {
        "frontend": WAVE,
        "channels": [16, 16, 32, 32, 32],
        "pools": [[2, 2], [2, 2], [2, 2], [2, 2], [3, 2]],
        "semitone_scale": 1,  # 52 pitch bands at 8 kHz
        "n_fft": 256,
        "hop_length": 128,
        "input_length": MEL_WINDOW,
    },
    "samplecnn": {"frontend": WAVE, "blocks": [16, 16, 32, 32, 32, 32, 32], "stem_channels": 16, "final_channels": 32},
    "samplecnn-se": {
        "frontend": WAVE,
        "blocks": [16, 16, 32, 32, 32, 32, 32],
        "stem_channels": 16,
        "amplifying_ratio": 2,
    },
}

TASKS = ("single-label", "multi-label")
COUNTS = {"train": 96, "valid": 24, "test": 48}
SECONDS = 2.0
DATASETS = {"single-label": "learn-single", "multi-label": "learn-multi"}

TRAIN = {
    "epochs": 10,
    "batch_size": 16,
    "optimizer": "adam",
    "lr": 3e-3,
    "eval_chunks": 4,
    "eval_batch_size": 8,
    "workers": 0,
    "amp": "none",
    "tensorboard": False,
    "early_stopping": {"enabled": False},
    "schedule": {"name": "constant"},
}


def prepare_datasets(data_dir: Path, audio_root: Path, *, shuffled_seeds: tuple[int, ...] = ()) -> dict[str, str]:
    """Write and ``prepare folder`` the two datasets (and label-shuffled copies of them,
    named ``<name>-shuffled<seed>``); returns ``{dataset name: task}``."""
    made = {}
    for task, name in DATASETS.items():
        src = audio_root / name
        csv_path = write_folder(src, task, counts=COUNTS, seconds=SECONDS, sr=SR, seed=7, sources=SOURCES)
        variants = [(name, csv_path)]
        for s in shuffled_seeds:
            shuffled = shuffle_labels(csv_path, s, src.parent / f"{name}-shuffled{s}.csv")
            variants.append((f"{name}-shuffled{s}", shuffled))
        for dataset, labels in variants:
            code = prepare_folder(data_dir, src, labels, dataset, task)
            if code != 0:
                raise RuntimeError(f"prepare folder {dataset} failed with exit code {code}")
            made[dataset] = task
    return made


def run_check(
    model: str, dataset: str, *, data_dir: Path, runs_dir: Path, seed: int = 0, device: str = "cpu", **overrides: Any
) -> dict[str, Any]:
    """Train ``model`` from scratch on ``dataset`` and return its test-split metrics."""
    values = {**TRAIN, "dataset": dataset, "model": model, "model_kwargs": MODEL_KWARGS[model], "seed": seed}
    values.update(overrides)
    config = config_from_mapping(values)
    run_dir = runs_dir / f"{model}-{dataset}-{seed}"
    train(config, run_dir, data_dir=data_dir, device=device, progress=False)
    # F1 at 0.5, the statistic the bars are calibrated on (not the thresholds picked on valid)
    return evaluate(
        run_dir, TagOptions(threshold=0.5), data_dir=data_dir, split="test", device=device, plots=False, progress=False
    )
