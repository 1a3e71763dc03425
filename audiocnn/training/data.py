"""A prepared dataset's feature store: the manifest (datasets layer) turned into what the
store extracts from (clips, label indices, a fingerprint), extracted where missing.

This is the one place that knows both sides: the store never reads a manifest, and the
datasets layer never imports the store.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from audiocnn.constants import SPLITS
from audiocnn.datasets.manifest import Manifest, read_manifest
from audiocnn.features.frontends import FrontendConfig
from audiocnn.features.store import (
    DEFAULT_MAX_FAILURES,
    DEFAULT_MIN_SECONDS,
    FeatureStore,
    StoreClip,
    StoreSource,
    extract_features,
)
from audiocnn.shards import Shard


def manifest_fingerprint(manifest: Manifest) -> str:
    """Identity of what a store was extracted from: clips, splits, labels, file sizes."""
    h = hashlib.sha1()
    h.update(json.dumps([manifest.task, list(manifest.labels)]).encode())
    for c in manifest.clips:
        size = (c.integrity or {}).get("size")
        h.update(json.dumps([c.id, c.path, c.split, sorted(c.labels), size]).encode())
    return h.hexdigest()[:16]


def store_source(manifest: Manifest) -> StoreSource:
    """The clips of ``manifest`` (every split, manifest order) as the store extracts them."""
    clips = tuple(
        StoreClip(id=c.id, path=str(manifest.audio_path(c)), split=c.split, labels=tuple(manifest.targets(c)))
        for c in manifest.clips
        if c.split in SPLITS
    )
    return StoreSource(
        name=manifest.name,
        task=manifest.task,
        labels=tuple(manifest.labels),
        clips=clips,
        fingerprint=manifest_fingerprint(manifest),
    )


def open_dataset_store(
    dataset_dir: str | os.PathLike,
    config: FrontendConfig,
    *,
    progress: bool,
    jobs: int | None = None,
    min_seconds: float = DEFAULT_MIN_SECONDS,
    max_failure_fraction: float = DEFAULT_MAX_FAILURES,
    chunk_clips: int | None = None,
    shard: Shard | None = None,
) -> FeatureStore | None:
    """The finished store of ``config`` for the prepared dataset in ``dataset_dir``,
    extracting what is missing first (a no-op once the store matches the manifest; a
    manifest that changed since makes it extract again). See
    :func:`audiocnn.features.store.extract_features` for the options (with ``shard``, only
    this process's share, and None while other shares are left)."""
    source = store_source(read_manifest(dataset_dir))
    return extract_features(
        Path(dataset_dir),
        config,
        source,
        jobs=jobs,
        min_seconds=min_seconds,
        max_failure_fraction=max_failure_fraction,
        progress=progress,
        chunk_clips=chunk_clips,
        shard=shard,
    )
