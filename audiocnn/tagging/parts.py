"""A library tagged by N processes (``--shard K/N``, or torchrun's ranks), merged into one results file.

Each process tags its share of the files (:func:`audiocnn.shards.assign`: the same share
whatever the order of the file list, balanced by file size) into its own part file next to
the output, ``tags.part-K-of-N.jsonl``: a results file like any other, so a killed process
re-run alone resumes its share exactly as a single-process run would. Files the merged output
already holds (same size, modification time, model and options) are skipped too, so a grown
library only tags what is new.

The process that finishes last, finding every part complete (each file of each share has a
record), merges the parts into the output: its records, then those of the parts, one per
file (a part's record replaces the output's), written atomically; then the parts are removed.
``audiocnn tag --merge tags.jsonl`` merges whatever parts there are by hand.
"""

from __future__ import annotations

import contextlib
import csv
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from audiocnn.accelerators import visible_accelerator
from audiocnn.errors import UsageError
from audiocnn.fileio import fsync_dir
from audiocnn.shards import Shard, assign, file_weight, local_rank
from audiocnn.tagging.results import (
    CSV_BASE_COLUMNS,
    FileIdentity,
    ResultsFile,
    _options_json,
    check_results_file,
    results_lock,
)

_MERGE_WAIT_S = 60.0  # how long a finished process waits for another one's merge to end


def share_of(files: Sequence[Path], shard: Shard) -> list[Path]:
    """The files of ``shard``, in the order given."""
    shares = assign(files, shard.count, lambda p: os.path.abspath(p), file_weight)
    return [f for f, k in zip(files, shares) if k == shard.index]


def shard_device(device: str) -> str:
    """``auto`` / ``cuda`` -> this process's GPU (``LOCAL_RANK``) when CUDA is there."""
    rank = local_rank()
    if device not in ("auto", "cuda") or rank is None or (device == "auto" and visible_accelerator() is None):
        return device
    import torch  # deferred: only a torchrun process on a machine that may have a GPU asks torch for it

    if torch.cuda.is_available():
        return f"cuda:{rank % torch.cuda.device_count()}"
    return device


def _labels(path: Path) -> list[str] | None:
    """A CSV results file's label columns (None for ``.jsonl`` or a missing file)."""
    if path.suffix.lower() != ".csv" or not path.exists():
        return None
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as fh:
        row = next(csv.reader(fh), [])
    return row[len(CSV_BASE_COLUMNS) + 1 :]


def _scan(path: Path, labels: Sequence[str]) -> dict[str, Any]:
    """The last record of each path ``path`` holds (nothing when it does not exist)."""
    if not path.exists():
        return {}
    return ResultsFile(path, labels).scan()[0]


def merged_done(
    files: Sequence[Path], output: Path, labels: Sequence[str], model_sha256: str, options: dict[str, Any]
) -> tuple[list[Path], int]:
    """``files`` less those the merged ``output`` already holds, tagged without error with
    the same file, model and options; and how many those are. Only reads ``output``."""
    stored = _scan(output, labels)
    if not stored:
        return list(files), 0
    opts = _options_json(options)
    todo = []
    for f in files:
        ident = FileIdentity.of(f)
        old = stored.get(ident.path)
        if old is None or not old.ok or old.key != (ident.size, ident.mtime, model_sha256, opts):
            todo.append(f)
    return todo, len(files) - len(todo)


def merge_when_complete(
    output: Path,
    shard: Shard,
    files: Sequence[Path],
    labels: Sequence[str],
    key: tuple[str, dict[str, Any]],
    report: Callable[[str], None],
) -> bool:
    """After this process's share: merge the parts into ``output`` if every share is done
    (``files``: the whole library; ``key``: the model's sha256 and the options). Another
    process still tagging, or a share with files left, leaves the merge to whoever ends last."""
    deadline = time.monotonic() + _MERGE_WAIT_S
    while True:
        try:
            with results_lock(output), contextlib.ExitStack() as parts:
                for other in shard.all():
                    try:
                        parts.enter_context(results_lock(other.part_path(output)))
                    except UsageError:
                        report(f"share {other} is still being tagged: the last process to finish merges")
                        return False
                left = _left(output, shard, files, labels, key)
                if left:
                    report(f"not merging yet: {left}")
                    return False
                merge_parts(output, [s.part_path(output) for s in shard.all()], report, locked=True)
                return True
        except UsageError:  # another process merges right now
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _left(
    output: Path, shard: Shard, files: Sequence[Path], labels: Sequence[str], key: tuple[str, dict[str, Any]]
) -> str:
    """What keeps the parts from being merged: a share with files without a record ('' if none)."""
    sha, opts = key[0], _options_json(key[1])
    merged = _scan(output, labels)
    shares = assign(files, shard.count, lambda p: os.path.abspath(p), file_weight)
    for other in shard.all():
        held = _scan(other.part_path(output), labels)
        mine = [f for f, k in zip(files, shares) if k == other.index]
        missing = 0
        for f in mine:
            ident = FileIdentity.of(f)
            rec = held.get(ident.path) or merged.get(ident.path)
            missing += rec is None or rec.key != (ident.size, ident.mtime, sha, opts)
        if missing:
            return f"share {other} has {missing} file{'s' if missing != 1 else ''} to tag (run that share again)"
    return ""


def find_parts(output: str | os.PathLike) -> list[Path]:
    """The part files next to ``output`` (``tags.part-K-of-N.jsonl``), by name."""
    out = Path(output)
    return sorted(out.parent.glob(f"{out.stem}.part-*-of-*{out.suffix}"))


def merge_parts(
    output: str | os.PathLike, parts: Sequence[Path], report: Callable[[str], None], *, locked: bool = False
) -> int:
    """Merge the records of ``parts`` into ``output`` (a part's record of a file replaces
    the output's; of two parts, the later one's), atomically, then remove the parts.
    ``locked``: the caller holds the locks of ``output`` and of every part. Returns the
    number of records merged."""
    output = Path(output)
    parts = [p for p in parts if p.exists()]
    with contextlib.ExitStack() as held:
        if not locked:
            held.enter_context(results_lock(output))
            for p in parts:
                held.enter_context(results_lock(p))
        labels = next((lab for lab in map(_labels, [output, *parts]) if lab is not None), [])
        for p in [output, *parts]:
            check_results_file(p, labels)
        if not parts:
            return 0
        files = [ResultsFile(p, labels) for p in parts]
        scans = [f.scan()[0] for f in files]
        winner = {path: i for i, stored in enumerate(scans) for path in stored}
        out = ResultsFile(output, labels)
        stored = out.scan()[0]
        keep = {s.line for path, s in stored.items() if path not in winner}

        def lines() -> Iterator[bytes]:
            for i, (f, scan) in enumerate(zip(files, scans)):
                mine = {s.line for path, s in scan.items() if winner[path] == i}
                yield from (line for n, line in enumerate(f.record_lines(), 1) if n in mine)

        out.rewrite(lambda n, _line: n in keep, lines())
        for p in parts:
            p.unlink()
        fsync_dir(output.parent)
    report(f"merged {len(winner)} record{'s' if len(winner) != 1 else ''} of {len(parts)} part files into {output}")
    return len(winner)
