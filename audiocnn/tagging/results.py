"""The results file of a music library: one record per song, appended as songs finish, resumable.

``tag_command(paths, output=FILE)`` appends one record per file (``.jsonl``: one JSON object per
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

A results file says what it is: a ``.jsonl`` file starts with the header line
``{"audiocnn": "tag-results", "version": 1, ...}``, a ``.csv`` file with its column row
(``path,size,mtime,model,...`` then one column per label). A file that exists and starts
otherwise (a dataset's ``manifest.jsonl``, anyone's own CSV) is refused, never rewritten.
A ``.jsonl`` file of audiocnn before the header (its first line a record) is read, and
given the header when it is next rewritten.

File names are bytes on POSIX. One that is not valid UTF-8 is held as surrogate escapes
(:func:`os.fsdecode`); a ``.jsonl`` record writes them as the JSON escapes ``\\udcXX``
(:func:`audiocnn.fileio.json_text`), a ``.csv`` row as the name's own bytes, so records
round-trip exactly and such a file is skipped on resume like any other.

The results file may be a symbolic link: the link is kept, its target is read and rewritten.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audiocnn import __version__
from audiocnn.errors import AudiocnnError, UsageError
from audiocnn.fileio import FileWriteError, fsync_dir, held_lock, json_text, temp_path, write_error
from audiocnn.tagging.tagger import TagResult

RESULTS_SUFFIXES = (".jsonl", ".csv")
CSV_BASE_COLUMNS = ["path", "size", "mtime", "model", "model_sha256", "options", "error", "duration", "windows"]
CSV_PREDICTED_COLUMN = "predicted"
#: The first line of a ``.jsonl`` results file says what the file is.
RESULTS_MARK = "tag-results"
RESULTS_VERSION = 1
_JSONL_HEAD = b'{"audiocnn": "' + RESULTS_MARK.encode() + b'"'
# what every record of a results file holds: a .jsonl file of audiocnn before the header
# line is recognised by its first line holding all of these
_RECORD_KEYS = frozenset({"path", "size", "mtime", "model", "model_sha256", "options"})
_FIRST_LINE_MAX = 1 << 20
# names are bytes on POSIX: CSV rows hold them as they are (surrogate escapes <-> bytes)
_CSV_ERRORS = "surrogateescape"


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


def _first_line(path: Path) -> bytes | None:
    """The file's first line with its newline (cut at :data:`_FIRST_LINE_MAX` bytes), or
    None when there is no file."""
    try:
        with open(path, "rb") as fh:
            return fh.readline(_FIRST_LINE_MAX)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FileWriteError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _jsonl_kind(first: bytes) -> str | None:
    """``"marked"``, ``"legacy"`` (a record of audiocnn before the header line) or None."""
    if not first.endswith(b"\n"):  # a first line cut short by a crash: whose is it?
        return "marked" if first.startswith(_JSONL_HEAD) else "legacy" if first.startswith(b'{"path": ') else None
    try:
        obj = json.loads(first)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    if obj.get("audiocnn") == RESULTS_MARK:
        return "marked"
    return "legacy" if obj.keys() >= _RECORD_KEYS else None


def check_results_file(path: str | os.PathLike, labels: Sequence[str] | None = None) -> str:
    """Whether ``path`` may be written as a results file: ``"new"`` (missing or empty),
    ``"marked"`` (one audiocnn wrote, with its header) or ``"legacy"`` (an audiocnn
    ``.jsonl`` file from before the header line). Anything else raises
    :class:`UsageError`: audiocnn rewrites only what it wrote. ``labels``: also check that
    a CSV's score columns are those labels (None: not yet known)."""
    path = Path(path)
    first = _first_line(path)
    if not first:
        return "new"
    what = str(path)
    if path.suffix.lower() == ".jsonl":
        kind = _jsonl_kind(first)
        if kind is None:
            raise UsageError(
                f"{what}: not an audiocnn results file (its first line is not the header "
                f"{_JSONL_HEAD.decode()}, ...}} nor a record); refusing to rewrite it",
                hint="pick a new file name",
            )
        if kind == "marked" and first.endswith(b"\n"):
            version = json.loads(first).get("version")
            if version != RESULTS_VERSION:
                raise UsageError(f"{what}: a results file of format version {version}; this audiocnn reads version 1")
        return kind
    _check_csv_header(what, first, labels)
    return "marked"


