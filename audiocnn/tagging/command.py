"""``audiocnn tag`` as a library function: expand the paths, load the model once, tag each
file, write its outputs, and sum up; a file that fails is reported and the others go on."""

from __future__ import annotations

import glob
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from audiocnn.audio import AUDIO_EXTENSIONS, find_audio_files, is_audio_path
from audiocnn.constants import DEFAULT_MODEL, Aggregate, Framing
from audiocnn.errors import AudiocnnError, UsageError
from audiocnn.fileio import ensure_writable_dir
from audiocnn.tagging.outputs import output_stem, write_embeddings, write_taggram
from audiocnn.tagging.tagger import Tagger, TagResult

log = logging.getLogger("audiocnn.tag")


def expand_audio_paths(args: Sequence[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Files to tag from files, folders (:func:`audiocnn.audio.find_audio_files`) and globs.

    Returns ``(files, problems)``: an argument that matches nothing is a problem line, not
    an exception, so the other arguments are still tagged. Files named explicitly are kept
    whatever their name or extension; folders and globs contribute audio files only.
    """
    files: list[Path] = []
    problems: list[str] = []
    seen: set[str] = set()

    def add(found: list[Path]) -> int:
        for p in found:
            key = os.path.normcase(os.path.abspath(p))
            if key not in seen:
                seen.add(key)
                files.append(p)
        return len(found)

    for arg in args:
        text = str(arg)
        p = Path(text).expanduser()
        if p.is_dir():
            if add(find_audio_files(p)) == 0:
                problems.append(f"{p}: folder holds no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))})")
        elif p.is_file():
            add([p])
        elif glob.has_magic(text):
            n = 0
            for match in sorted(glob.glob(os.path.expanduser(text), recursive=True)):
                q = Path(match)
                n += add(find_audio_files(q) if q.is_dir() else [q] if q.is_file() and is_audio_path(q) else [])
            if n == 0:
                problems.append(f"{text}: pattern matches no audio files")
        else:
            problems.append(f"{p}: no such file or folder")
    return files, problems


@dataclass
class TagOutcome:
    """One tagged file: its result and the files written for it (``taggram``: the
    ``.npy`` of the taggram, ``embeddings``: the ``.npy`` of the embeddings)."""

    path: Path
    result: TagResult
    files: dict[str, Path] = field(default_factory=dict)


@dataclass
class TagSummary:
    """How a tag run went: missing and undecodable inputs count in ``total``, so tagged +
    failed is always the total."""

    total: int
    failures: list[str]  # one line per input that was not tagged
    seconds: float

    @property
    def failed(self) -> int:
        return len(self.failures)

    def __str__(self) -> str:
        total, failed = self.total, self.failed
        return f"tagged {total - failed} of {total} file{'s' if total != 1 else ''} in {self.seconds:.1f} s" + (
            f"; {failed} failed" if failed else ""
        )


def tag_command(
    paths: Sequence[str | os.PathLike],
    *,
    model: str | os.PathLike = DEFAULT_MODEL,
    data_dir: str | os.PathLike | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    window: float | None = None,
    hop: float | None = None,
    aggregate: str | Aggregate = Aggregate.mean,
    framing: str | Framing = Framing.auto,
    chunks: int | None = None,
    threshold: float | None = None,
    top_k: int | None = None,
    taggram_dir: str | os.PathLike | None = None,
    embeddings_dir: str | os.PathLike | None = None,
    on_result: Callable[[TagOutcome], None] | None = None,
    report: Callable[[str], None] = log.info,
    started: float | None = None,
) -> TagSummary:
    """Tag every audio file that ``paths`` name (files, folders, globs) with one model.

    ``on_result`` gets each tagged file as soon as it is done (what the CLI prints);
    ``report`` gets progress and one ``error: ...`` line per input that fails, which the
    run then skips. Options are those of :meth:`Tagger.tag_file`; they are checked, and the
    output folders made, before the first file. ``started`` (a ``time.perf_counter()``)
    is when the timings count from (default: now). Raises :class:`UsageError` when no
    argument names an audio file.
    """
    t0 = time.perf_counter() if started is None else started
    for what, folder in (("taggram_dir", taggram_dir), ("embeddings_dir", embeddings_dir)):
        if folder is not None:
            ensure_writable_dir(folder, what)
    files, failures = expand_audio_paths(paths)
    for line in failures:
        report(f"error: {line}")
    if not files:
        raise UsageError("nothing to tag: none of the given paths is an audio file or holds one")
    tagger = Tagger(model, device=device, batch_size=batch_size, data_dir=data_dir)
    options = {
        "window": window,
        "hop": hop,
        "aggregate": aggregate,
        "top_k": top_k,
        "framing": framing,
        "chunks": chunks,
        "threshold": threshold,
    }
    tagger.check(**options)
    report(
        f"model {tagger.name} ({tagger.task}, {len(tagger.labels)} labels) loaded in "
        f"{time.perf_counter() - t0:.1f} s; tagging {len(files)} file{'s' if len(files) != 1 else ''}"
    )
    total = len(files) + len(failures)
    stems: set[str] = set()
    tagged = tagger.tag_files(
        files, return_taggram=taggram_dir is not None, return_embeddings=embeddings_dir is not None, **options
    )
    for i, (path, res) in enumerate(tagged, 1):
        if isinstance(res, AudiocnnError):
            failures.append(str(res))
            report(f"error: {res}")
            continue
        outcome = TagOutcome(path, res, _write_files(res, path, stems, taggram_dir, embeddings_dir))
        if on_result is not None:
            on_result(outcome)
        report(f"[{i}/{len(files)}] {path}: {res.num_windows} windows, {res.duration:.1f} s")
    summary = TagSummary(total, failures, time.perf_counter() - t0)
    report(str(summary))
    return summary


def _write_files(
    result: TagResult,
    path: Path,
    stems: set[str],
    taggram_dir: str | os.PathLike | None,
    embeddings_dir: str | os.PathLike | None,
) -> dict[str, Path]:
    """The per-window files asked for, under a stem unique among ``stems``."""
    files: dict[str, Path] = {}
    if taggram_dir is None and embeddings_dir is None:
        return files
    stem = output_stem(path, stems)
    if taggram_dir is not None:
        files["taggram"] = write_taggram(result, taggram_dir, stem)[0]
    if embeddings_dir is not None:
        files["embeddings"] = write_embeddings(result, embeddings_dir, stem)
    return files
