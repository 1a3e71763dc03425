"""Safe extraction of a tar(.gz/.bz2/.xz) or zip, possibly split in parts, once.

Every member passes :mod:`.archive_checks` before anything is written. Each file is
written to a temp name and renamed when whole, so a failure leaves no partial file;
bytes beyond what a member declares are refused as they come. A completion marker
(:mod:`.markers`) means only an unfinished extraction is redone.
"""

from __future__ import annotations

import logging
import os
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from audiocnn.datasets.archive_checks import (
    READ_ERRORS,
    CorruptArchiveError,
    MemberCheck,
    check_tar_members,
    check_zip_members,
    copy_member,
    corrupt_error,
    ensure_space,
    iter_tar,
    member_filter,
    member_parts,
)
from audiocnn.datasets.markers import clear_marker, read_marker, write_marker
from audiocnn.datasets.parts import open_archive_stream
from audiocnn.errors import DatasetError
from audiocnn.fileio import temp_path
from audiocnn.progress import progress_bar

log = logging.getLogger("audiocnn.datasets")

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")


def _unwritable(path: Path, exc: OSError) -> DatasetError:
    return DatasetError(
        f"{path}: cannot write ({exc.strerror or exc})", hint="check the free space and permissions of the data dir"
    )


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(path, exc) from None


