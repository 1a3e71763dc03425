"""Members of a zip on an HTTP server, fetched without the rest of the zip.

A zip keeps its table of contents (the central directory) at its end, and every entry
of it records where its member starts, how long it is and its CRC-32. So a few clips of
``fma_large.zip`` (93 GiB) need only three kinds of HTTP Range request: the last bytes
(end of central directory, ZIP64 locator), the central directory itself, then each
chosen member's local header and data. :class:`RangeFile` is a seekable file object over
those requests, so :mod:`zipfile` (ZIP64 included) reads it as it reads a file on disk,
and checks each member's CRC-32 as it decompresses it.

One zip cut into parts (MTAT's ``mp3.zip.001..003``) is one :class:`RangeFile` over
several URLs. A member is written to its final name only after its CRC-32 matched (temp
file, then rename), and a member already on disk with the recorded size and CRC-32 is
not fetched again, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path

from audiocnn.datasets.archive_checks import (
    CorruptArchiveError,
    MemberCheck,
    check_zip_members,
    copy_member,
    ensure_space,
    member_filter,
    member_parts,
)
from audiocnn.datasets.checksums import CHUNK
from audiocnn.datasets.http import (
    USER_AGENT,
    StallWatch,
    content_range_start,
    content_range_total,
    net_settings,
    transient_reason,
)
from audiocnn.datasets.parts import PartsStream
from audiocnn.errors import DownloadError
from audiocnn.progress import human_size, progress_bar

log = logging.getLogger("audiocnn.datasets")

#: Adjacent chosen members closer than this are fetched in one request.
MERGE_GAP = 16 * 1024
#: The most one request asks for (a longer member is read in several).
MAX_SPAN = 32 * 1024 * 1024
#: Room for a local header's name and extra field beyond what the directory says.
HEADER_SLACK = 30 + 512


@dataclass
class _Buffer:
    start: int = 0
    data: bytes = b""


@dataclass
class RangeStats:
    """What the transfers cost: requests made and bytes received."""

    requests: int = 0
    bytes: int = 0
    size: int = 0  # of the whole archive
    per_url: dict[str, int] = field(default_factory=dict)


class RangeFile(PartsStream):
    """Read-only, seekable view of one file (or of parts read as one) served over HTTP.

    Every read outside the prefetched span is one Range request for exactly the bytes
    asked; :meth:`prefetch` fetches a span zipfile is about to read in one request.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        retries: int | None = None,
        backoff: float | None = None,
        timeout: float | None = None,
        sleep=time.sleep,
    ) -> None:
        env = net_settings()  # what is not given comes from the environment
        self.urls = list(urls)
        self.retries = env.retries if retries is None else retries
        self.backoff = env.backoff if backoff is None else backoff
        self.timeout = env.timeout if timeout is None else timeout
        self._sleep = sleep
        self.stats = RangeStats()
        self._buf = _Buffer()
        super().__init__([self._size_of(u) for u in self.urls])

    # -- io.RawIOBase --------------------------------------------------------------
    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self._pos
        n = max(0, min(n, self.size - self._pos))
        if n == 0:
            return b""
        b = self._buf
        if b.start <= self._pos and self._pos + n <= b.start + len(b.data):
            out = b.data[self._pos - b.start : self._pos - b.start + n]
        else:
            out = self._get(self._pos, n)
        self._pos += len(out)
        return out

    def readinto(self, buffer) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)

    def prefetch(self, start: int, end: int) -> None:
        """Fetch ``[start, end)`` (clipped to the file) in one request for the reads to come."""
        end = min(end, self.size)
        if start >= end:
            return
        self._buf = _Buffer(start, self._get(start, end - start))

    # -- HTTP ------------------------------------------------------------------------
    def _size_of(self, url: str) -> int:
        resp_headers, _body = self._request(url, 0, 0)
        total = content_range_total(resp_headers.get("Content-Range"))
        if total is None:
            raise DownloadError(
                f"{url}: the server does not answer HTTP Range requests, so part of the file cannot be fetched",
                hint="run prepare without `max_clips` to download the whole archive",
                arguments=("max_clips",),
            )
        return total

    def _get(self, start: int, n: int) -> bytes:
        """Bytes ``[start, start+n)`` of the whole (several requests when parts are crossed)."""
        return b"".join(
            self._request(self.urls[i], local, local + take - 1)[1] for i, local, take in self.spans(start, n)
        )

    def _request(self, url: str, first: int, last: int) -> tuple[dict, bytes]:
        attempt = 0
        while True:
            try:
                with StallWatch(url, self.timeout) as watch:
                    return self._request_once(url, first, last, watch)
            except (TimeoutError, urllib.error.URLError, HTTPException, ConnectionError, OSError) as exc:
                why = transient_reason(url, exc)
            attempt += 1
            if attempt > self.retries:
                raise DownloadError(
                    f"{url}: bytes {first}-{last} could not be fetched after {self.retries + 1} attempts ({why})",
                    hint="run the same command again: members already fetched are kept",
                )
            delay = self.backoff * (2 ** (attempt - 1))
            log.warning("%s: %s; retry %d/%d in %.1fs", url.rsplit("/", 1)[-1], why, attempt, self.retries, delay)
            self._sleep(delay)

    def _request_once(self, url: str, first: int, last: int, watch: StallWatch) -> tuple[dict, bytes]:
        req = urllib.request.Request(
            url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity", "Range": f"bytes={first}-{last}"}
        )
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 (http/https only)
            headers = dict(resp.headers.items())
            if resp.status != 206 or content_range_start(headers.get("Content-Range")) != first:
                raise DownloadError(
                    f"{url}: asked for bytes {first}-{last}, the server answered HTTP {resp.status} "
                    f"({headers.get('Content-Range', 'no Content-Range')})",
                    hint="run prepare without `max_clips` to download the whole archive",
                    arguments=("max_clips",),
                )
            chunks, want = [], last - first + 1
            while want > 0 and (block := resp.read1(want)):  # what has arrived: slow is not stalled
                watch.tick()
                chunks.append(block)
                want -= len(block)
            body = b"".join(chunks)
        self.stats.requests += 1
        self.stats.bytes += len(body)
        self.stats.per_url[url] = self.stats.per_url.get(url, 0) + len(body)
        if len(body) != last - first + 1:
            raise ConnectionError(f"got {len(body)} of {last - first + 1} bytes")
        return headers, body