def _check_csv_header(what: str, first: bytes, labels: Sequence[str] | None) -> None:
    base = [*CSV_BASE_COLUMNS, CSV_PREDICTED_COLUMN]
    text = first.decode("utf-8", _CSV_ERRORS)
    if not first.endswith(b"\n"):  # cut short by a crash
        if ",".join(base).startswith(text) or text.startswith(",".join(base)):
            return
        found: list[str] = []
    else:
        found = next(csv.reader([text]), [])
    if found[: len(base)] != base:
        raise UsageError(
            f"{what}: not an audiocnn results file (its first row is not the columns "
            f"{', '.join(base[:3])}, ... audiocnn writes); refusing to rewrite it",
            hint="pick a new file name",
        )
    theirs = found[len(base) :]
    if labels is not None and theirs != list(labels):
        raise UsageError(
            f"{what}: written by another model: the label names differ ({len(theirs)} labels "
            f"{', '.join(theirs[:3])}{', ...' if len(theirs) > 3 else ''}; this model has {len(labels)}: "
            f"{', '.join(list(labels)[:3])}{', ...' if len(labels) > 3 else ''})",
            hint="write to a new results file, or a .jsonl one, which can hold any model's records",
        )


def _jsonl_header() -> bytes:
    head = {"audiocnn": RESULTS_MARK, "version": RESULTS_VERSION, "created_by": f"audiocnn {__version__}"}
    return (json_text(head) + "\n").encode("utf-8")


