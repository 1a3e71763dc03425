"""Datasets: registry, download machinery, manifest.

Library entry points (the CLI commands ``datasets``, ``prepare``, ``verify`` and ``info``
call exactly these)::

    from audiocnn.datasets import prepare_dataset, dataset_info, verify_dataset
    manifest = prepare_dataset("gtzan", "data", source="~/Downloads/genres.tar.gz")

One module per job: :mod:`.spec` (the types a dataset module declares), :mod:`.registry`
(their names), one module per dataset, :mod:`.acquire` (getting a dataset's files) over
:mod:`.http` (resumable downloads), :mod:`.checksums`, :mod:`.archives` (safe extraction,
checked by :mod:`.archive_checks`), :mod:`.parts` (split archives read as one stream),
:mod:`.remotezip` (zip members fetched with HTTP Range) and :mod:`.markers` (completion
markers); :mod:`.prepare`, :mod:`.verify` and :mod:`.info` (the commands), :mod:`.probe`
(decode checks, in worker processes), :mod:`.manifest`, :mod:`.splits`, :mod:`.lock`.
"""

from audiocnn.datasets.archives import extract_archive
from audiocnn.datasets.checksums import file_digest
from audiocnn.datasets.http import download_file
from audiocnn.datasets.info import dataset_info, datasets_overview, prepared_datasets
from audiocnn.datasets.manifest import Clip, Manifest, read_manifest, write_manifest
from audiocnn.datasets.prepare import prepare_dataset
from audiocnn.datasets.registry import get_dataset, list_datasets, register_dataset
from audiocnn.datasets.spec import DatasetSpec, Remote
from audiocnn.datasets.verify import VerifyReport, verify_dataset

__all__ = [
    "Clip",
    "DatasetSpec",
    "Manifest",
    "Remote",
    "VerifyReport",
    "dataset_info",
    "datasets_overview",
    "download_file",
    "extract_archive",
    "file_digest",
    "get_dataset",
    "list_datasets",
    "prepare_dataset",
    "prepared_datasets",
    "read_manifest",
    "register_dataset",
    "verify_dataset",
    "write_manifest",
]
