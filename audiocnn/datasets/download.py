"""Fetching, checking and unpacking dataset archives: one implementation for every dataset.

- HTTP(S) with the standard library (``urllib``): no extra dependency, never wget/curl.
- Resumable: bytes land in ``<file>.part``; a re-run asks for ``Range: bytes=<done>-``.
  A server that ignores Range (200 instead of 206) restarts the file cleanly; 416 means
  the part is already whole (or stale, then it restarts).
- Retries with exponential backoff on dropped connections, timeouts and 5xx/429; a host
  name that does not resolve, a redirect loop and other 4xx answers fail at once. The
  number of retries, the first back-off and the seconds without a byte before a transfer
  counts as stalled come from ``AUDIOCNN_DOWNLOAD_RETRIES`` (5), ``AUDIOCNN_DOWNLOAD_BACKOFF``
  (1.0) and ``AUDIOCNN_DOWNLOAD_TIMEOUT`` (60); a stall is logged every
  :data:`STALL_REPORT` seconds while it lasts.
- Atomic: the final name appears only once every byte is there and the digest matches.
- Checksums (md5/sha1/sha256) are verified after download and before extraction.
- Extraction refuses absolute paths, ``..``, links of any kind (no dataset ships one) and
  writing through a symlink already on disk; a cut-off archive is one error naming it,
  raised before anything is written. So are a member larger than any file of the dataset,
  content far more compressible than audio (an archive bomb), two members of one name, a
  file where a folder must go, and a disk without room for what the members declare. Each
  file is written to a temp name and renamed when whole, so a failure leaves no partial
  file; bytes beyond what a member declares are refused as they come. Split archives (``mp3.zip.001..003``) are read as
  one stream without concatenating them on disk, and a completion marker means only an
  unfinished extraction is redone.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import itertools
import json
import logging
import os
import shutil
import socket
import stat
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from audiocnn.errors import ChecksumError, DatasetError, DownloadError, UnsafeArchiveError, UsageError
from audiocnn.fileio import atomic_write_bytes, temp_path
from audiocnn.progress import progress_bar

log = logging.getLogger("audiocnn.datasets")

try:
    import lzma

    _LZMA_ERRORS: tuple[type[BaseException], ...] = (lzma.LZMAError,)
except ImportError:  # a Python built without lzma reads no .tar.xz at all
    _LZMA_ERRORS = ()

#: Environment variable holding a mirror base URL used for every remote.
MIRROR_ENV = "AUDIOCNN_MIRROR"
CHUNK = 1 << 20
#: ``git-blob-sha1`` is the id git gives a file (sha1 of ``blob <size>\0`` + content): the exact
#: checksum a repository publishes for every file at a commit, pinned where no sha256 is known.
ALGORITHMS = ("md5", "sha1", "sha256", "git-blob-sha1")
USER_AGENT = "audiocnn-downloader (+https://pypi.org/project/audiocnn)"


@dataclass(frozen=True)
class Remote:
    """One published file of a dataset.

    ``size`` is the exact byte count when the publisher states it (checked after
    download); ``approx_size`` is what people read in listings. ``group`` names a
    multi-part archive: remotes sharing a group are concatenated in filename order.
    ``extract`` is False for files used as they are (CSV annotations).
    """

    url: str
    filename: str
    checksum: str | None
    algorithm: str = "md5"
    size: int | None = None
    approx_size: str = ""
    extract: bool = True
    group: str | None = None

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"{self.filename}: unknown checksum algorithm {self.algorithm!r}")


# ---------------------------------------------------------------------------- checksums
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
            "WARNING: --skip-checksum: %s is NOT verified against its published %s %s; "
            "a corrupt or tampered file will go unnoticed",
            p.name,
            algorithm,
            checksum,
        )
        return
    actual = file_digest(p, algorithm, progress=progress)
    if actual.lower() != checksum.lower():
        raise ChecksumError(
            f"{p}: {algorithm} mismatch: expected {checksum.lower()}, got {actual}",
            hint="the file is corrupt or not the published one; delete it and run again, "
            "or pass --skip-checksum to use it anyway",
        )


# ---------------------------------------------------------------------------- HTTP
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
RETRIES_ENV = "AUDIOCNN_DOWNLOAD_RETRIES"
BACKOFF_ENV = "AUDIOCNN_DOWNLOAD_BACKOFF"
TIMEOUT_ENV = "AUDIOCNN_DOWNLOAD_TIMEOUT"
#: While a transfer waits for bytes, a line says so every this many seconds.
STALL_REPORT = 10.0


@dataclass(frozen=True)
class NetSettings:
    """How hard a download tries: retries after the first attempt, the first back-off
    (doubled each retry) and the seconds without a byte before an attempt is given up."""

    retries: int = 5
    backoff: float = 1.0
    timeout: float = 60.0


def net_settings() -> NetSettings:
    """:class:`NetSettings` from the environment; a value that is not a number is one line."""
    default = NetSettings()
    values = {}
    for env, field_name, kind, low, expected in (
        (RETRIES_ENV, "retries", int, 0, "a whole number, 0 or more"),
        (BACKOFF_ENV, "backoff", float, 0, "a number of seconds, 0 or more"),
        (TIMEOUT_ENV, "timeout", float, 1e-3, "a number of seconds above 0"),
    ):
        raw = os.environ.get(env, "").strip()
        if not raw:
            values[field_name] = getattr(default, field_name)
            continue
        try:
            value = kind(raw)
        except ValueError:
            value = None
        if value is None or not low <= value < float("inf"):
            raise UsageError(f"{env}={raw!r}: expected {expected}")
        values[field_name] = value
    return NetSettings(**values)


def one_line(text: object) -> str:
    """``text`` with its line breaks and runs of spaces made single spaces (urllib's
    redirect-loop reason holds newlines)."""
    return " ".join(str(text).split())


def transient_reason(url: str, exc: BaseException) -> str:
    """Why an attempt failed, when trying again may help; a :class:`DownloadError` when it
    cannot (a host name that does not resolve, a redirect loop, a 4xx answer)."""
    if isinstance(exc, urllib.error.HTTPError):
        if 300 <= exc.code < 400:
            raise DownloadError(
                f"{url}: the server redirects in a loop or too many times (HTTP {exc.code})",
                hint="check the URL; open it in a browser to see where it leads",
            ) from None
        if exc.code not in _RETRY_STATUS:
            raise DownloadError(f"{url}: HTTP {exc.code} {one_line(exc.reason)}") from None
        return f"HTTP {exc.code} {one_line(exc.reason)}"
    reason = getattr(exc, "reason", None) or exc
    if isinstance(reason, socket.gaierror):
        host = urllib.parse.urlsplit(url).hostname
        raise DownloadError(
            f"{url}: the host name {host} cannot be resolved ({one_line(reason.strerror or reason)})",
            hint="check the URL and that this machine is online",
        ) from None
    return f"{type(exc).__name__}: {one_line(reason)}"


class StallWatch:
    """Logs a line every :data:`STALL_REPORT` seconds while no byte arrives (a silent server
    would otherwise look like a hung command until the timeout ends the attempt)."""

    def __init__(self, what: str, timeout: float) -> None:
        self.what, self.timeout = what, timeout
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audiocnn-stall-watch", daemon=True)

    def tick(self) -> None:
        self._last = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(STALL_REPORT):
            idle = time.monotonic() - self._last
            if idle >= STALL_REPORT:
                log.warning(
                    "%s: no data for %.1f s (giving up on this attempt after %.1f s; %s sets it)",
                    self.what,
                    idle,
                    self.timeout,
                    TIMEOUT_ENV,
                )

    def __enter__(self) -> StallWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _open(url: str, offset: int, timeout: float):
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 (http/https only, checked)


def _content_range_start(value: str | None) -> int | None:
    # "bytes 100-199/200" -> 100
    if not value or not value.startswith("bytes "):
        return None
    spec = value[6:].split("/")[0]
    if "-" not in spec:
        return None
    try:
        return int(spec.split("-")[0])
    except ValueError:
        return None


def _content_range_total(value: str | None) -> int | None:
    if not value or "/" not in value:
        return None
    total = value.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    checksum: str | None = None,
    algorithm: str = "md5",
    size: int | None = None,
    skip_checksum: bool = False,
    retries: int | None = None,
    backoff: float | None = None,
    timeout: float | None = None,
    progress: bool = True,
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
    """Download ``url`` to ``dest`` resumably; return ``dest``.

    An existing ``dest`` is trusted only after its checksum matches. Bytes already in
    ``dest.part`` are kept and the rest asked for with Range. ``backoff`` is the first
    retry delay (doubled each time); ``retries``, ``backoff`` and ``timeout`` left None
    come from :func:`net_settings`.
    """
    if not url.startswith(("http://", "https://")):
        raise DownloadError(f"{url}: only http:// and https:// URLs can be downloaded")
    env = net_settings()
    retries = env.retries if retries is None else retries
    backoff = env.backoff if backoff is None else backoff
    timeout = env.timeout if timeout is None else timeout
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        verify_file(dest, checksum, algorithm, skip_checksum=skip_checksum, progress=progress)
        log.info("%s: already downloaded", dest.name)
        return dest
    part = dest.with_name(dest.name + ".part")
    attempt = 0
    last_error: str = ""
    total: int | None = size
    while True:
        offset = part.stat().st_size if part.exists() else 0
        try:
            total = _fetch_into(url, part, offset, total, timeout, progress)
            break
        except _Restart as exc:
            log.info("%s: %s; starting over", dest.name, exc)
            part.unlink(missing_ok=True)
            continue
        except (TimeoutError, urllib.error.URLError, HTTPException, ConnectionError, OSError) as exc:
            last_error = transient_reason(url, exc)
        attempt += 1
        if attempt > retries:
            raise DownloadError(
                f"{url}: download failed after {retries + 1} attempts ({last_error})",
                hint="run the same command again to resume from the "
                f"{_human(part.stat().st_size if part.exists() else 0)} "
                f"already fetched; {RETRIES_ENV} and {TIMEOUT_ENV} set how hard it tries",
            )
        delay = backoff * (2 ** (attempt - 1))
        log.warning("%s: %s; retry %d/%d in %.1fs", dest.name, last_error, attempt, retries, delay)
        sleep(delay)

    got = part.stat().st_size
    if total is not None and got != total:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{url}: got {got} bytes, expected {total}", hint="run the command again")
    if checksum is not None and not skip_checksum:
        actual = file_digest(part, algorithm)
        if actual.lower() != checksum.lower():
            # A bad part would only be "resumed" into the same bad file: drop it.
            part.unlink(missing_ok=True)
            raise ChecksumError(
                f"{dest}: {algorithm} mismatch after download from {url}: expected {checksum.lower()}, got {actual}",
                hint="the server sent a different file; try another mirror with --source, "
                "or pass --skip-checksum to accept it",
            )
    elif checksum is not None:
        verify_file(part, checksum, algorithm, skip_checksum=True)
    os.replace(part, dest)
    return dest


class _Restart(Exception):
    """The partial file cannot be continued; delete it and fetch from byte 0."""


def _fetch_into(url: str, part: Path, offset: int, total: int | None, timeout: float, progress: bool) -> int | None:
    """One HTTP exchange appending to ``part``; returns the total size when known."""
    try:
        with StallWatch(url, timeout):
            resp = _open(url, offset, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            whole = _content_range_total(exc.headers.get("Content-Range"))
            if whole is not None and whole == offset:
                return whole  # the part already holds every byte
            raise _Restart(f"server refused range {offset}- (HTTP 416)") from None
        raise
    with resp:
        status = resp.status
        length = resp.headers.get("Content-Length")
        mode = "ab"
        if offset and status == 206:
            start = _content_range_start(resp.headers.get("Content-Range"))
            if start != offset:
                raise _Restart(f"server answered range {start}- for a request of {offset}-")
            whole = _content_range_total(resp.headers.get("Content-Range"))
            if whole is not None:
                total = whole
        elif status == 200:
            if offset:
                log.info("%s: server ignores Range; fetching the whole file again", part.name[:-5])
            offset = 0
            mode = "wb"
            if length is not None and length.isdigit():
                total = int(length)
        else:
            raise DownloadError(f"{url}: unexpected HTTP status {status}")
        bar = progress_bar(part.name[:-5], total, enabled=progress, unit="bytes")
        with open(part, mode) as fh, bar as advance, StallWatch(url, timeout) as watch:
            advance(offset)
            while True:
                block = resp.read1(CHUNK)  # what has arrived: a slow server is not a stalled one
                if not block:
                    break
                watch.tick()
                fh.write(block)
                advance(len(block))
            fh.flush()
            os.fsync(fh.fileno())
    got = part.stat().st_size
    if total is not None and got < total:
        # The server closed early without an exception (IncompleteRead is not always raised).
        raise ConnectionError(f"connection closed at {got} of {total} bytes")
    return total


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


human_size = _human


# ---------------------------------------------------------------------------- multi-part
class PartsStream(io.RawIOBase):
    """Parts of known sizes read as one seekable stream: the position, seeking, and which
    part holds which bytes (:meth:`spans`). Subclasses read the bytes of one part: local
    files (:class:`MultiPartFile`) or HTTP ranges (``remotezip.RangeFile``)."""

    def __init__(self, sizes: Sequence[int]) -> None:
        super().__init__()
        self.sizes = [int(n) for n in sizes]
        self.starts = list(itertools.accumulate(self.sizes, initial=0))[:-1]
        self.size = sum(self.sizes)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        bases = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}
        if whence not in bases:
            raise ValueError(f"bad whence {whence}")
        if bases[whence] + offset < 0:
            raise OSError("negative seek position")
        self._pos = bases[whence] + offset
        return self._pos

    def spans(self, start: int, n: int) -> Iterator[tuple[int, int, int]]:
        """``(part, offset in it, bytes)`` covering ``[start, start + n)`` of the whole,
        clipped to its end; parts of size 0 are never named."""
        pos, end = start, min(start + n, self.size)
        while pos < end:
            i = bisect.bisect_right(self.starts, pos) - 1  # the last part starting at or before pos
            local = pos - self.starts[i]
            take = min(end - pos, self.sizes[i] - local)
            yield i, local, take
            pos += take


class MultiPartFile(PartsStream):
    """Several files read as one seekable stream (a zip split with ``split -b``).

    zipfile needs to seek to the central directory at the end, so this supports random
    access; nothing is concatenated on disk and nothing is held in memory.
    """

    def __init__(self, paths: Sequence[str | os.PathLike]) -> None:
        self._paths = [Path(p) for p in paths]
        super().__init__([p.stat().st_size for p in self._paths])
        self._handles: dict[int, io.BufferedReader] = {}

    def readinto(self, buffer) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        done = 0
        for i, local, take in self.spans(self._pos, len(view)):
            fh = self._handles.get(i)
            if fh is None:
                fh = open(self._paths[i], "rb")
                self._handles[i] = fh
            fh.seek(local)
            n = fh.readinto(view[done : done + take]) or 0
            self._pos += n
            done += n
            if n < take:  # a part shrank under us
                break
        return done

    def close(self) -> None:
        for fh in self._handles.values():
            fh.close()
        self._handles.clear()
        super().close()


def open_archive_stream(paths: Sequence[str | os.PathLike]) -> io.BufferedReader:
    return io.BufferedReader(MultiPartFile(paths), buffer_size=CHUNK)


# ---------------------------------------------------------------------------- extraction
# None of the datasets audiocnn knows (GTZAN, MTAT, FMA) ships a link, and a link is the
# one member kind whose safety depends on what is already on disk (a symlink made by an
# earlier member is followed by a later one), so links are refused outright rather than
# resolved; every other member must name a plain path below the extraction folder.

#: What reading a cut-off or damaged archive raises (gzip's BadGzipFile is an OSError).
_READ_ERRORS: tuple[type[BaseException], ...] = (
    tarfile.TarError,
    zipfile.BadZipFile,
    EOFError,
    zlib.error,
    OSError,
    *_LZMA_ERRORS,
)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")


class CorruptArchiveError(DatasetError):
    """An archive ends early or its data does not decompress: re-fetch it.

    ``archive`` is the name used in the message (the file, or the first part..last).
    """

    def __init__(self, message: str, *, hint: str | None = None, archive: str = "") -> None:
        super().__init__(message, hint=hint)
        self.archive = archive


def _corrupt(archive: str, exc: BaseException | str, member: str | None = None) -> CorruptArchiveError:
    where = f" at member {member!r}" if member else ""
    detail = str(exc) or type(exc).__name__
    return CorruptArchiveError(
        f"{archive}: archive is truncated or corrupt{where} ({detail})",
        hint="delete it and fetch a fresh copy; files already extracted are kept",
        archive=archive,
    )


def _unwritable(path: Path, exc: OSError) -> DatasetError:
    return DatasetError(
        f"{path}: cannot write ({exc.strerror or exc})", hint="check the free space and permissions of the data dir"
    )


#: The largest file a dataset that declares none may hold (``DatasetSpec.max_member_size``).
DEFAULT_MAX_MEMBER = 4 << 30
#: Decompressed bytes per archive byte beyond which content is taken for an archive bomb:
#: audio barely compresses (PCM in gzip ~1.1:1, MP3 ~1:1), CSV and text ~5-15:1.
MAX_RATIO = 50
#: Sizes up to this are never refused for their ratio (a small text file may compress well).
RATIO_FLOOR = 32 << 20


def _member_parts(name: str, archive: str) -> list[str]:
    """Path components of a member; an absolute name or a '..' is refused."""
    clean = name.replace("\\", "/")
    if clean.startswith("/") or (len(clean) > 1 and clean[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; refusing to extract")
    parts = _clean_parts(clean)
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
        parts = _member_parts(name, self.archive)
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


def _iter_tar(tf: tarfile.TarFile, archive: str) -> Iterator[tarfile.TarInfo]:
    """The members of ``tf``; reading past a cut-off end is a :class:`CorruptArchiveError`."""
    it = iter(tf)
    while True:
        try:
            member = next(it)
        except StopIteration:
            return
        except _READ_ERRORS as exc:
            raise _corrupt(archive, exc) from None
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
    for m in _iter_tar(tf, archive):
        _member_parts(m.name, archive)
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
    except _READ_ERRORS:
        return "?"


def check_zip_members(
    zf: zipfile.ZipFile, check: MemberCheck, keep: Callable[[str], bool] = _everything
) -> list[zipfile.ZipInfo]:
    """Like :func:`check_tar_members`; a zip carries a symlink as unix mode S_IFLNK."""
    members = zf.infolist()
    for info in members:
        _member_parts(info.filename, check.archive)
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
            hint="free some space, or pass --data-dir on a disk with more room",
        )


def member_filter(members: Iterable[str] | None) -> Callable[[str], bool]:
    """Member name -> wanted? ``members`` are names or folders (a folder takes everything
    below it); None wants every member. A set look-up per folder level, so choosing a
    thousand clips of a 100,000-member zip stays fast."""
    if members is None:
        return _everything
    names = {"/".join(_clean_parts(m)) for m in members}

    def keep(name: str) -> bool:
        parts = _clean_parts(name)
        return any("/".join(parts[: i + 1]) in names for i in range(len(parts)))

    return keep


def _clean_parts(name: str) -> list[str]:
    return [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(path, exc) from None


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


def _write_member(opener: Callable[[], Any], target: Path, size: int, archive: str, name: str) -> None:
    """Copy one member to a temp file beside ``target`` and rename it when whole (a failure
    leaves no partial file); a read error is the archive's fault (corrupt), a write error
    the disk's (one line either way)."""
    try:
        src = opener()
    except _READ_ERRORS as exc:
        raise _corrupt(archive, exc, name) from None

    def read(n: int) -> bytes:
        try:
            return src.read(n)
        except _READ_ERRORS as exc:
            raise _corrupt(archive, exc, name) from None

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
        raise _corrupt(label, "a zip without its central directory: the file ends early")
    return is_zip


