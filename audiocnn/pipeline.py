"""prepare -> extract: the steps that span a dataset and its feature stores.

``audiocnn prepare NAME --features KIND`` is :func:`prepare` and ``audiocnn features
NAME`` is :func:`extract`. Neither layer below knows the other: the datasets layer never
imports the store, and the store never reads a manifest (``audiocnn.training.data``
turns one into the clip list the store extracts).

The store, its front-ends and torch are imported only once features are asked for, so a
plain ``prepare`` starts without them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audiocnn.datasets.manifest import Manifest
from audiocnn.datasets.prepare import prepare_dataset
from audiocnn.errors import ConfigError, UsageError

if TYPE_CHECKING:  # annotations only: importing the store at run time means importing torch
    from audiocnn.features.frontends import FrontendConfig
    from audiocnn.features.store import FeatureStore
    from audiocnn.shards import Shard

log = logging.getLogger("audiocnn.pipeline")

#: ``features`` of :func:`prepare` / ``kind`` of :func:`frontend_configs`
FEATURE_CHOICES = ("waveform", "mel", "both", "none")


def _kinds(kind: str) -> list[str]:
    if kind not in FEATURE_CHOICES:
        raise UsageError(f"feature kind must be one of {', '.join(FEATURE_CHOICES)}, got {kind!r}")
    return {"both": ["waveform", "mel"], "none": []}.get(kind, [kind])


def frontend_configs(
    kind: str, sample_rate: int | None = None, options: Mapping[str, Any] | None = None
) -> list[FrontendConfig]:
    """The front-end configs of ``kind`` (waveform, mel, both) at ``sample_rate`` (default:
    each front-end's), with ``options`` (front-end fields, e.g. ``{"n_mels": 128}``) applied
    to the front-ends that have them."""
    from audiocnn.features.store import default_frontend  # deferred: torch, only when features are asked for

    if sample_rate is not None and sample_rate <= 0:
        raise UsageError(f"sample_rate must be positive, got {sample_rate}")
    options = dict(options or {})
    configs = [default_frontend(k, sample_rate) for k in _kinds(kind)]
    fields = {c.kind: {f.name for f in dataclasses.fields(c)} - {"kind", "sample_rate"} for c in configs}
    for key in options:
        if key in ("kind", "sample_rate"):
            raise UsageError(f"front-end option {key!r}: kind and sample_rate are set on their own, not as options")
        if not any(key in names for names in fields.values()):
            valid = sorted(set().union(*fields.values()))
            raise UsageError(
                f"front-end option {key!r}: not a {'/'.join(fields)} front-end option; valid: {', '.join(valid)}"
            )
    out = []
    for c in configs:
        mine = {k: v for k, v in options.items() if k in fields[c.kind]}
        try:
            out.append(dataclasses.replace(c, **mine) if mine else c)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"options of the {c.kind} front-end: {exc}") from None
    return out


def extract(
    dataset_dir: str | os.PathLike,
    configs: Sequence[FrontendConfig],
    *,
    jobs: int | None = None,
    min_seconds: float | None = None,
    max_failure_fraction: float | None = None,
    progress: bool = True,
    shard: Shard | None = None,
) -> list[FeatureStore]:
    """The feature store of each config for the prepared dataset in ``dataset_dir``,
    extracted where missing (see :func:`audiocnn.training.data.open_dataset_store`;
    ``None`` takes the store's default). With ``shard``, only this process's share of each
    store is extracted, and the list is empty while other shares are left (the last share
    to finish merges each store)."""
    from audiocnn.training.data import open_dataset_store  # deferred: torch, only when features are asked for

    options: dict[str, Any] = {"jobs": jobs, "progress": progress, "shard": shard}
    if min_seconds is not None:
        options["min_seconds"] = min_seconds
    if max_failure_fraction is not None:
        options["max_failure_fraction"] = max_failure_fraction
    stores = []
    for config in configs:
        log.info("extracting %s features (config %s) of %s", config.kind, config.hash, dataset_dir)
        stores.append(open_dataset_store(Path(dataset_dir), config, **options))
    return stores if all(store is not None for store in stores) else []


def prepare(
    name: str,
    data_dir: str | os.PathLike,
    *,
    features: str = "none",
    jobs: int | None = None,
    progress: bool = True,
    **options: Any,
) -> Manifest:
    """:func:`audiocnn.datasets.prepare_dataset` (``options`` are its own), then the
    default feature store(s) of ``features`` (waveform, mel, both or none), extracted while
    the dataset's prepare lock is still held, so no other prepare rewrites its clips
    meanwhile."""
    kinds = _kinds(features)
    if not kinds:
        return prepare_dataset(name, data_dir, jobs=jobs, progress=progress, **options)

    def extract_defaults(manifest: Manifest) -> None:
        extract(manifest.root, frontend_configs(features), jobs=jobs, progress=progress)

    return prepare_dataset(name, data_dir, jobs=jobs, progress=progress, then=extract_defaults, **options)
