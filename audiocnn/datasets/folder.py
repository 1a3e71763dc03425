"""A user's own audio folder: ``audiocnn prepare folder --source DIR [--labels CSV] --name NAME``.

Labels come either from sub-folder names (``DIR/<label>/**/<file>``, single-label) or
from a CSV with columns ``path,labels[,split]`` where ``labels`` is ``;``-separated
(multi-label as soon as one row has more than one label; ``--task`` can force it).
Paths in the CSV are relative to DIR (or absolute). Without a ``split`` column the
split is a seeded 80/10/10 stratified one. Audio stays where it is: the manifest's
audio root is DIR's absolute path.

The CSV is UTF-8 (a byte-order mark is fine) or UTF-16 with its byte-order mark, as
spreadsheets save "Unicode text"; any other encoding is refused with the line and byte
offset of the first byte that is not UTF-8.

Every clip must lie inside DIR once symbolic links are resolved, in both modes: a link
to a file elsewhere is refused with its name (the dataset would depend on files outside
the folder it was prepared from); a link within DIR is fine. The sub-folder scan is
:func:`audiocnn.audio.find_audio_files`, the one `tag` uses for folders: hidden files and
folders are skipped and linked folders are not entered.
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
from pathlib import Path

from audiocnn.audio import find_audio_files
from audiocnn.constants import MULTI_LABEL, SINGLE_LABEL
from audiocnn.datasets.registry import register_dataset
from audiocnn.datasets.spec import Candidate, Collected, DatasetSpec, PrepareContext
from audiocnn.datasets.splits import stratified_split, stratum_keys
from audiocnn.errors import DatasetError, UsageError

log = logging.getLogger("audiocnn.datasets")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "valid": "valid",
    "validation": "valid",
    "val": "valid",
    "dev": "valid",
    "test": "test",
    "testing": "test",
}


@register_dataset
class Folder(DatasetSpec):
    name = "folder"
    title = "your own audio folder (labels from sub-folders or a CSV)"
    task = SINGLE_LABEL
    tasks = (SINGLE_LABEL, MULTI_LABEL)
    classes = None
    split_schemes = ("auto",)
    default_split_scheme = "auto"
    license_short = "yours"
    license = "yours"
    citation = ""
    homepage = ""
    approx_size = "-"
    needs_name = True

    def acquire(self, ctx: PrepareContext) -> None:
        if len(ctx.sources) != 1:
            raise UsageError(
                "prepare folder needs exactly one source=DIR (the folder holding your audio)",
                hint="source=~/music dataset_name=mysongs",
                arguments=("source", "dataset_name"),
            )
        src = Path(ctx.sources[0]).expanduser()
        if not src.is_dir():
            raise UsageError(f"source={ctx.sources[0]}: not a folder", arguments=("source",))
        ctx.audio_base = src.resolve()

    def collect(self, ctx: PrepareContext) -> Collected:
        root = ctx.audio_base
        assert root is not None  # set by acquire
        if ctx.labels_file is not None:
            rows = _read_labels_csv(ctx.labels_file, root)
        else:
            rows = _scan_subfolders(root)
        if not rows:
            raise DatasetError(
                f"{root}: no audio files found",
                hint="audio files go in DIR/<label>/ or are listed in `labels_file`",
                arguments=("labels_file",),
            )
        excluded = []
        present = []
        for row in rows:
            if (root / row[1]).is_file():
                present.append(row)
            else:
                excluded.append({"id": row[0], "path": row[1], "reason": "listed in the labels CSV but not found"})
        rows = present
        if not rows:
            raise DatasetError(f"{ctx.labels_file}: none of the listed files exist under {root}")
        multi = any(len(labs) > 1 for _i, _p, labs, _s in rows)
        if multi and ctx.task_explicit and ctx.task == SINGLE_LABEL:
            raise UsageError(
                f"task=single-label: {ctx.labels_file} gives some files several labels", arguments=("task",)
            )
        task = MULTI_LABEL if (multi or ctx.task == MULTI_LABEL) else SINGLE_LABEL
        labels = sorted({lab for _i, _p, labs, _s in rows for lab in labs})
        given = [s for *_x, s in rows if s is not None]
        if given and len(given) != len(rows):
            raise DatasetError(
                f"{ctx.labels_file}: the split column is empty on some rows; fill it on every row or drop it"
            )
        if given:
            split_of = {cid: s for cid, _p, _l, s in rows}
            scheme_note = "split column"
        else:
            split_of = stratified_split(stratum_keys({cid: labs for cid, _p, labs, _s in rows}), seed=ctx.seed)
            scheme_note = f"stratified 80/10/10, seed {ctx.seed}"
        candidates = [Candidate(cid, path, list(labs), split_of[cid]) for cid, path, labs, _s in rows]
        return Collected(
            labels=labels,
            candidates=candidates,
            audio_root=str(root),
            task=task,
            excluded=excluded,
            extra={
                "source": str(root),
                "split": scheme_note,
                "labels_file": str(ctx.labels_file) if ctx.labels_file else None,
            },
        )


def _clip_id(rel: str) -> str:
    return rel.rsplit(".", 1)[0] if "." in rel.rsplit("/", 1)[-1] else rel


def _scan_subfolders(root: Path) -> list[tuple[str, str, list[str], str | None]]:
    rows = []
    loose = 0
    for p in find_audio_files(root):
        rel = p.relative_to(root).as_posix()
        if "/" not in rel:
            loose += 1
            continue
        _check_inside(p, root)
        label = rel.split("/", 1)[0]
        rows.append((_clip_id(rel), rel, [label], None))
    if loose:
        log.warning("%s: %d audio files directly in the folder have no label folder; skipped", root, loose)
    _check_unique(rows, root)
    return rows


def _check_inside(path: Path, root: Path, *, where: str | None = None) -> str:
    """``path`` relative to ``root`` once links are resolved; refused when it leads outside."""
    real = path.resolve()
    try:
        return real.relative_to(root).as_posix()
    except ValueError:
        prefix = f"{where}: " if where else ""
        raise DatasetError(
            f"{prefix}{path} is outside the source folder {root} (it resolves to {real})",
            hint="copy the file into the folder, or pass the folder that holds it as `source`",
            arguments=("source",),
        ) from None


def _decode_csv(path: Path) -> str:
    """The text of a labels CSV: UTF-8 (BOM or not) or UTF-16 with a BOM, else one line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the labels CSV ({exc.strerror or exc})") from None
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{path}: broken UTF-16 at byte offset {exc.start}; save the file as UTF-8") from None
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    if b"\x00" in data[:4096]:
        raise DatasetError(f"{path}: holds NUL bytes (UTF-16 without a byte-order mark?); save the file as UTF-8")
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = skip + exc.start
        line = data.count(b"\n", 0, offset) + 1
        raise DatasetError(
            f"{path}:{line}: not UTF-8 (byte 0x{data[offset]:02x} at byte offset {offset}); save the file as UTF-8",
            hint="a spreadsheet saves it so with 'CSV UTF-8'",
        ) from None