def _write_member(opener: Callable[[], Any], target: Path, size: int, archive: str, name: str) -> None:
    """Copy one member to a temp file beside ``target`` and rename it when whole (a failure
    leaves no partial file); a read error is the archive's fault (corrupt), a write error
    the disk's (one line either way)."""
    try:
        src = opener()
    except READ_ERRORS as exc:
        raise corrupt_error(archive, exc, name) from None

    def read(n: int) -> bytes:
        try:
            return src.read(n)
        except READ_ERRORS as exc:
            raise corrupt_error(archive, exc, name) from None

    _make_dir(target.parent)
    tmp = temp_path(target)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with src, os.fdopen(fd, "wb") as out:
            copy_member(read, out, size, archive, name)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _unwritable(target, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def extract_archive(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    dest: str | os.PathLike,
    *,
    members: Iterable[str] | None = None,
    progress: bool = False,
    max_member: int | None = None,
) -> int:
    """Safely extract a tar(.gz/.bz2/.xz) or zip (possibly split in parts) into ``dest``.

    Every member is checked before anything is written (see :class:`MemberCheck`;
    ``max_member`` is the dataset's largest file), and so is the free space, so an unsafe,
    cut-off or oversized archive leaves ``dest`` as it was. ``members`` restricts
    extraction to these names or folders. Returns the number of files written.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    dest = Path(dest)
    _make_dir(dest)
    label = str(paths[0]) if len(paths) == 1 else f"{paths[0]}..{paths[-1].suffix.lstrip('.')}"
    keep = member_filter(members)
    stream = open_archive_stream(paths)
    check = MemberCheck(label, dest, sum(p.stat().st_size for p in paths), max_member)
    try:
        if _is_zip(stream, label):
            return _extract_zip(stream, check, keep, progress)
        return _extract_tar(stream, check, keep, progress)
    finally:
        stream.close()


def _is_zip(stream, label: str) -> bool:
    """True for a zip; a file that starts like a zip but has no central directory was cut off."""
    is_zip = zipfile.is_zipfile(stream)
    stream.seek(0)
    head = stream.read(4)
    stream.seek(0)
    if not is_zip and head == b"PK\x03\x04":
        raise corrupt_error(label, "a zip without its central directory: the file ends early")
    return is_zip


def _extract_zip(stream, check: MemberCheck, keep: Callable[[str], bool], progress: bool) -> int:
    label, dest = check.archive, check.dest
    try:
        zf = zipfile.ZipFile(stream)
    except READ_ERRORS as exc:
        raise corrupt_error(label, exc) from None
    with zf:
        infos = [i for i in check_zip_members(zf, check, keep) if keep(i.filename)]
        targets = [(dest.joinpath(*member_parts(i.filename, label)), i) for i in infos]
        ensure_space(dest, [(t, i.file_size) for t, i in targets if not i.is_dir()], label)
        total = sum(i.file_size for i in infos)
        n = 0
        with progress_bar(f"extracting {Path(label).name}", total, enabled=progress, unit="bytes") as advance:
            for target, info in targets:
                if info.is_dir():
                    _make_dir(target)
                    continue
                _write_member(lambda info=info: zf.open(info), target, info.file_size, label, info.filename)
                advance(info.file_size)
                n += 1
    return n


def _open_tar(stream, label: str) -> tarfile.TarFile:
    stream.seek(0)
    try:
        return tarfile.open(fileobj=stream, mode="r:*")
    except READ_ERRORS as exc:
        stream.seek(0)
        head = stream.read(512)
        if head.startswith(_COMPRESSED_MAGIC) or head[257:262] == b"ustar":
            raise corrupt_error(label, exc) from None
        raise CorruptArchiveError(f"{label}: not a zip or tar archive ({exc})", archive=label) from None


class _LastRead:
    """A tar's file object that keeps what its last read returned. tarfile takes the end of
    the data for the end of the archive, so a tar cut at a 512-byte block boundary looks
    whole; only the end-of-archive marker (a zero block) tells the two apart."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self.last = b""

    def read(self, n: int = -1) -> bytes:
        self.last = self._raw.read(n)
        return self.last

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


def _extract_tar(stream, check: MemberCheck, keep: Callable[[str], bool], progress: bool) -> int:
    """Two passes: check every member (nothing written), then write the files and folders."""
    label, dest = check.archive, check.dest
    with _open_tar(stream, label) as tf:
        tf.fileobj = tail = _LastRead(tf.fileobj)
        checked = check_tar_members(tf, check, keep)
        if tail.last != bytes(tarfile.BLOCKSIZE):
            raise corrupt_error(label, "it ends without the end-of-archive marker")
    files = [m for m in checked if m.isfile() and keep(m.name)]
    ensure_space(dest, [(dest.joinpath(*member_parts(m.name, label)), m.size) for m in files], label)
    n = 0
    bar = progress_bar(f"extracting {Path(label).name}", sum(m.size for m in files), enabled=progress, unit="bytes")
    with _open_tar(stream, label) as tf, bar as advance:
        for m in iter_tar(tf, label):
            if not keep(m.name) or not (m.isfile() or m.isdir()):
                continue  # links were refused by the check; nothing but files and folders is made
            target = dest.joinpath(*member_parts(m.name, label))
            if m.isdir():
                _make_dir(target)
                continue
            _write_member(lambda m=m: tf.extractfile(m), target, m.size, label, m.name)
            advance(m.size)
            n += 1
    return n


def extract_once(
    paths: Sequence[Path],
    dest: Path,
    state_dir: Path,
    *,
    key: str,
    members: Iterable[str] | None = None,
    force: bool = False,
    progress: bool = False,
    max_member: int | None = None,
) -> bool:
    """Extract unless a completion marker says it was finished; True if it extracted.

    The marker is removed first and written last, so an interrupted extraction is
    redone from scratch on the next run.
    """
    signature = {
        "archives": [p.name for p in paths],
        "sizes": [p.stat().st_size for p in paths],
        "members": sorted(members) if members is not None else None,
    }
    done = read_marker(state_dir, key)
    if done is not None and not force and done.get("signature") == signature:
        log.info("%s: already extracted", key)
        return False
    clear_marker(state_dir, key)
    log.info("extracting %s", ", ".join(p.name for p in paths))
    n = extract_archive(paths, dest, members=members, progress=progress, max_member=max_member)
    write_marker(state_dir, key, {"signature": signature, "files": n, "finished": time.time()})
    return True
