"""``audiocnn tag`` as a library function: expand the paths, load the model once, tag each
file, write its outputs, and sum up; a file that fails is reported and the others go on.

With ``output`` the results go to one resumable results file instead
(:mod:`audiocnn.tagging.results`); with ``jobs > 1`` worker processes decode while the
model runs, on a CPU up to ``jobs`` batches at once (:mod:`audiocnn.tagging.stream`)."""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audiocnn.audio import AUDIO_EXTENSIONS, find_audio_files, is_audio_path, not_regular_problem
from audiocnn.checkpoint_file import checkpoint_sha256, read_metadata
from audiocnn.constants import DEFAULT_MODEL
from audiocnn.errors import AudiocnnError, UsageError
from audiocnn.fileio import ensure_writable_dir
from audiocnn.pretrained import resolve_model
from audiocnn.progress import StepBar
from audiocnn.shards import Shard
from audiocnn.tagging.backends import check_arrays, check_backend
from audiocnn.tagging.options import TagOptions, tag_options
from audiocnn.tagging.outputs import PER_WINDOW_WRITERS, output_stem
from audiocnn.tagging.parts import merge_when_complete, merged_done, shard_device, share_of
from audiocnn.tagging.results import (
    RESULTS_SUFFIXES,
    RateInfo,
    ResultsFile,
    ResultsPlan,
    check_results_file,
    make_record,
    plan_results,
    results_lock,
)
from audiocnn.tagging.stream import tag_stream
from audiocnn.tagging.tagger import Tagger, TagResult, shown_name
from audiocnn.workers import usable_cpus

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
        elif p.exists():  # a FIFO, a device, a socket: reading it would block or never end
            problems.append(f"{p}: {not_regular_problem(p.stat().st_mode)}")
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
    """One tagged file: its result and the per-window files written for it, by kind
    (``taggram``, ``embeddings``, ``attention``: the ``.npy`` of each)."""

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
    options: TagOptions | None = None,
    *,
    model: str | os.PathLike = DEFAULT_MODEL,
    cache_dir: str | os.PathLike | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    backend: str = "auto",
    outputs: Mapping[str, str | os.PathLike] | None = None,
    output: str | os.PathLike | None = None,
    force: bool = False,
    jobs: int = 1,
    on_result: Callable[[TagOutcome], None] | None = None,
    report: Callable[[str], None] = log.info,
    started: float | None = None,
    show_progress: bool = False,
    shard: Shard | None = None,
    **fields: Any,
) -> TagSummary:
    """Tag every audio file that ``paths`` name (files, folders, globs) with one model.

    ``options`` (or :class:`TagOptions` fields as keywords) say how each song is tagged;
    they are planned for the model, and the output folders made, before the first file.
    ``outputs`` maps a kind of per-window file (``taggram``, ``embeddings``, ``attention``: see
    :data:`audiocnn.tagging.outputs.PER_WINDOW_WRITERS`) to the folder to write it in.
    ``on_result`` gets each tagged file as soon as it is done (what the CLI prints);
    ``report`` gets progress and one ``error: ...`` line per input that fails, which the
    run then skips. ``started`` (a ``time.perf_counter()``) is when the timings count from
    (default: now). Raises :class:`UsageError` when no argument names an audio file.

    ``output`` (``.jsonl`` or ``.csv``): append one record per file there, durably, and
    skip the files it already holds unless ``force`` (:mod:`audiocnn.tagging.results`).
    ``jobs``: decoding processes, and on a CPU batches run at once, each on its share of
    the threads (1: decode here, one file after the other, one batch at a time).
    ``show_progress``: a progress bar on stderr (files/s, audio hours/s, time left)
    instead of one line per file. ``model``, ``cache_dir``, ``device``, ``batch_size`` and
    ``backend`` are those of :class:`Tagger`. ``shard``: tag this process's share into its
    part file next to ``output``, merged when every share is done (:mod:`audiocnn.tagging.parts`).
    """
    t0 = time.perf_counter() if started is None else started
    outputs = dict(outputs or {})
    options = tag_options(options, **fields, **{kind: True for kind in _checked_outputs(outputs)})
    _check_run_options(output, jobs, force, shard)
    backend = _backend_for(backend, options)  # before the model loads (and an ONNX export)
    for folder in outputs.values():
        ensure_writable_dir(folder)
    files, failures = expand_audio_paths(paths)
    for line in failures:
        report(f"error: {line}")
    if not files:
        raise UsageError("nothing to tag: none of the given paths is an audio file or holds one")
    jobs = _usable_jobs(int(jobs), report)
    everything, files, into, merged = files, *_share(files, shard, output, report)
    total = len(files) + len(failures)
    with contextlib.ExitStack() as held:
        library = None
        if output is not None:  # another run's lock, or a file audiocnn did not write: before the model loads
            held.enter_context(results_lock(into))
            check_results_file(into)
            library = _plan_library(into, files, model, cache_dir, options, force, report, merged)
        if library is None or library.plan.todo:  # a library run with every file done never loads the model
            device = device if shard is None else shard_device(device)
            tagger = Tagger(model, device=device, batch_size=batch_size, cache_dir=cache_dir, backend=backend)
            tagger.plan(options)
            todo = len(files) if library is None else len(library.plan.todo)
            report(
                f"model {tagger.name} ({tagger.task}, {len(tagger.labels)} labels) loaded in "
                f"{time.perf_counter() - t0:.1f} s; {todo} file{'s' if todo != 1 else ''} to tag"
            )
            run = _Run(tagger, options, jobs, outputs, on_result, report, show_progress, failures)
            run.library = library is not None
            if library is None:
                _tag_each(run, files)
            else:
                _tag_library(run, library)
    summary = TagSummary(total, failures, time.perf_counter() - t0, 0 if library is None else library.plan.skipped)
    report(str(summary))
    _merge_shares(library, shard, merged, everything, report)
    return summary


