"""Tag a whole music library into one results file, resumably.

``tag PATHS... --output FILE`` appends one record per file (``.jsonl``: one JSON object per
line; ``.csv``: one row, one column per label) as each file finishes, with a flush and an
fsync, so a killed run keeps every finished record. A record is one line written in one
call; a line cut short by a crash is removed when the file is next opened.

A record carries the file's absolute path, size and modification time, the model
(``model``, and ``model_sha256``: the checkpoint file's content) and the tagging options.
Running the same command again skips every file whose record matches on all of these, so
an interrupted run resumes where it stopped and a grown library only tags what is new or
changed. Files that changed, failed before, or are re-tagged with ``force`` lose their old
record first (the file is rewritten atomically), so each file has exactly one record.

A file that cannot be decoded gets a record with an ``error`` and no scores; it is tried
again on the next run.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audiocnn.errors import AudiocnnError, UsageError
from audiocnn.fileio import FileWriteError, fsync_dir, held_lock, temp_path, write_error
from audiocnn.tagging.tagger import TagResult

LIBRARY_SUFFIXES = (".jsonl", ".csv")
CSV_BASE_COLUMNS = ["path", "size", "mtime", "model", "model_sha256", "options", "error", "duration", "windows"]
CSV_PREDICTED_COLUMN = "predicted"


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """The first 16 hex digits of the SHA-256 of a checkpoint file: the model's identity."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class FileIdentity:
    """What decides whether a file's record is still valid."""

    path: str  # absolute
    size: int | None
    mtime: float | None

    @classmethod
    def of(cls, path: str | os.PathLike) -> FileIdentity:
        p = os.path.abspath(os.fspath(path))
        try:
            st = os.stat(p)
        except OSError:
            return cls(p, None, None)
        return cls(p, int(st.st_size), float(st.st_mtime))


@dataclass(frozen=True)
class _Stored:
    line: int  # number of the record's line from 1, the header not counted
    key: tuple[Any, ...]
    ok: bool


def _options_json(options: dict[str, Any]) -> str:
    return json.dumps(options, sort_keys=True)


