"""The checks an archive passes before anything of it is written: refused are absolute
paths, ``..``, links of any kind (no dataset ships one) and writing through a symlink
already on disk; so are a member larger than any file of the dataset, content far more
compressible than audio (an archive bomb), two members of one name, a file where a
folder must go, and a disk without room for what the members declare. A cut-off archive
is one :class:`CorruptArchiveError` naming it. Used by :mod:`.archives` (local files) and
:mod:`.remotezip` (members fetched with HTTP Range).
"""

from __future__ import annotations

import shutil
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from audiocnn.datasets.checksums import CHUNK
from audiocnn.errors import DatasetError, UnsafeArchiveError
from audiocnn.progress import human_size

try:
    import lzma

    _LZMA_ERRORS: tuple[type[BaseException], ...] = (lzma.LZMAError,)
except ImportError:  # a Python built without lzma reads no .tar.xz at all
    _LZMA_ERRORS = ()

# None of the datasets audiocnn knows (GTZAN, MTAT, FMA) ships a link, and a link is the
# one member kind whose safety depends on what is already on disk (a symlink made by an
# earlier member is followed by a later one), so links are refused outright rather than
# resolved; every other member must name a plain path below the extraction folder.

#: What reading a cut-off or damaged archive raises (gzip's BadGzipFile is an OSError).
READ_ERRORS: tuple[type[BaseException], ...] = (
    tarfile.TarError,
    zipfile.BadZipFile,
    EOFError,
    zlib.error,
    OSError,
    *_LZMA_ERRORS,
)


class CorruptArchiveError(DatasetError):
    """An archive ends early or its data does not decompress: re-fetch it.

    ``archive`` is the name used in the message (the file, or the first part..last).
    """

    def __init__(
        self, message: str, *, hint: str | None = None, archive: str = "", arguments: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message, hint=hint, arguments=arguments)
        self.archive = archive


def corrupt_error(archive: str, exc: BaseException | str, member: str | None = None) -> CorruptArchiveError:
    where = f" at member {member!r}" if member else ""
    detail = str(exc) or type(exc).__name__
    return CorruptArchiveError(
        f"{archive}: archive is truncated or corrupt{where} ({detail})",
        hint="delete it and fetch a fresh copy; files already extracted are kept",
        archive=archive,
    )


#: The largest file a dataset that declares none may hold (``DatasetSpec.max_member_size``).
DEFAULT_MAX_MEMBER = 4 << 30
#: Decompressed bytes per archive byte beyond which content is taken for an archive bomb:
#: audio barely compresses (PCM in gzip ~1.1:1, MP3 ~1:1), CSV and text ~5-15:1.
MAX_RATIO = 50
#: Sizes up to this are never refused for their ratio (a small text file may compress well).
RATIO_FLOOR = 32 << 20


