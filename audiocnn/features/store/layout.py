"""Where a store lives, what its files hold, and what it was made from.

Layout of ``<dataset_dir>/features/<kind>-<config.hash>/``::

    store.json            front-end config, storage dtype, chunk plan, source fingerprint
    <split>.bin           one flat array per split: int16 samples (waveform) or
                          float16 (frames, n_mels) rows (mel), clips back to back
    <split>.index.json    clip ids, offsets, lengths (samples or frames), label indices
    failures.jsonl        clips that could not be extracted, with the reason
    complete.json         written last: the store is finished and may be opened

While extracting, ``parts/<split>-<n>.bin`` + ``.json`` hold committed chunks and
``<split>.merge.json`` the progress of a merge (see :mod:`.extract` and :mod:`.merge`).

Storage: waveforms are int16 at a fixed scale of 2**14 per unit (about 6 dB of headroom
above full scale, so decoder overshoot of MP3s is kept rather than clipped; 81 dB SNR
for music at -12 dBFS RMS, far below the codec's own noise). int16 beat float16 on
measurement: 5x faster to write, 8x faster to turn back into float32 per crop, and higher
SNR at ordinary levels (float16 only wins on very quiet signals). Mels are float16 as
computed by the front-end (dB values need no more than float16's 11 bits).

The store never reads a dataset: what it is extracted from is a :class:`StoreSource`
(clips with audio paths, splits and label indices, plus a fingerprint of where they came
from, the manifest's), built by the layer above.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from audiocnn import __version__
from audiocnn.constants import SPLITS
from audiocnn.errors import ConfigError, next_call
from audiocnn.features.frontends import FrontendConfig, MelConfig, WaveformConfig
from audiocnn.fileio import atomic_write_bytes, json_text

STORE_FORMAT = 1
WAVEFORM_SCALE = 2.0**14  # int16 units per 1.0 of amplitude (+6 dB headroom)
FEATURE_KINDS = ("waveform", "mel")


@dataclass(frozen=True)
class StoreClip:
    """One clip to extract: its id, audio file, split and label indices (vocabulary order)."""

    id: str
    path: str
    split: str
    labels: tuple[int, ...]


@dataclass(frozen=True)
class StoreSource:
    """Everything a store is extracted from. ``fingerprint`` identifies the source (the
    manifest's): a store made from another fingerprint is stale and extracted again."""

    name: str
    task: str
    labels: tuple[str, ...]
    clips: tuple[StoreClip, ...]
    fingerprint: str

    def split(self, split: str) -> list[StoreClip]:
        return [c for c in self.clips if c.split == split]


# -- names and paths -----------------------------------------------------------------------


def default_frontend(kind: str, sample_rate: int | None = None) -> FrontendConfig:
    """The front-end config a plain ``audiocnn features --kind KIND`` uses."""
    if kind == "waveform":
        return WaveformConfig() if sample_rate is None else WaveformConfig(sample_rate=int(sample_rate))
    if kind == "mel":
        return MelConfig() if sample_rate is None else MelConfig(sample_rate=int(sample_rate))
    raise ConfigError(f"feature kind must be 'waveform' or 'mel', got {kind!r}")


def store_dir(dataset_dir: str | os.PathLike, config: FrontendConfig) -> Path:
    """``<dataset_dir>/features/<kind>-<hash>/``: one folder per distinct front-end config."""
    return Path(dataset_dir) / "features" / f"{config.kind}-{config.hash}"


def features_command(dataset_dir: str | os.PathLike, config: FrontendConfig, **more: Any) -> str:
    """The ``features`` call (:func:`audiocnn.errors.next_call`) that builds the store of
    ``config``, with ``more`` arguments."""
    args: dict[str, Any] = {"kind": config.kind}
    default = default_frontend(config.kind)
    if config.sample_rate != default.sample_rate:
        args["sample_rate"] = config.sample_rate
    overrides = []
    for f in dataclasses.fields(config):
        if f.name in ("kind", "sample_rate"):
            continue
        value = getattr(config, f.name)
        if value != getattr(default, f.name):
            overrides.append(f"{f.name}={'null' if value is None else json.dumps(value).strip(chr(34))}")
    if overrides:
        args["overrides"] = overrides
    return next_call("features", Path(dataset_dir).name, **args, **more)


def storage(config: FrontendConfig) -> tuple[np.dtype, int]:
    """(dtype, values per frame) of the store's arrays."""
    if isinstance(config, MelConfig):
        return np.dtype("<f2"), int(config.n_mels)
    return np.dtype("<i2"), 1


# -- store.json ----------------------------------------------------------------------------


def new_meta(source: StoreSource, config: FrontendConfig, chunk_clips: int) -> dict[str, Any]:
    """The ``store.json`` of a store of ``config`` extracted from ``source``."""
    dtype, _dim = storage(config)
    return {
        "format": STORE_FORMAT,
        "kind": config.kind,
        "hash": config.hash,
        "config": config.to_dict(),
        "dtype": dtype.str,
        "waveform_scale": WAVEFORM_SCALE if config.kind == "waveform" else None,
        "layout": "(samples,)" if config.kind == "waveform" else "(frames, n_mels)",
        "dataset": source.name,
        "task": source.task,
        "labels": list(source.labels),
        "splits": list(SPLITS),
        "chunk_clips": int(chunk_clips),
        "manifest_fingerprint": source.fingerprint,
        "created_by": f"audiocnn {__version__}",
    }


def meta_matches(meta: Any, config: FrontendConfig, fingerprint: str) -> bool:
    """Whether ``store.json`` describes a store of ``config`` from the source ``fingerprint``."""
    return (
        isinstance(meta, dict)
        and meta.get("format") == STORE_FORMAT
        and meta.get("config") == config.to_dict()
        and meta.get("manifest_fingerprint") == fingerprint
    )


# -- JSON files ----------------------------------------------------------------------------


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def write_json(path: Path, obj: Any, *, durable: bool = True) -> None:
    """The store's JSON encoding (:func:`audiocnn.fileio.json_text`: clip names that are not
    UTF-8 kept as ``\\udcXX`` escapes), written atomically
    (:func:`audiocnn.fileio.atomic_write_bytes`, which raises ``FileWriteError``)."""
    atomic_write_bytes(path, json_text(obj).encode("utf-8"), durable=durable)
