"""``audiocnn tag`` as a library function: expand the paths, load the model once, tag each
file, write its outputs, and sum up; a file that fails is reported and the others go on.

With ``output`` the results go to one resumable results file instead
(:mod:`audiocnn.tagging.library`); with ``jobs > 1`` worker processes decode while the
model runs, on a CPU up to ``jobs`` batches at once (:mod:`audiocnn.tagging.stream`)."""

from __future__ import annotations

import glob
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from audiocnn.audio import AUDIO_EXTENSIONS, find_audio_files, is_audio_path
from audiocnn.constants import DEFAULT_MODEL, Aggregate, Framing
from audiocnn.errors import AudiocnnError, UsageError
from audiocnn.fileio import ensure_writable_dir
from audiocnn.progress import StepBar
from audiocnn.tagging.attention import AttentionTap, attention_tap, check_attention_run, write_attention
from audiocnn.tagging.library import (
    LIBRARY_SUFFIXES,
    LibraryFile,
    RateInfo,
    checkpoint_sha256,
    library_lock,
    make_record,
    plan_library,
)
from audiocnn.tagging.onnx_backend import make_tagger
from audiocnn.tagging.outputs import output_stem, write_embeddings, write_taggram
from audiocnn.tagging.stream import tag_stream
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
    skipped: int = 0  # already in the results file (``output``): not tagged again

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def tagged(self) -> int:
        return self.total - self.failed - self.skipped

    def __str__(self) -> str:
        total, failed = self.total, self.failed
        return (
            f"tagged {self.tagged} of {total} file{'s' if total != 1 else ''} in {self.seconds:.1f} s"
            + (f"; {self.skipped} skipped, already tagged" if self.skipped else "")
            + (f"; {failed} failed" if failed else "")
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
    attention_dir: str | os.PathLike | None = None,
    on_result: Callable[[TagOutcome], None] | None = None,
    report: Callable[[str], None] = log.info,
    started: float | None = None,
    output: str | os.PathLike | None = None,
    jobs: int = 1,
    force: bool = False,
    show_progress: bool = False,
    backend: str = "torch",
) -> TagSummary:
    """Tag every audio file that ``paths`` name (files, folders, globs) with one model.

    ``on_result`` gets each tagged file as soon as it is done (what the CLI prints);
    ``report`` gets progress and one ``error: ...`` line per input that fails, which the
    run then skips. Options are those of :meth:`Tagger.tag_file`; they are checked, and the
    output folders made, before the first file. ``started`` (a ``time.perf_counter()``)
    is when the timings count from (default: now). Raises :class:`UsageError` when no
    argument names an audio file.

    ``output`` (``.jsonl`` or ``.csv``): append one record per file there, durably, and
    skip the files it already holds unless ``force`` (:mod:`audiocnn.tagging.library`).
    ``jobs``: decoding processes, and on a CPU batches run at once, each on its share of
    torch's threads (1: decode here, one file after the other, one batch at a time).
    ``show_progress``: a progress bar on stderr (files/s, audio hours/s, time left)
    instead of one line per file. ``backend``: ``torch``, or ``onnxruntime`` to run the
    network in ONNX Runtime (:mod:`audiocnn.tagging.onnx_backend`). ``attention_dir``: see
    :mod:`audiocnn.tagging.attention`.
    """
    t0 = time.perf_counter() if started is None else started
    _check_run_options(output, jobs, force, attention=(backend, attention_dir))
    if backend == "onnxruntime" and embeddings_dir is not None:
        raise UsageError("embeddings (--embeddings) need the torch backend: leave out --backend onnxruntime")
    for what, folder in (("taggram_dir", taggram_dir), ("embeddings_dir", embeddings_dir)):
        if folder is not None:
            ensure_writable_dir(folder, what)
    files, failures = expand_audio_paths(paths)
    for line in failures:
        report(f"error: {line}")
    if not files:
        raise UsageError("nothing to tag: none of the given paths is an audio file or holds one")
    tagger = make_tagger(backend, model, device=device, batch_size=batch_size, data_dir=data_dir)
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
        f"{time.perf_counter() - t0:.1f} s; {len(files)} file{'s' if len(files) != 1 else ''} to tag"
    )
    run = _Run(tagger, options, jobs, taggram_dir, embeddings_dir, on_result, report, show_progress, failures)
    run.library = output is not None
    total = len(files) + len(failures)
    skipped = 0 if output is None else _tag_library(run, files, LibraryFile(output, tagger.labels), force)
    if output is None:
        _tag_each(run, files, attention_dir)
    summary = TagSummary(total, failures, time.perf_counter() - t0, skipped)
    report(str(summary))
    return summary


def _check_run_options(
    output: str | os.PathLike | None, jobs: int, force: bool, attention: tuple[str, Any] = ("torch", None)
) -> None:
    """The library-run options (and ``attention``: the backend and the attention folder,
    which needs a plain run), checked before the model loads."""
    if int(jobs) < 1:
        raise UsageError(f"jobs (--jobs) must be >= 1, got {jobs}")
    if attention[1] is not None:
        check_attention_run(attention[0], jobs, output, attention[1])
    if output is None:
        if force:
            raise UsageError("force (--force) re-tags files already in a results file: it needs output (--output)")
        return
    if Path(output).is_dir():
        raise UsageError(f"--output {output}: is a folder, expected a results file (.jsonl or .csv)")
    if Path(output).suffix.lower() not in LIBRARY_SUFFIXES:
        raise UsageError(f"--output {output}: the suffix must be .jsonl or .csv (it picks the format)")
    ensure_writable_dir(Path(output).expanduser().absolute().parent, "--output's folder")


