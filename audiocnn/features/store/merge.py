"""The merge of committed chunks into one array per split.

Each split's parts are appended into ``<split>.bin`` in chunk order, deleting each part
once it is appended, so the disk never holds the split twice. The merge is resumable:
``<split>.merge.json`` records how many parts (and bytes) are durably in the partial file,
every ``_MERGE_STEP_BYTES``; parts are deleted only once recorded, so a crash mid-merge
truncates back to the last record and continues from the parts still there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from audiocnn.errors import FeatureError
from audiocnn.features.store.layout import read_json, write_json

# Merge progress is made durable (fsync + record) every this many bytes.
_MERGE_STEP_BYTES = 256 << 20


def merging_splits(path: Path, splits: list[str]) -> set[str]:
    """Splits whose parts are (being) merged: their part files may already be gone."""
    return {s for s in splits if (path / f"{s}.merge.json").is_file() or (path / f"{s}.index.json").is_file()}


def _append(src: BinaryIO, out: BinaryIO) -> None:
    """Append ``src`` to ``out`` in the kernel where possible (no copy through Python)."""
    out.flush()
    size = os.fstat(src.fileno()).st_size
    done = 0
    if hasattr(os, "copy_file_range"):
        try:
            while done < size:
                n = os.copy_file_range(src.fileno(), out.fileno(), size - done, done, out.tell() + done)
                if n == 0:
                    break
                done += n
        except OSError:
            done = 0
        if done == size:
            out.seek(0, os.SEEK_END)
            return
        out.truncate(out.tell())
    src.seek(0)
    shutil.copyfileobj(src, out, 16 << 20)


def _append_parts(path: Path, split: str, records: list[dict[str, Any]]) -> None:
    """Append the parts not yet merged to ``<split>.bin.partial``, then rename it to
    ``<split>.bin``."""
    parts = path / "parts"
    partial = path / f"{split}.bin.partial"
    prog_path = path / f"{split}.merge.json"
    merged, size = 0, 0
    if prog_path.is_file():
        prog = read_json(prog_path)
        merged, size = int(prog["merged"]), int(prog["bytes"])
    mode = "r+b" if partial.is_file() else "wb"
    with open(partial, mode) as out:
        out.truncate(size)
        out.seek(size)
        appended: list[Path] = []
        for k in range(merged, len(records)):
            part = parts / f"{split}-{records[k]['chunk']:06d}.bin"
            with open(part, "rb") as src:
                _append(src, out)
            appended.append(part)
            if out.tell() - size >= _MERGE_STEP_BYTES or k == len(records) - 1:
                # durable data, then the record saying so, then the parts may go
                out.flush()
                os.fsync(out.fileno())
                size = out.tell()
                write_json(prog_path, {"merged": k + 1, "bytes": size})
                for done in appended:
                    done.unlink()
                appended = []
    os.replace(partial, path / f"{split}.bin")


def merge_split(path: Path, split: str, records: list[dict[str, Any]], row_bytes: int) -> None:
    """Merge the split's chunk ``records`` (with their ``labels`` by clip id) into
    ``<split>.bin`` and write ``<split>.index.json``; a no-op once the index exists."""
    final = path / f"{split}.bin"
    index_path = path / f"{split}.index.json"
    if index_path.is_file() and final.is_file():
        return
    records = sorted(records, key=lambda r: r["chunk"])
    if not final.is_file():
        _append_parts(path, split, records)
    ids: list[str] = []
    lengths: list[int] = []
    labels: list[list[int]] = []
    for rec in records:
        for c in rec["clips"]:
            ids.append(c["id"])
            lengths.append(int(c["length"]))
            labels.append(rec["labels"][c["id"]])
    offsets = np.concatenate([[0], np.cumsum(lengths[:-1])]).astype(np.int64) if lengths else np.zeros(0, np.int64)
    if final.stat().st_size != sum(lengths) * row_bytes:
        raise FeatureError(f"{final}: merged size does not match the chunk records; delete {path} and re-run")
    write_json(index_path, {"ids": ids, "offsets": offsets.tolist(), "lengths": lengths, "labels": labels})
    with contextlib.suppress(FileNotFoundError):
        (path / f"{split}.merge.json").unlink()
