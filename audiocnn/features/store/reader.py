"""Reading a finished store: a training sample is one slice of a memory map (a random
crop), never a file open per clip -- 100k tiny ``.npy`` files are what makes the usual
music-tagging loaders slow."""

from __future__ import annotations

import json
import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np

from audiocnn.constants import SINGLE_LABEL
from audiocnn.errors import FeatureError
from audiocnn.features.frontends import FrontendConfig, config_from_dict
from audiocnn.features.store.layout import (
    STORE_FORMAT,
    WAVEFORM_SCALE,
    features_command,
    meta_matches,
    read_json,
    storage,
    store_dir,
)


class FeatureStore:
    """A finished store, read through lazily opened memory maps.

    Picklable: the maps are dropped on pickling and reopened on first use in each
    process, so it can be handed to ``DataLoader`` workers.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        meta_path = self.path / "store.json"
        done_path = self.path / "complete.json"
        if not meta_path.is_file() or not done_path.is_file():
            raise FeatureError(f"{self.path}: not a finished feature store")
        try:
            meta = read_json(meta_path)
            self.summary: dict[str, Any] = read_json(done_path)
        except (OSError, json.JSONDecodeError) as exc:
            raise FeatureError(f"{self.path}: unreadable store metadata ({exc})") from None
        if meta.get("format") != STORE_FORMAT:
            raise FeatureError(
                f"{self.path}: store format {meta.get('format')} is not supported (expected {STORE_FORMAT})"
            )
        self.meta = meta
        self.config: FrontendConfig = config_from_dict(meta["config"])
        self.kind: str = self.config.kind
        self.labels: list[str] = list(meta["labels"])
        self.task: str = meta["task"]
        self.dtype, self.dim = storage(self.config)
        self.scale = 1.0 / WAVEFORM_SCALE if self.kind == "waveform" else 1.0
        self._index = {split: self._read_index(split) for split in meta["splits"]}
        self._arrays: dict[str, np.ndarray] = {}

    def _read_index(self, split: str) -> dict[str, Any]:
        """The index of one split, checked against the size of its data file."""
        idx_path = self.path / f"{split}.index.json"
        try:
            raw = read_json(idx_path)
        except (OSError, json.JSONDecodeError) as exc:
            raise FeatureError(f"{idx_path}: unreadable store index ({exc})") from None
        offsets = np.asarray(raw["offsets"], dtype=np.int64)
        lengths = np.asarray(raw["lengths"], dtype=np.int64)
        total = int(offsets[-1] + lengths[-1]) if len(offsets) else 0
        bin_path = self.path / f"{split}.bin"
        expected = total * self.dim * self.dtype.itemsize
        actual = bin_path.stat().st_size if bin_path.is_file() else -1
        if actual != expected:
            raise FeatureError(
                f"{bin_path}: holds {actual} bytes, the index says {expected}; the store is damaged",
                hint=f"delete {self.path} and run `{features_command(self.path.parent.parent, self.config)}`",
            )
        return {
            "ids": list(raw["ids"]),
            "offsets": offsets,
            "lengths": lengths,
            "labels": [list(x) for x in raw["labels"]],
            "total": total,
        }

    # pickling: never ship memory maps between processes
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = {}
        return state

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={self.num_clips(s)}" for s in self.splits)
        return f"FeatureStore({str(self.path)!r}, {self.kind}, {counts})"

    @property
    def splits(self) -> list[str]:
        return list(self._index)

    @property
    def sample_rate(self) -> int:
        return int(self.config.sample_rate)

    def _split(self, split: str) -> dict[str, Any]:
        try:
            return self._index[split]
        except KeyError:
            raise FeatureError(
                f"{self.path}: no split {split!r}; the store has {', '.join(self._index) or 'none'}"
            ) from None

    def _array(self, split: str) -> np.ndarray:
        arr = self._arrays.get(split)
        if arr is None:
            info = self._split(split)
            shape = (info["total"], self.dim) if self.dim > 1 else (info["total"],)
            if info["total"] == 0:
                arr = np.zeros(shape, dtype=self.dtype)
            else:
                # A plain ndarray over an mmap: slicing an np.memmap costs ~10x more.
                with open(self.path / f"{split}.bin", "rb") as fh:
                    buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
                arr = np.frombuffer(buf, dtype=self.dtype).reshape(shape)
            self._arrays[split] = arr
        return arr

    def clip_ids(self, split: str) -> list[str]:
        return list(self._split(split)["ids"])

    def num_clips(self, split: str) -> int:
        return len(self._split(split)["ids"])

    def lengths(self, split: str) -> np.ndarray:
        """Per-clip length in frames (mel) or samples (waveform)."""
        return self._split(split)["lengths"].copy()

    def length(self, split: str, i: int) -> int:
        return int(self._split(split)["lengths"][i])

    def read(self, split: str, i: int, start: int = 0, length: int | None = None) -> np.ndarray:
        """float32 slice ``[start, start+length)`` of clip ``i``, cut at the clip's end.

        Waveform: shape ``(samples,)``; mel: ``(n_mels, frames)``.
        """
        info = self._split(split)
        n = int(info["lengths"][i])
        if start < 0 or start > n:
            raise IndexError(f"start {start} outside clip {info['ids'][i]!r} of length {n}")
        stop = n if length is None else min(n, start + max(0, int(length)))
        off = int(info["offsets"][i])
        raw = self._array(split)[off + start : off + stop]
        if self.dim > 1:
            return np.ascontiguousarray(raw.T, dtype=np.float32)
        out = raw.astype(np.float32)
        out *= self.scale
        return out

    def clip_labels(self, split: str, i: int) -> list[int]:
        """Label indices of clip ``i`` (vocabulary order)."""
        return list(self._split(split)["labels"][i])

    def targets(self, split: str) -> np.ndarray:
        """Class indices ``(N,)`` int64 (single-label) or multi-hot ``(N, C)`` float32."""
        labels = self._split(split)["labels"]
        if self.task == SINGLE_LABEL:
            return np.asarray([lab[0] for lab in labels], dtype=np.int64)
        out = np.zeros((len(labels), len(self.labels)), dtype=np.float32)
        for row, lab in enumerate(labels):
            out[row, lab] = 1.0
        return out

    def failures(self) -> list[dict[str, Any]]:
        path = self.path / "failures.jsonl"
        if not path.is_file():
            return []
        with open(path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]


def open_store(
    dataset_dir: str | os.PathLike, config: FrontendConfig, *, fingerprint: str | None = None
) -> FeatureStore:
    """The finished store of ``config`` under ``dataset_dir``; FeatureError says how to build
    it. With ``fingerprint`` (the manifest's), a store extracted from another is refused."""
    path = store_dir(dataset_dir, config)
    if not (path / "complete.json").is_file():
        state = "was not finished" if (path / "store.json").is_file() else "does not exist"
        raise FeatureError(
            f"{path}: the {config.kind} feature store (config {config.hash}) {state}",
            hint=f"run `{features_command(dataset_dir, config)}`",
        )
    store = FeatureStore(path)
    if fingerprint is not None and fingerprint != store.meta.get("manifest_fingerprint"):
        raise FeatureError(
            f"{path}: the dataset's manifest changed after these features were extracted",
            hint=f"run `{features_command(dataset_dir, config)}` to re-extract",
        )
    return store


def finished_store(path: Path, config: FrontendConfig, fingerprint: str) -> FeatureStore | None:
    """The store at ``path`` when it is complete and made from this source and config."""
    if not (path / "complete.json").is_file():
        return None
    try:
        meta = read_json(path / "store.json")
    except (OSError, json.JSONDecodeError):
        return None
    if not meta_matches(meta, config, fingerprint):
        return None
    try:
        return FeatureStore(path)
    except FeatureError:
        return None


def extraction_summary(store: FeatureStore) -> dict[str, Any]:
    """What the CLI prints for a store: path, clip counts per split, failures."""
    return {
        "kind": store.kind,
        "path": str(store.path),
        "config_hash": store.config.hash,
        "clips": {s: store.num_clips(s) for s in store.splits},
        "failures": len(store.failures()),
    }