@dataclass
class _Run:
    """What the per-file loops share."""

    tagger: Tagger
    options: dict[str, Any]
    jobs: int
    taggram_dir: str | os.PathLike | None
    embeddings_dir: str | os.PathLike | None
    on_result: Callable[[TagOutcome], None] | None
    report: Callable[[str], None]
    show_progress: bool
    failures: list[str]
    stems: set[str] = field(default_factory=set)
    library: bool = False  # a library run: songs share batches even with jobs=1
    attention: tuple[AttentionTap, str | os.PathLike] | None = None  # --attention: (recorder, folder)

    def results(self, files: Sequence[str | os.PathLike]) -> Iterator[tuple[int, Path, TagResult | AudiocnnError]]:
        taggram = self.taggram_dir is not None or self.attention is not None
        want = {"return_taggram": taggram, "return_embeddings": self.embeddings_dir is not None}
        if self.jobs == 1 and not self.library:  # the plain path: one file after the other, as always
            for i, (path, res) in enumerate(self.tagger.tag_files(files, **want, **self.options)):
                yield i, path, res
            return
        yield from tag_stream(self.tagger, files, jobs=self.jobs, **want, **self.options)

    def done(self, path: Path, res: TagResult | AudiocnnError) -> None:
        """Report one file; write its taggram / embeddings / attention and hand it to ``on_result``."""
        # the attention rows recorded while this file was scored (dropped when it failed)
        attention = (self.attention[0].take(), self.attention[1]) if self.attention is not None else None
        if isinstance(res, AudiocnnError):
            self.failures.append(str(res))
            self.report(f"error: {res}")
            return
        files = _write_files(res, path, self.stems, self.taggram_dir, self.embeddings_dir, attention)
        outcome = TagOutcome(path, res, files)
        if self.on_result is not None:
            self.on_result(outcome)


def _tag_each(run: _Run, files: list[Path], attention_dir: str | os.PathLike | None = None) -> None:
    if attention_dir is not None:  # record the attention of every forward pass, per file
        with attention_tap(run.tagger.model) as tap:
            run.attention = (tap, attention_dir)
            _tag_each(run, files)
        return
    for n, (_, path, res) in enumerate(run.results(files), 1):
        run.done(path, res)
        if not isinstance(res, AudiocnnError):
            run.report(f"[{n}/{len(files)}] {path}: {res.num_windows} windows, {res.duration:.1f} s")


def _tag_library(run: _Run, files: list[Path], out: LibraryFile, force: bool) -> int:
    """Tag the files ``out`` does not hold yet, appending a record per file; returns how
    many were skipped."""
    tagger = run.tagger
    model = {"model": tagger.name, "model_sha256": checkpoint_sha256(tagger.path)}
    options = {k: v.value if isinstance(v, Enum) else v for k, v in run.options.items()}
    with library_lock(out):
        plan = plan_library(out, files, model["model_sha256"], options, force)
        if plan.skipped:
            run.report(
                f"skipping {plan.skipped} file{'s' if plan.skipped != 1 else ''} already in {out.path} "
                "(same size, modification time, model and options; --force re-tags them)"
            )
        if plan.retried:
            run.report(f"trying again {plan.retried} file{'s' if plan.retried != 1 else ''} that failed before")
        if plan.repaired:
            run.report(f"{out.path}: dropped {plan.repaired} incomplete or invalid line(s)")
        rate = RateInfo(len(plan.todo))
        out.open()
        try:
            with StepBar(run.show_progress) as bar:
                bar.start("tagging", len(plan.todo))
                for i, path, res in run.results([t.path for t in plan.todo]):
                    ok = not isinstance(res, AudiocnnError)
                    out.append(make_record(plan.todo[i], model, options, res), res if ok else None)
                    run.done(path, res)
                    info = rate.add(res.duration if ok else 0.0)
                    bar.update(1, info)
                    if ok and not run.show_progress:
                        run.report(f"[{rate.done}/{rate.total}] {path}: {res.duration:.1f} s; {info}")
        finally:
            out.close()
    return plan.skipped


def _write_files(
    result: TagResult,
    path: Path,
    stems: set[str],
    taggram_dir: str | os.PathLike | None,
    embeddings_dir: str | os.PathLike | None,
    attention: tuple[Any, str | os.PathLike] | None = None,
) -> dict[str, Path]:
    """The per-window files asked for, under a stem unique among ``stems``
    (``attention``: the file's attention rows and their folder)."""
    files: dict[str, Path] = {}
    if taggram_dir is None and embeddings_dir is None and attention is None:
        return files
    stem = output_stem(path, stems)
    if taggram_dir is not None:
        files["taggram"] = write_taggram(result, taggram_dir, stem)[0]
    if embeddings_dir is not None:
        files["embeddings"] = write_embeddings(result, embeddings_dir, stem)
    if attention is not None:
        files["attention"] = write_attention(result, attention[0], attention[1], stem)[0]
    return files