def _read_labels_csv(path: Path, root: Path) -> list[tuple[str, str, list[str], str | None]]:
    with io.StringIO(_decode_csv(path), newline="") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip().lower() for f in (reader.fieldnames or [])]
        if "path" not in fields or "labels" not in fields:
            raise DatasetError(f"{path}: expected a header with columns path,labels[,split]; got {reader.fieldnames}")
        names = {f.strip().lower(): f for f in reader.fieldnames or []}
        rows = []
        for lineno, rec in enumerate(reader, 2):
            raw_path = (rec.get(names["path"]) or "").strip()
            if not raw_path:
                raise DatasetError(f"{path}:{lineno}: empty path")
            p = Path(raw_path).expanduser()
            rel = _check_inside(p if p.is_absolute() else root / p, root, where=f"{path}:{lineno}")
            labels = [lab.strip() for lab in (rec.get(names["labels"]) or "").split(";") if lab.strip()]
            if not labels:
                raise DatasetError(f"{path}:{lineno}: {raw_path} has no label")
            split = None
            if "split" in names:
                value = (rec.get(names["split"]) or "").strip().lower()
                if value:
                    if value not in SPLIT_ALIASES:
                        raise DatasetError(f"{path}:{lineno}: split {value!r}; expected train, valid or test")
                    split = SPLIT_ALIASES[value]
            rows.append((_clip_id(rel), rel, sorted(set(labels)), split))
    _check_unique(rows, path)
    return rows


def _check_unique(rows, where: Path) -> None:
    seen: dict[str, str] = {}
    for cid, rel, _l, _s in rows:
        if cid in seen:
            raise DatasetError(f"{where}: {seen[cid]} and {rel} give the same clip id {cid!r}; rename one")
        seen[cid] = rel
