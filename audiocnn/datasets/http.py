"""Resumable HTTP(S) downloads of dataset files, with the standard library (``urllib``):
no extra dependency, never wget/curl.

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
- Where from: a remote's published URL, a mirror given as a source, or the base URL in
  ``AUDIOCNN_MIRROR``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Callable

from audiocnn.datasets.checksums import CHUNK, file_digest, verify_file
from audiocnn.errors import ChecksumError, DownloadError, UsageError
from audiocnn.progress import human_size, progress_bar

log = logging.getLogger("audiocnn.datasets")

#: Environment variable holding a mirror base URL used for every remote.
MIRROR_ENV = "AUDIOCNN_MIRROR"
USER_AGENT = "audiocnn-downloader (+https://pypi.org/project/audiocnn)"
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


def content_range_start(value: str | None) -> int | None:
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


def content_range_total(value: str | None) -> int | None:
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
                f"{human_size(part.stat().st_size if part.exists() else 0)} "
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
                hint="the server sent a different file; try another mirror with `source`, "
                "or pass skip_checksum=True to accept it",
                arguments=("source", "skip_checksum"),
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
            whole = content_range_total(exc.headers.get("Content-Range"))
            if whole is not None and whole == offset:
                return whole  # the part already holds every byte
            raise _Restart(f"server refused range {offset}- (HTTP 416)") from None
        raise
    with resp:
        status = resp.status
        length = resp.headers.get("Content-Length")
        mode = "ab"
        if offset and status == 206:
            start = content_range_start(resp.headers.get("Content-Range"))
            if start != offset:
                raise _Restart(f"server answered range {start}- for a request of {offset}-")
            whole = content_range_total(resp.headers.get("Content-Range"))
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


def is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def mirror_url(base: str, filename: str) -> str:
    return base.rstrip("/") + "/" + filename


def mirror_from_env() -> str | None:
    value = os.environ.get(MIRROR_ENV, "").strip()
    return value or None
