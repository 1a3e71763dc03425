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
DEFAULT_DATA_DIR = "data"  # datasets, their feature stores and embedding caches live here unless told otherwise
CACHE_DIR_ENV = "AUDIOCNN_CACHE_DIR"
PRETRAINED_DIR_NAME = "pretrained"  # cache sub-folder of imported pretrained checkpoints
ONNX_DIR_NAME = "onnx"  # cache sub-folder of ONNX exports
#: names no prepared dataset may take: data folders of earlier development versions kept
#: these two caches there, so an old data folder may still hold them
RESERVED_DATA_DIR_NAMES = (PRETRAINED_DIR_NAME, ONNX_DIR_NAME)


def default_data_dir() -> Path:
    """``$AUDIOCNN_DATA_DIR``, else ``./data``: the data root of a command given no ``--data-dir``."""
    return Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def default_cache_dir() -> Path:
    """Where model caches (pretrained imports, ONNX exports) live, shared by every project
    and every working folder: ``$AUDIOCNN_CACHE_DIR``, else ``$XDG_CACHE_HOME/audiocnn``,
    else ``~/.cache/audiocnn`` (as torch hub and Hugging Face keep theirs)."""
    explicit = os.environ.get(CACHE_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg and Path(xdg).expanduser().is_absolute() else Path.home() / ".cache"
    return base / "audiocnn"


class Aggregate(str, Enum):
    """How the per-window scores of a song combine into one score per label."""

    mean = "mean"
    max = "max"


class Framing(str, Enum):
    """How a song is cut into model inputs (``audiocnn.tagging.tagger`` explains both)."""

    auto = "auto"  # song where the model's front-end allows it, else window
    song = "song"  # the whole song's log-mel, cut into patches (musicnn's way)
    window = "window"  # waveform windows, each through the model's front-end