class ResultsFile:
    """The results file of a library run: read its records, drop stale ones, append.

    ``path`` is what messages name; a symbolic link is kept and its target (``target``)
    read and written."""

    def __init__(self, path: str | os.PathLike, labels: Sequence[str]) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in RESULTS_SUFFIXES:
            raise UsageError(
                f"{self.path}: the suffix must be .jsonl or .csv (it picks the format), got {suffix or 'none'}"
            )
        self.target = Path(os.path.realpath(self.path))
        self.fmt = suffix[1:]
        self.labels = list(labels)
        self.header = [*CSV_BASE_COLUMNS, CSV_PREDICTED_COLUMN, *self.labels] if self.fmt == "csv" else None
        self._fh: io.FileIO | None = None
        self.cut_tail = 0  # records cut short by a crash, truncated away
        self.kind = "new"  # what check_results_file found: new | marked | legacy

    # ------------------------------------------------------------------ reading

    def _lines(self) -> Iterator[bytes]:
        """Complete lines (a CSV row with a quoted newline stays whole); a cut-off tail is
        truncated away first. The file must have passed :func:`check_results_file`."""
        if not self.target.exists():
            return
        with open(self.target, "rb+") as fh:
            data_end = fh.seek(0, os.SEEK_END)
            keep = self._complete_length(fh, data_end)
            if keep < data_end:
                self.cut_tail += 1
                fh.truncate(keep)
                fh.flush()
                os.fsync(fh.fileno())
        with open(self.target, "rb") as fh:
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
            row = next(csv.reader([line.decode("utf-8", _CSV_ERRORS)]))
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
        many lines there are (the header not counted). Raises :class:`UsageError` for a
        file that is not an audiocnn results file (it is left as it is)."""
        self.kind = check_results_file(self.path, self.labels)
        stored: dict[str, _Stored] = {}
        bad = n = 0
        for n, line in enumerate(self._after_header(self._lines()), 1):
            rec = self._parse(line)
            if rec is None:
                bad += 1
                continue
            key = (rec.get("size"), rec.get("mtime"), rec.get("model_sha256"), _options_json(rec.get("options") or {}))
            stored[str(rec["path"])] = _Stored(n, key, not rec.get("error"))
        return stored, bad, n

    def record_lines(self) -> Iterator[bytes]:
        """The record lines as they are (:meth:`scan` first)."""
        return self._after_header(self._lines())

    def _after_header(self, lines: Iterator[bytes]) -> Iterator[bytes]:
        """The record lines: the header line (CSV columns, or the JSONL mark) left out."""
        if self.kind != "legacy":
            next(lines, None)
        yield from lines

    # ------------------------------------------------------------------ writing

    def _header_line(self) -> bytes:
        return self._csv_line(self.header) if self.header is not None else _jsonl_header()

    def rewrite(self, keep: Callable[[int, bytes], bool], extra: Iterable[bytes] = ()) -> None:
        """Atomically rewrite the file, with its header, and only the record lines
        ``keep(index, line)`` accepts (:meth:`scan` first), then the lines ``extra``."""
        tmp = temp_path(self.target)
        try:
            with open(tmp, "wb") as out:
                out.write(self._header_line())
                for n, line in enumerate(self._after_header(self._lines()), 1):
                    if keep(n, line):
                        out.write(line)
                for line in extra:
                    out.write(line)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise write_error(self.path, exc, existed=True) from None
        self.kind = "marked"
        fsync_dir(self.target.parent)

    def open(self) -> None:
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            created = not self.target.exists()
            self._fh = open(self.target, "ab", buffering=0)
            if self._fh.seek(0, os.SEEK_END) == 0:
                self._append(self._header_line())
            if created:
                fsync_dir(self.target.parent)  # the new file's name survives a power cut too
        except OSError as exc:
            raise write_error(self.path, exc, existed=self.target.exists()) from None

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def _write(self, data: bytes) -> None:
        """Write all of ``data`` (a raw file's write may take only part of it)."""
        view = memoryview(data)
        while view:
            view = view[self._fh.write(view) :]

    def _append(self, data: bytes) -> None:
        """One record, durably; on failure (a full disk) its part already written is cut
        off again at once, so the file ends with the last whole record."""
        fh = self._fh
        end = fh.seek(0, os.SEEK_END)
        try:
            self._write(data)
            os.fsync(fh.fileno())
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fh.fileno(), end)
            raise FileWriteError(
                f"{self.path}: cannot append a record ({exc.strerror or exc}); the records written before it are kept"
            ) from None

    @staticmethod
    def _csv_line(cells: Sequence[Any]) -> bytes:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(cells)
        return buf.getvalue().encode("utf-8", _CSV_ERRORS)

    def append(self, record: dict[str, Any], result: TagResult | None) -> None:
        """One record, durably: JSON line, or CSV row with ``result``'s score per label."""
        if self.fmt == "jsonl":
            self._append((json_text(record) + "\n").encode("utf-8"))
            return
        cells = [record.get(c) for c in CSV_BASE_COLUMNS]
        cells[CSV_BASE_COLUMNS.index("mtime")] = repr(record["mtime"]) if record["mtime"] is not None else ""
        cells[CSV_BASE_COLUMNS.index("options")] = _options_json(record["options"])
        predicted = record.get(CSV_PREDICTED_COLUMN)
        cells.append(json_text(predicted) if predicted is not None else "")
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
class ResultsPlan:
    """Which files a library run tags, after reading what the results file already holds."""

    todo: list[FileIdentity]
    skipped: int  # already tagged with the same file, model and options
    retried: int  # failed before: tried again
    repaired: int  # invalid lines (e.g. a record cut short by a crash) dropped


def plan_results(
    out: ResultsFile, files: Sequence[str | os.PathLike], model_sha256: str, options: dict[str, Any], force: bool
) -> ResultsPlan:
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
    if drop or len(last) < lines or out.kind == "legacy":  # replaced, invalid or duplicate lines; no header yet
        out.rewrite(lambda n, _line: n in last and n not in drop)
    return ResultsPlan(todo, skipped, retried, bad + out.cut_tail)


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


def results_lock(output: str | os.PathLike):
    """Two runs must not append to one results file at once (nor through two links to it)."""
    target = Path(os.path.realpath(output))

    def busy(pid: int | None) -> AudiocnnError:
        who = f"process {pid}" if pid else "another process"
        return UsageError(f"{output}: {who} is tagging into it now", hint="wait for it, or pick another file")

    return held_lock(target.with_name(f".{target.name}.lock"), busy)