class LibraryFile:
    """The results file of a library run: read its records, drop stale ones, append."""

    def __init__(self, path: str | os.PathLike, labels: Sequence[str]) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in LIBRARY_SUFFIXES:
            raise UsageError(
                f"--output {self.path}: the suffix must be .jsonl or .csv (it picks the format), got {suffix or 'none'}"
            )
        self.fmt = suffix[1:]
        self.labels = list(labels)
        self.header = [*CSV_BASE_COLUMNS, CSV_PREDICTED_COLUMN, *self.labels] if self.fmt == "csv" else None
        self._fh: io.BufferedWriter | None = None
        self.cut_tail = 0  # records cut short by a crash, truncated away

    # ------------------------------------------------------------------ reading

    def _lines(self) -> Iterator[bytes]:
        """Complete lines (a CSV row with a quoted newline stays whole); a cut-off tail is
        truncated away first."""
        if not self.path.exists():
            return
        with open(self.path, "rb+") as fh:
            data_end = fh.seek(0, os.SEEK_END)
            keep = self._complete_length(fh, data_end)
            if keep < data_end:
                self.cut_tail += 1
                fh.truncate(keep)
                fh.flush()
                os.fsync(fh.fileno())
        with open(self.path, "rb") as fh:
            yield from self._records(fh)

    @staticmethod
    def _complete_length(fh: io.BufferedRandom, end: int) -> int:
        """Bytes up to and including the last newline."""
        pos = end
        while pos > 0:
            step = min(pos, 1 << 16)
            fh.seek(pos - step)
            chunk = fh.read(step)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                return pos - step + nl + 1
            pos -= step
        return 0

    def _records(self, fh: io.BufferedReader) -> Iterator[bytes]:
        if self.fmt == "jsonl":
            yield from fh
            return
        pending = b""
        for raw in fh:
            pending += raw
            if pending.count(b'"') % 2 == 0:  # not inside a quoted field
                yield pending
                pending = b""

    def _parse(self, line: bytes) -> dict[str, Any] | None:
        try:
            if self.fmt == "jsonl":
                rec = json.loads(line)
                return rec if isinstance(rec, dict) and "path" in rec else None
            row = next(csv.reader([line.decode("utf-8")]))
        except (ValueError, StopIteration):
            return None
        if len(row) != len(self.header):
            return None
        rec = dict(zip(self.header, row))
        try:
            rec["size"] = int(rec["size"]) if rec["size"] else None
            rec["mtime"] = float(rec["mtime"]) if rec["mtime"] else None
            rec["options"] = json.loads(rec["options"])
        except ValueError:
            return None
        return rec

    def scan(self) -> tuple[dict[str, _Stored], int, int]:
        """The last record of each path, how many lines are not valid records, and how
        many lines there are (the header not counted)."""
        stored: dict[str, _Stored] = {}
        bad = n = 0
        for n, line in enumerate(self._check_header(self._lines()), 1):
            rec = self._parse(line)
            if rec is None:
                bad += 1
                continue
            key = (rec.get("size"), rec.get("mtime"), rec.get("model_sha256"), _options_json(rec.get("options") or {}))
            stored[str(rec["path"])] = _Stored(n, key, not rec.get("error"))
        return stored, bad, n

    def _check_header(self, lines: Iterator[bytes]) -> Iterator[bytes]:
        if self.header is None:
            yield from lines
            return
        first = next(lines, None)
        if first is None:
            return
        found = next(csv.reader([first.decode("utf-8", "replace")]), [])
        if found != self.header:
            raise UsageError(
                f"--output {self.path}: its columns are not those of this model's results "
                f"({len(found)} columns, expected {len(self.header)}: path, ..., one per label)",
                hint="write to a new --output file, or a .jsonl file, which can hold any model's records",
            )
        yield from lines

    # ------------------------------------------------------------------ writing

    def rewrite(self, keep: Callable[[int, bytes], bool]) -> None:
        """Atomically rewrite the file with only the record lines ``keep(index, line)`` accepts."""
        tmp = temp_path(self.path)
        try:
            with open(tmp, "wb") as out:
                if self.header is not None:
                    out.write(self._csv_line(self.header))
                for n, line in enumerate(self._check_header(self._lines()), 1):
                    if keep(n, line):
                        out.write(line)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise write_error(self.path, exc, existed=True) from None
        fsync_dir(self.path.parent)

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            created = not self.path.exists()
            self._fh = open(self.path, "ab")
            if self.header is not None and self._fh.tell() == 0:
                self._append(self._csv_line(self.header))
            if created:
                fsync_dir(self.path.parent)  # the new file's name survives a power cut too
        except OSError as exc:
            raise write_error(self.path, exc, existed=self.path.exists()) from None

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def _append(self, data: bytes) -> None:
        fh = self._fh
        try:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        except OSError as exc:
            raise FileWriteError(f"{self.path}: cannot append a record ({exc.strerror or exc})") from None

    @staticmethod
    def _csv_line(cells: Sequence[Any]) -> bytes:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(cells)
        return buf.getvalue().encode("utf-8")

    def append(self, record: dict[str, Any], result: TagResult | None) -> None:
        """One record, durably: JSON line, or CSV row with ``result``'s score per label."""
        if self.fmt == "jsonl":
            self._append((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
            return
        cells = [record.get(c) for c in CSV_BASE_COLUMNS]
        cells[CSV_BASE_COLUMNS.index("mtime")] = repr(record["mtime"]) if record["mtime"] is not None else ""
        cells[CSV_BASE_COLUMNS.index("options")] = _options_json(record["options"])
        predicted = record.get(CSV_PREDICTED_COLUMN)
        cells.append(json.dumps(predicted, ensure_ascii=False) if predicted is not None else "")
        cells += [f"{float(v):.6f}" for v in result.scores] if result is not None else [""] * len(self.labels)
        self._append(self._csv_line(["" if c is None else c for c in cells]))


def make_record(
    ident: FileIdentity, model: dict[str, str], options: dict[str, Any], outcome: TagResult | AudiocnnError
) -> dict[str, Any]:
    """A file's record: ``TagResult.to_dict()`` (or the error) plus the file's and the
    model's identity and the options."""
    record: dict[str, Any] = {"path": ident.path, "size": ident.size, "mtime": ident.mtime}
    if isinstance(outcome, AudiocnnError):
        record.update(model=model["model"], error=str(outcome))
    else:
        record.update({k: v for k, v in outcome.to_dict().items() if k != "path"})
    record.update(model=model["model"], model_sha256=model["model_sha256"], options=options)
    return record


@dataclass
class LibraryPlan:
    """Which files a library run tags, after reading what the results file already holds."""

    todo: list[FileIdentity]
    skipped: int  # already tagged with the same file, model and options
    retried: int  # failed before: tried again
    repaired: int  # invalid lines (e.g. a record cut short by a crash) dropped


def plan_library(
    out: LibraryFile, files: Sequence[str | os.PathLike], model_sha256: str, options: dict[str, Any], force: bool
) -> LibraryPlan:
    """Read ``out``, decide what to tag, and drop the records that will be replaced."""
    stored, bad, lines = out.scan()
    options_key = _options_json(options)
    todo: list[FileIdentity] = []
    drop: set[int] = set()
    skipped = retried = 0
    for f in files:
        ident = FileIdentity.of(f)
        old = stored.get(ident.path)
        if old is not None:
            if not force and old.ok and old.key == (ident.size, ident.mtime, model_sha256, options_key):
                skipped += 1
                continue
            retried += not old.ok
            drop.add(old.line)
        todo.append(ident)
    last = {s.line for s in stored.values()}
    if drop or len(last) < lines:  # replaced, invalid or duplicate lines
        out.rewrite(lambda n, _line: n in last and n not in drop)
    return LibraryPlan(todo, skipped, retried, bad + out.cut_tail)


class RateInfo:
    """The progress bar's text: files/s, audio hours/s and the time left."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.audio_s = total, 0, 0.0
        self.t0 = time.perf_counter()

    def add(self, audio_seconds: float) -> str:
        self.done += 1
        self.audio_s += audio_seconds
        dt = max(time.perf_counter() - self.t0, 1e-9)
        rate = self.done / dt
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        eta = time.strftime("%H:%M:%S", time.gmtime(left)) if left < 86400 else f"{left / 86400:.1f} days"
        return f"{rate:.2f} files/s, {self.audio_s / 3600 / dt:.3f} audio-h/s, ETA {eta}"


def library_lock(out: LibraryFile):
    """Two runs must not append to one results file at once."""

    def busy(pid: int | None) -> AudiocnnError:
        who = f"process {pid}" if pid else "another process"
        return UsageError(
            f"--output {out.path}: {who} is tagging into it now", hint="wait for it, or pick another file"
        )

    return held_lock(out.path.with_name(f".{out.path.name}.lock"), busy)
