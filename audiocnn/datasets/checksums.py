"""Checksums of dataset files: the digest a publisher states (md5, sha1, sha256, or git's
blob id), verified after a download and before anything is extracted from it."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from audiocnn.errors import ChecksumError
from audiocnn.progress import progress_bar

log = logging.getLogger("audiocnn.datasets")

#: Bytes per read of every dataset file read, fetched or copied (checksums, downloads,
#: multi-part streams, extraction).
CHUNK = 1 << 20
#: ``git-blob-sha1`` is the id git gives a file (sha1 of ``blob <size>\0`` + content): the exact
#: checksum a repository publishes for every file at a commit, pinned where no sha256 is known.
ALGORITHMS = ("md5", "sha1", "sha256", "git-blob-sha1")


def file_digest(path: str | os.PathLike, algorithm: str = "md5", *, progress: bool = False) -> str:
    """Hex digest of a file, read in 1 MiB blocks."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown checksum algorithm {algorithm!r}; valid: {', '.join(ALGORITHMS)}")
    p = Path(path)
    if algorithm == "git-blob-sha1":
        h = hashlib.sha1()  # noqa: S324 (git's object id, not a security choice of ours)
        h.update(b"blob %d\0" % p.stat().st_size)
    else:
        h = hashlib.new(algorithm)
    bar = progress_bar(f"checking {p.name}", p.stat().st_size, enabled=progress, unit="bytes")
    with open(p, "rb") as fh, bar as advance:
        while True:
            block = fh.read(CHUNK)
            if not block:
                break
            h.update(block)
            advance(len(block))
    return h.hexdigest()


def verify_file(
    path: str | os.PathLike,
    checksum: str | None,
    algorithm: str = "md5",
    *,
    skip_checksum: bool = False,
    progress: bool = False,
) -> None:
    """Raise :class:`ChecksumError` naming the file and both digests when they differ."""
    p = Path(path)
    if checksum is None:
        return
    if skip_checksum:
        log.warning(
            "WARNING: skip_checksum=True: %s is NOT verified against its published %s %s; "
            "a corrupt or tampered file will go unnoticed",
            p.name,
            algorithm,
            checksum,
            extra={"arguments": ("skip_checksum",)},
        )
        return
    actual = file_digest(p, algorithm, progress=progress)
    if actual.lower() != checksum.lower():
        raise ChecksumError(
            f"{p}: {algorithm} mismatch: expected {checksum.lower()}, got {actual}",
            hint="the file is corrupt or not the published one; delete it and run again, "
            "or pass skip_checksum=True to use it anyway",
            arguments=("skip_checksum",),
        )
