"""Several files, or byte ranges of several URLs, read as one seekable stream: a zip split
with ``split -b`` (``mp3.zip.001..003``) is read without concatenating it on disk."""

from __future__ import annotations

import bisect
import io
import itertools
import os
from pathlib import Path
from typing import Iterator, Sequence

from audiocnn.datasets.checksums import CHUNK


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