def _backend_for(backend: str, options: TagOptions) -> str:
    """The backend to load, checked against the options: ``auto`` is torch when they ask
    for per-window arrays (which only torch gives) or a window of another length than the
    model's own (which an export with a fixed time axis cannot take)."""
    check_backend(backend)
    check_arrays(backend, options)
    return "torch" if backend == "auto" and (options.arrays() or options.window is not None) else backend


def _merge_shares(
    library: _Library | None, shard: Shard | None, merged: Path | None, files: list[Path], report: Callable[[str], None]
) -> None:
    """After a share of a library run: merge the parts if every share is done."""
    if library is not None and shard is not None and merged is not None:
        merge_when_complete(merged, shard, files, library.out.labels, library.key, report)


def _share(
    files: list[Path], shard: Shard | None, output: str | os.PathLike | None, report: Callable[[str], None]
) -> tuple[list[Path], str | os.PathLike | None, Path | None]:
    """The files this process tags, the results file it writes them to, and the one its
    part is merged into (None: no shard)."""
    if shard is None:
        return files, output, None
    mine, part = share_of(files, shard), shard.part_path(output)
    report(f"share {shard}: {len(mine)} of {len(files)} files, into {part}")
    return mine, part, Path(output)


def _checked_outputs(outputs: Mapping[str, Any]) -> list[str]:
    unknown = sorted(set(outputs) - set(PER_WINDOW_WRITERS))
    if unknown:
        raise UsageError(
            f"outputs: no per-window file of kind {unknown[0]!r}; the kinds are {', '.join(PER_WINDOW_WRITERS)}",
            arguments=("outputs",),
        )
    return list(outputs)


def _check_run_options(output: str | os.PathLike | None, jobs: int, force: bool, shard: Shard | None) -> None:
    """The library-run options, checked before the model loads."""
    if int(jobs) < 1:
        raise UsageError(f"jobs must be >= 1, got {jobs}", arguments=("jobs",))
    if shard is not None and output is None:
        raise UsageError(
            f"shard {shard}: each process writes its share to a part of a results file, so it needs output",
            arguments=("shard", "output"),
        )
    if output is None:
        if force:
            raise UsageError(
                "force=True re-tags files already in a results file, so it needs output: pass output=FILE.jsonl",
                arguments=("force", "output"),
            )
        return
    if Path(output).is_dir():
        raise UsageError(f"{output}: is a folder, expected a results file (.jsonl or .csv)")
    if Path(output).suffix.lower() not in RESULTS_SUFFIXES:
        raise UsageError(f"{output}: the suffix of a results file must be .jsonl or .csv (it picks the format)")
    ensure_writable_dir(Path(output).expanduser().absolute().parent)


def usable_jobs(jobs: int) -> int:
    """``jobs`` capped at the CPU cores this process may use (2 at least, so that
    ``jobs=2`` decodes in a worker anywhere): each decoder is a process with its own memory,
    and more of them than cores only take turns (64 on 2 cores: 2.3 GB and 6x slower than 1)."""
    return min(int(jobs), max(2, usable_cpus()))


