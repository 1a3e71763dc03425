"""What is prepared under a data dir: the ``datasets`` overview (with disk usage), the
``info`` of one prepared dataset, and the summary of its excluded clips."""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from audiocnn.datasets.manifest import (
    MANIFEST_NAME,
    manifest_path,
    not_prepared,
    read_manifest,
    read_manifest_header,
)
from audiocnn.datasets.registry import get_dataset, list_datasets
from audiocnn.progress import human_size


def prepared_dataset_dir(data_dir: str | os.PathLike, name: str) -> Path:
    d = Path(data_dir) / name
    if not manifest_path(d).is_file():
        raise not_prepared(d, prepared_datasets(data_dir), builtin=name in list_datasets())
    return d


def dataset_info(data_dir: str | os.PathLike, name: str) -> dict[str, Any]:
    """The ``audiocnn info --format json`` object of a prepared dataset."""
    return read_manifest(prepared_dataset_dir(data_dir, name)).info()


def prepared_datasets(data_dir: str | os.PathLike) -> list[str]:
    root = Path(data_dir)
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if d.is_dir() and (d / MANIFEST_NAME).is_file())


def disk_usage(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


def datasets_overview(data_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of ``audiocnn datasets``: every registered dataset plus user folders prepared."""
    root = Path(data_dir)
    rows = []
    for name in list_datasets():
        spec = get_dataset(name)
        d = root / name
        prepared = (d / MANIFEST_NAME).is_file() and not spec.needs_name
        size = disk_usage(d) if d.is_dir() and not spec.needs_name else None
        rows.append(
            {
                "name": name,
                "dataset": name,
                "title": spec.title,
                "task": (
                    "from labels"
                    if spec.needs_name
                    else spec.task
                    if len(spec.allowed_tasks()) == 1
                    else "single/multi-label"
                ),
                "tasks": list(spec.allowed_tasks()),
                "classes": spec.classes,
                "download_size": spec.approx_size,
                "license": spec.license,
                "license_short": spec.license_short,
                "citation": spec.citation,
                "size_on_disk": size,
                "size_on_disk_human": human_size(size) if size is not None else None,
                "prepared": prepared,
                "path": str(d) if prepared else None,
            }
        )
    builtin = set(list_datasets())
    for name in prepared_datasets(root):
        if name in builtin:
            continue
        header = read_manifest_header(root / name) or {}
        size = disk_usage(root / name)
        rows.append(
            {
                "name": name,
                "dataset": header.get("dataset", "?"),
                "title": f"user dataset ({header.get('dataset', '?')})",
                "task": header.get("task", "?"),
                "classes": len(header.get("labels", [])),
                "download_size": "",
                "size_on_disk": size,
                "size_on_disk_human": human_size(size),
                "prepared": True,
                "path": str(root / name),
            }
        )
    return rows


def excluded_summary(excluded: Iterable[dict[str, Any]]) -> list[tuple[str, int]]:
    """Excluded clips counted by reason (first clause), most frequent first."""
    counts: Counter[str] = Counter()
    for e in excluded:
        counts[str(e.get("reason", "")).split(":")[0]] += 1
    return counts.most_common()