def _crc_of(path: Path) -> int:
    crc = 0
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            crc = zlib.crc32(block, crc)
    return crc


def _already_there(target: Path, info: zipfile.ZipInfo) -> bool:
    try:
        return target.is_file() and target.stat().st_size == info.file_size and _crc_of(target) == info.CRC
    except OSError:
        return False


def _runs(infos: list[zipfile.ZipInfo]) -> list[list[zipfile.ZipInfo]]:
    """Members in file order, grouped where the gap between them is small (one request each)."""
    runs: list[list[zipfile.ZipInfo]] = []
    end = -1
    for info in sorted(infos, key=lambda i: i.header_offset):
        start = info.header_offset
        stop = start + HEADER_SLACK + len(info.filename) * 4 + info.compress_size
        if runs and start - end <= MERGE_GAP and stop - runs[-1][0].header_offset <= MAX_SPAN:
            runs[-1].append(info)
        else:
            runs.append([info])
        end = max(end, stop)
    return runs


def _write_verified(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, label: str) -> None:
    """Decompress one member to a temp file, check its CRC-32, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part{os.getpid()}")
    try:
        with zf.open(info) as src, open(tmp, "wb") as out:
            crc = copy_member(src.read, out, info.file_size, label, info.filename)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        tmp.unlink(missing_ok=True)
        raise CorruptArchiveError(
            f"{label}: member {info.filename!r} does not match its CRC-32 or does not decompress ({exc})",
            hint="run the same command again to fetch it anew; members already fetched are kept",
            archive=label,
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if crc != info.CRC:  # zipfile checks too; this keeps the rule visible and independent of it
        tmp.unlink(missing_ok=True)
        raise CorruptArchiveError(f"{label}: member {info.filename!r}: CRC-32 {crc:08x}, directory says {info.CRC:08x}")
    os.replace(tmp, target)


def fetch_members(
    urls: Sequence[str],
    dest: Path,
    wanted: Iterable[str] | None,
    *,
    progress: bool = False,
    retries: int | None = None,
    backoff: float | None = None,
    max_member: int | None = None,
) -> tuple[int, int, RangeStats]:
    """Fetch the members named in ``wanted`` (names or folders; None: all) into ``dest``.

    Returns (members fetched now, members already there, transfer stats). Every member is
    checked as extraction checks it (no absolute path, no '..', no link, no member over
    ``max_member`` or expanding more than audio does), and the free space too.
    """
    label = urls[0] if len(urls) == 1 else f"{urls[0]}..{urls[-1].rsplit('.', 1)[-1]}"
    rf = RangeFile(urls, retries=retries, backoff=backoff)
    try:
        zf = zipfile.ZipFile(rf)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CorruptArchiveError(
            f"{label}: the zip's central directory cannot be read ({exc})", archive=label
        ) from None
    with zf:
        keep = member_filter(wanted)
        check_zip_members(zf, MemberCheck(label, dest, rf.size, max_member), keep)
        infos = [i for i in zf.infolist() if not i.is_dir() and keep(i.filename)]
        todo = []
        kept = 0
        for info in infos:
            if _already_there(dest.joinpath(*member_parts(info.filename, label)), info):
                kept += 1
            else:
                todo.append(info)
        ensure_space(dest, [(dest.joinpath(*member_parts(i.filename, label)), i.file_size) for i in todo], label)
        total = sum(i.compress_size for i in todo)
        log.info(
            "%s: %d members to fetch (%s), %d already here; central directory of %d entries",
            label.rsplit("/", 1)[-1],
            len(todo),
            human_size(total),
            kept,
            len(zf.infolist()),
        )
        with progress_bar("fetching members", total, enabled=progress, unit="bytes") as advance:
            for run in _runs(todo):
                first = run[0].header_offset
                last = max(i.header_offset + HEADER_SLACK + len(i.filename) * 4 + i.compress_size for i in run)
                if last - first <= MAX_SPAN:
                    rf.prefetch(first, last)
                for info in run:
                    _write_verified(zf, info, dest.joinpath(*member_parts(info.filename, label)), label)
                    advance(info.compress_size)
    rf.stats.size = rf.size
    return len(todo), kept, rf.stats