def _usable_jobs(jobs: int, report: Callable[[str], None]) -> int:
    cap = usable_jobs(jobs)
    if cap < jobs:
        report(f"jobs={jobs}: using {cap}, the CPU cores this process may use (more decoders only take turns)")
    return cap


@dataclass
class _Run:
    """What the per-file loops share."""

    tagger: Tagger
    options: TagOptions
    jobs: int
    outputs: dict[str, str | os.PathLike]
    on_result: Callable[[TagOutcome], None] | None
    report: Callable[[str], None]
    show_progress: bool
    failures: list[str]
    stems: set[str] = field(default_factory=set)
    library: bool = False  # a library run: songs share batches even with jobs=1

    def results(self, files: Sequence[str | os.PathLike]) -> Iterator[tuple[int, Path, TagResult | AudiocnnError]]:
        if self.jobs == 1 and not self.library:  # the plain path: one file after the other, as always
            for i, (path, res) in enumerate(self.tagger.tag_files(files, self.options)):
                yield i, path, res
            return
        yield from tag_stream(self.tagger, files, options=self.options, jobs=self.jobs)

    def done(self, path: Path, res: TagResult | AudiocnnError) -> None:
        """Report one file; write its per-window files and hand it to ``on_result``."""
        if isinstance(res, AudiocnnError):
            self.failures.append(str(res))
            self.report(f"error: {res}")
            return
        outcome = TagOutcome(path, res, _write_files(res, path, self.stems, self.outputs))
        if self.on_result is not None:
            self.on_result(outcome)


def _tag_each(run: _Run, files: list[Path]) -> None:
    for n, (_, path, res) in enumerate(run.results(files), 1):
        run.done(path, res)
        if not isinstance(res, AudiocnnError):
            windows = f"{res.num_windows} window{'s' if res.num_windows != 1 else ''}"
            run.report(f"[{n}/{len(files)}] {path}: {windows}, {res.duration:.1f} s")


@dataclass
class _Library:
    """A library run's results file, the model's identity its records hold, and what is
    left to tag."""

    out: ResultsFile
    model: dict[str, str]  # {"model": shown name, "model_sha256": the checkpoint's digest}
    options: dict[str, Any]
    plan: ResultsPlan

    @property
    def key(self) -> tuple[str, dict[str, Any]]:
        """What a record must match to count as done: the checkpoint's digest and the options."""
        return self.model["model_sha256"], self.options


def _plan_library(
    output: str | os.PathLike,
    files: list[Path],
    model: str | os.PathLike,
    cache_dir: str | os.PathLike | None,
    options: TagOptions,
    force: bool,
    report: Callable[[str], None],
    merged: Path | None = None,
) -> _Library:
    """Read the results file (its lock is held by the caller) and decide what to tag. The
    model's identity (checkpoint digest, name, labels) comes from its file, without
    building the network, so that a run with nothing left to tag never loads it. ``merged``:
    the output the part file ``output`` is merged into, whose records count as done too."""
    path = resolve_model(model, cache_dir=cache_dir)
    ident = {"model": shown_name(model, path), "model_sha256": checkpoint_sha256(path)}
    out = ResultsFile(output, [str(x) for x in read_metadata(path).get("labels") or []])
    record = options.record()
    before = 0
    if merged is not None and not force:
        files, before = merged_done(files, merged, out.labels, ident["model_sha256"], record)
    plan = plan_results(out, files, ident["model_sha256"], record, force)
    plan.skipped += before
    if plan.skipped:
        report(
            f"skipping {plan.skipped} file{'s' if plan.skipped != 1 else ''} already in {out.path} "
            "(same size, modification time, model and options)"
        )
    if plan.retried:
        report(f"trying again {plan.retried} file{'s' if plan.retried != 1 else ''} that failed before")
    if plan.repaired:
        report(f"{out.path}: dropped {plan.repaired} incomplete or invalid line(s)")
    return _Library(out, ident, record, plan)


def _tag_library(run: _Run, library: _Library) -> None:
    """Tag the files the plan left, appending a record per file."""
    out, model, options, plan = library.out, library.model, library.options, library.plan
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


def _write_files(
    result: TagResult, path: Path, stems: set[str], outputs: Mapping[str, str | os.PathLike]
) -> dict[str, Path]:
    """The per-window files asked for (``outputs``: kind -> folder), under a stem unique
    among ``stems``."""
    if not outputs:
        return {}
    stem = output_stem(path, stems, list(outputs.values()))
    return {kind: PER_WINDOW_WRITERS[kind](result, folder, stem) for kind, folder in outputs.items()}