def member_parts(name: str, archive: str) -> list[str]:
    """Path components of a member; an absolute name or a '..' is refused."""
    clean = name.replace("\\", "/")
    if clean.startswith("/") or (len(clean) > 1 and clean[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; refusing to extract")
    parts = clean_parts(clean)
    if ".." in parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} contains '..'; refusing to extract")
    return parts


def _refuse_link(archive: str, name: str, kind: str, target: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(
        f"{archive}: member {name!r} is a {kind} (to {target!r}); dataset archives hold no links, refusing to extract"
    )


def _check_on_disk(dest: Path, parts: list[str], archive: str, name: str, *, is_dir: bool = False) -> None:
    """Refuse a member whose path below ``dest`` runs through a symbolic link already on disk
    (left by an older extraction or put there by hand): writing would follow it out; and
    one that needs a folder where a file is, or a file where a folder is."""
    path = dest
    for i, part in enumerate(parts):
        path = path / part
        if path.is_symlink():
            raise UnsafeArchiveError(
                f"{archive}: member {name!r} would be written through the symbolic link {path}; refusing to extract",
                hint=f"delete {path} and run the command again",
            )
        if not path.exists():
            return
        folder = is_dir or i < len(parts) - 1
        if folder != path.is_dir():
            there, needed = ("a file", "a folder") if folder else ("a folder", "a file")
            raise DatasetError(
                f"{archive}: member {name!r} needs {needed} at {path}, but {there} is there",
                hint=f"move or delete {path} and run the command again",
            )


class MemberCheck:
    """The check pass over an archive's members, before anything is written: two members
    of one name, a file where another member needs a folder, a member larger than any
    file of the dataset (``max_member``) and content far more compressible than audio
    (:data:`MAX_RATIO`, of each zip member and of the whole archive, ``archive_bytes``)."""

    def __init__(self, archive: str, dest: Path, archive_bytes: int, max_member: int | None) -> None:
        self.archive, self.dest = archive, dest
        self.archive_bytes = max(1, archive_bytes)
        self.max_member = DEFAULT_MAX_MEMBER if max_member is None else max_member
        self.total = 0
        self._files: dict[tuple[str, ...], str] = {}
        self._dirs: dict[tuple[str, ...], str] = {}

    def add(self, name: str, is_dir: bool, size: int, compressed: int | None = None, *, wanted: bool = True) -> None:
        parts = member_parts(name, self.archive)
        self._place(name, tuple(parts), is_dir)
        if wanted and size > self.max_member:
            raise UnsafeArchiveError(
                f"{self.archive}: member {name!r} is {human_size(size)}, more than the {human_size(self.max_member)} "
                "of the largest file this dataset has; refusing to extract"
            )
        if compressed is not None and size > RATIO_FLOOR and size > MAX_RATIO * max(1, compressed):
            raise self._bomb(f"member {name!r} expands {human_size(compressed)} to {human_size(size)}")
        self.total += size
        if self.total > RATIO_FLOOR and self.total > MAX_RATIO * self.archive_bytes:
            raise self._bomb(
                f"its members up to {name!r} expand {human_size(self.archive_bytes)} to {human_size(self.total)}"
            )
        _check_on_disk(self.dest, parts, self.archive, name, is_dir=is_dir)

    def _bomb(self, what: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(
            f"{self.archive}: {what}, more than {MAX_RATIO}:1, which no audio compresses to; "
            "refusing to extract (an archive bomb?)"
        )

    def _place(self, name: str, key: tuple[str, ...], is_dir: bool) -> None:
        if not key and not is_dir:
            raise UnsafeArchiveError(f"{self.archive}: member {name!r} is a file without a name; refusing to extract")
        if not is_dir and key in self._files:
            raise UnsafeArchiveError(
                f"{self.archive}: member {name!r} is in the archive twice (which copy is meant is ambiguous); "
                "refusing to extract"
            )
        clash = self._dirs.get(key) if not is_dir else self._files.get(key)
        for i in range(1, len(key)):
            clash = clash or self._files.get(key[:i])
        if clash is not None:
            raise UnsafeArchiveError(
                f"{self.archive}: members {clash!r} and {name!r} need a file and a folder at one path; "
                "refusing to extract"
            )
        (self._dirs if is_dir else self._files).setdefault(key, name)
        for i in range(1, len(key)):
            self._dirs.setdefault(key[:i], name)


def iter_tar(tf: tarfile.TarFile, archive: str) -> Iterator[tarfile.TarInfo]:
    """The members of ``tf``; reading past a cut-off end is a :class:`CorruptArchiveError`."""
    it = iter(tf)
    while True:
        try:
            member = next(it)
        except StopIteration:
            return
        except READ_ERRORS as exc:
            raise corrupt_error(archive, exc) from None
        yield member


def _everything(name: str) -> bool:
    return True


def check_tar_members(
    tf: tarfile.TarFile, check: MemberCheck, keep: Callable[[str], bool] = _everything
) -> list[tarfile.TarInfo]:
    """Every member, checked before anything is written: links, devices, absolute names,
    '..', paths through an on-disk symlink and what :class:`MemberCheck` refuses refuse
    the whole archive. ``keep``: the members to be written (their sizes are bounded)."""
    members = []
    archive = check.archive
    for m in iter_tar(tf, archive):
        member_parts(m.name, archive)
        if m.issym() or m.islnk():
            raise _refuse_link(archive, m.name, "symbolic link" if m.issym() else "hard link", m.linkname)
        if not (m.isfile() or m.isdir()):
            raise UnsafeArchiveError(f"{archive}: member {m.name!r} is a device or fifo; refusing to extract")
        check.add(m.name, m.isdir(), m.size, wanted=keep(m.name))
        members.append(m)
    return members


def _zip_is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _zip_link_target(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> str:
    try:
        with zf.open(info) as fh:  # the first bytes only, whatever size the member claims
            return fh.read(256).decode("utf-8", "replace")
    except READ_ERRORS:
        return "?"


def check_zip_members(
    zf: zipfile.ZipFile, check: MemberCheck, keep: Callable[[str], bool] = _everything
) -> list[zipfile.ZipInfo]:
    """Like :func:`check_tar_members`; a zip carries a symlink as unix mode S_IFLNK."""
    members = zf.infolist()
    for info in members:
        member_parts(info.filename, check.archive)
        if _zip_is_symlink(info):
            raise _refuse_link(check.archive, info.filename, "symbolic link", _zip_link_target(zf, info))
        check.add(info.filename, info.is_dir(), info.file_size, info.compress_size, wanted=keep(info.filename))
    return members


def ensure_space(dest: Path, sizes: Iterable[tuple[Path, int]], archive: str) -> None:
    """Refuse before writing when the disk under ``dest`` lacks room for the files of
    ``sizes`` (target, declared size; a file already there is replaced, so it counts less)."""
    need = 0
    for target, size in sizes:
        try:
            have = target.stat().st_size if target.is_file() else 0
        except OSError:
            have = 0
        need += max(0, size - have)
    try:
        free = shutil.disk_usage(dest).free
    except OSError:
        return  # no answer: the writes themselves will say
    if need > free:
        raise DatasetError(
            f"{dest}: extracting {archive} needs {human_size(need)}, only {human_size(free)} is free there",
            hint="free some space, or pass `data_dir` on a disk with more room",
            arguments=("data_dir",),
        )


def member_filter(members: Iterable[str] | None) -> Callable[[str], bool]:
    """Member name -> wanted? ``members`` are names or folders (a folder takes everything
    below it); None wants every member. A set look-up per folder level, so choosing a
    thousand clips of a 100,000-member zip stays fast."""
    if members is None:
        return _everything
    names = {"/".join(clean_parts(m)) for m in members}

    def keep(name: str) -> bool:
        parts = clean_parts(name)
        return any("/".join(parts[: i + 1]) in names for i in range(len(parts)))

    return keep


def clean_parts(name: str) -> list[str]:
    return [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]


def copy_member(read: Callable[[int], bytes], out: Any, size: int, archive: str, name: str) -> int:
    """Copy a member's bytes from ``read`` to ``out``, refusing any beyond the ``size`` it
    declares (the size checked before extraction); returns their CRC-32."""
    crc = written = 0
    while block := read(CHUNK):
        written += len(block)
        if written > size:
            raise UnsafeArchiveError(
                f"{archive}: member {name!r} holds more than the {size} bytes it declares; refusing to extract"
            )
        crc = zlib.crc32(block, crc)
        out.write(block)
    return crc
