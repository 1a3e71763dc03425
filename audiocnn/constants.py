"""Names shared across layers, defined once."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path

SINGLE_LABEL = "single-label"  # softmax head, one class per clip
MULTI_LABEL = "multi-label"  # sigmoid head, any number of tags per clip
TASKS = (SINGLE_LABEL, MULTI_LABEL)

DEFAULT_MODEL = "musicnn-mtt"  # what `audiocnn tag` uses when no --model is given

SPLITS = ("train", "valid", "test")

#: the scalar song-level metrics, in the order tables and checkpoints list them
SCALAR_METRICS = (
    "roc_auc_macro",
    "pr_auc_macro",
    "roc_auc_micro",
    "pr_auc_micro",
    "accuracy",
    "balanced_accuracy",
    "f1_macro",
    "f1_micro",
    "precision_macro",
    "recall_macro",
    "precision_micro",
    "recall_micro",
)

BEST_CHECKPOINT_NAME = "best.safetensors"  # what a run folder's best weights are called (training.rundir)

DATA_DIR_ENV = "AUDIOCNN_DATA_DIR"
DEFAULT_DATA_DIR = "data"  # datasets and pretrained models live here unless told otherwise
PRETRAINED_DIR_NAME = "pretrained"  # data dir sub-folder of imported pretrained checkpoints
ONNX_DIR_NAME = "onnx"  # data dir sub-folder of ONNX exports
#: data dir sub-folders that are not datasets: no prepared dataset may take these names
RESERVED_DATA_DIR_NAMES = (PRETRAINED_DIR_NAME, ONNX_DIR_NAME)


def default_data_dir() -> Path:
    """``$AUDIOCNN_DATA_DIR``, else ``./data``: the data root of a command given no ``--data-dir``."""
    return Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


class Aggregate(str, Enum):
    """How the per-window scores of a song combine into one score per label."""

    mean = "mean"
    max = "max"


class Framing(str, Enum):
    """How a song is cut into model inputs (``audiocnn.tagging.tagger`` explains both)."""

    auto = "auto"  # song where the model's front-end allows it, else window
    song = "song"  # the whole song's log-mel, cut into patches (musicnn's way)
    window = "window"  # waveform windows, each through the model's front-end