def _extract_zip(stream, check: MemberCheck, keep: Callable[[str], bool], progress: bool) -> int:
    label, dest = check.archive, check.dest
    try:
        zf = zipfile.ZipFile(stream)
    except _READ_ERRORS as exc:
        raise _corrupt(label, exc) from None
    with zf:
        infos = [i for i in check_zip_members(zf, check, keep) if keep(i.filename)]
        targets = [(dest.joinpath(*_member_parts(i.filename, label)), i) for i in infos]
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
    except _READ_ERRORS as exc:
        stream.seek(0)
        head = stream.read(512)
        if head.startswith(_COMPRESSED_MAGIC) or head[257:262] == b"ustar":
            raise _corrupt(label, exc) from None
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
            raise _corrupt(label, "it ends without the end-of-archive marker")
    files = [m for m in checked if m.isfile() and keep(m.name)]
    ensure_space(dest, [(dest.joinpath(*_member_parts(m.name, label)), m.size) for m in files], label)
    n = 0
    bar = progress_bar(f"extracting {Path(label).name}", sum(m.size for m in files), enabled=progress, unit="bytes")
    with _open_tar(stream, label) as tf, bar as advance:
        for m in _iter_tar(tf, label):
            if not keep(m.name) or not (m.isfile() or m.isdir()):
                continue  # links were refused by the check; nothing but files and folders is made
            target = dest.joinpath(*_member_parts(m.name, label))
            if m.isdir():
                _make_dir(target)
                continue
            _write_member(lambda m=m: tf.extractfile(m), target, m.size, label, m.name)
            advance(m.size)
            n += 1
    return n


# ---------------------------------------------------------------------------- markers
def marker_path(state_dir: Path, key: str) -> Path:
    return state_dir / f"{key}.done"


def read_marker(state_dir: Path, key: str) -> dict | None:
    p = marker_path(state_dir, key)
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def write_marker(state_dir: Path, key: str, payload: dict) -> None:
    atomic_write_bytes(marker_path(state_dir, key), json.dumps(payload, indent=1, sort_keys=True).encode("utf-8"))


def clear_marker(state_dir: Path, key: str) -> None:
    marker_path(state_dir, key).unlink(missing_ok=True)


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


# ---------------------------------------------------------------------------- sources
def is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def mirror_url(base: str, filename: str) -> str:
    return base.rstrip("/") + "/" + filename


def mirror_from_env() -> str | None:
    value = os.environ.get(MIRROR_ENV, "").strip()
    return value or None
