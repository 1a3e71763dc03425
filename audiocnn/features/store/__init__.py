"""The on-disk feature store: decode a dataset once, train from memory-mapped slices.

One module per job:

- :mod:`.layout`   where a store lives (one folder per front-end config), its files,
                   ``store.json``, and :class:`StoreSource` / :class:`StoreClip`, what a
                   store is extracted from
- :mod:`.reader`   :class:`FeatureStore` (memory-mapped reads) and :func:`open_store`
- :mod:`.chunks`   one chunk of clips into a committed part (decode, compute, write)
- :mod:`.extract`  :func:`extract_features`: plan, resume, worker processes, failures
- :mod:`.merge`    the resumable merge of committed chunks into one array per split
- :mod:`.dataset`  :class:`StoreDataset`, the PyTorch dataset of random crops / eval chunks

The store knows nothing of datasets: the layer above (``audiocnn.training.data``) turns a
manifest into a :class:`StoreSource`.
"""

from audiocnn.features.store.chunks import CRASH_ENV
from audiocnn.features.store.dataset import StoreDataset
from audiocnn.features.store.extract import (
    DEFAULT_CHUNK_CLIPS,
    DEFAULT_MAX_FAILURES,
    DEFAULT_MIN_SECONDS,
    extract_features,
)
from audiocnn.features.store.layout import (
    FEATURE_KINDS,
    STORE_FORMAT,
    WAVEFORM_SCALE,
    StoreClip,
    StoreSource,
    default_frontend,
    features_command,
    store_dir,
)
from audiocnn.features.store.reader import FeatureStore, extraction_summary, open_store

__all__ = [
    "CRASH_ENV",
    "DEFAULT_CHUNK_CLIPS",
    "DEFAULT_MAX_FAILURES",
    "DEFAULT_MIN_SECONDS",
    "FEATURE_KINDS",
    "STORE_FORMAT",
    "WAVEFORM_SCALE",
    "FeatureStore",
    "StoreClip",
    "StoreDataset",
    "StoreSource",
    "default_frontend",
    "extract_features",
    "extraction_summary",
    "features_command",
    "open_store",
    "store_dir",
]
