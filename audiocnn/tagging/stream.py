"""Tag songs as one stream: the one way a song is scored, alone or in a library.

:func:`tag_stream` decodes the files with :func:`audiocnn.audio_pool.decoded_blocks`
(``jobs=1``: here, one after the other; ``jobs > 1``: that many processes, bounded
queue); each song in flight is a :class:`audiocnn.tagging.song.Song`, and windows from
whichever songs are in flight fill the same batch. :meth:`Tagger.tag_file` is a stream of
one song.

On a CPU with ``jobs > 1`` the network runs up to ``jobs`` batches at once in threads,
each on its share of the CPU threads (:meth:`Tagger.streams_for`); batches are scored in
the order they were cut, so every song's window rows stay in order.

Memory is bounded by the number of songs in flight (at most ``jobs``), one block each, the
queue and ``streams + 1`` batches; only each finished song's small result leaves.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from audiocnn.audio_pool import decoded_blocks
from audiocnn.errors import AudiocnnError, AudioDecodeError
from audiocnn.tagging.options import TagOptions, tag_options
from audiocnn.tagging.song import Song, StreamStats, TagResult, WindowPlan

Scored = tuple[list[Any], np.ndarray, dict[str, np.ndarray]]


class _Scorer:
    """Runs the batches, here one after the other or ``streams`` at a time in threads, and
    hands their scores back in the order the batches came in."""

    def __init__(self, run: Callable[[list[np.ndarray]], tuple[np.ndarray, dict]], streams: int) -> None:
        self.run = run
        self.streams = streams
        self.pool = ThreadPoolExecutor(streams, thread_name_prefix="audiocnn-network") if streams > 1 else None
        self.flying: deque[tuple[list[Any], Future]] = deque()

    def submit(self, keys: list[Any], windows: list[np.ndarray]) -> list[Scored]:
        """Score a batch; returns the batches finished by now, oldest first."""
        if self.pool is None:
            return [(keys, *self.run(windows))]
        self.flying.append((keys, self.pool.submit(self.run, windows)))
        done = []
        # one batch more than the threads: the next one is ready when a thread frees up
        while self.flying and (self.flying[0][1].done() or len(self.flying) > self.streams):
            done.append(self._take())
        return done

    def drain(self) -> list[Scored]:
        return [self._take() for _ in range(len(self.flying))]

    def _take(self) -> Scored:
        keys, future = self.flying.popleft()
        return (keys, *future.result())

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


class _Batcher:
    """The songs in flight and the batch their windows share.

    A song whose last block has arrived waits (in ``done``) until its last windows have
    been scored, so windows of the next songs can fill the same batch; at most
    ``batch_size`` songs wait, each holding at least one window of the batch.
    """

    def __init__(self, tagger: Any, plan: WindowPlan, options: TagOptions, streams: int, stats: StreamStats) -> None:
        self.tagger, self.plan, self.options = tagger, plan, options
        from_features, custom = plan.framing == "song", options.window is not None
        score = tagger.score
        arrays = options.arrays()
        self.scorer = _Scorer(lambda windows: score(windows, from_features, arrays, custom), streams)
        self.songs: dict[int, Song] = {}
        self.done: list[Song] = []
        self.batch: list[tuple[Song, np.ndarray]] = []
        self.stats = stats

    def song(self, i: int) -> Song:
        if i not in self.songs:
            t = self.tagger
            self.songs[i] = Song(i, self.plan, self.options, t.backend.mel_stream)
            self.stats.max_songs_in_flight = max(self.stats.max_songs_in_flight, len(self.songs))
        return self.songs[i]

    def add(self, song: Song, windows: list[np.ndarray]) -> None:
        for w in windows:
            self.batch.append((song, w))
            song.pending += 1
            if len(self.batch) >= self.tagger.batch_size:
                self.flush()

    def flush(self) -> None:
        if not self.batch:
            return
        s = self.stats
        s.max_batch = max(s.max_batch, len(self.batch))
        s.max_songs_per_batch = max(s.max_songs_per_batch, len({id(song) for song, _ in self.batch}))
        scored = self.scorer.submit([song for song, _ in self.batch], [w for _, w in self.batch])
        self.batch = []
        self._apply(scored)

    def drain(self) -> None:
        self.flush()
        self._apply(self.scorer.drain())

    @staticmethod
    def _apply(scored: list[Scored]) -> None:
        for songs, proba, arrays in scored:
            for j, song in enumerate(songs):
                song.scored(proba[j : j + 1], {kind: rows[j : j + 1] for kind, rows in arrays.items()})

    def block(self, i: int, samples: np.ndarray) -> None:
        s = self.stats
        s.blocks += 1
        s.max_block_samples = max(s.max_block_samples, samples.shape[0])
        self.add(self.song(i), self.song(i).push(samples))

    def error(self, i: int) -> None:
        s = self.songs.pop(i, None)
        self.batch[:] = [(t, w) for t, w in self.batch if t is not s]

    def end(self, i: int) -> None:
        s = self.song(i)
        self.add(s, s.finish())
        self.stats.max_buffered = max(self.stats.max_buffered, s.peak)
        del self.songs[i]
        self.done.append(s)

    def ready(self) -> list[Song]:
        """Finished songs whose every window is scored (taken out of ``done``)."""
        out = [s for s in self.done if s.pending == 0]
        self.done = [s for s in self.done if s.pending]
        return out


def tag_stream(
    tagger: Any,
    paths: Sequence[str | os.PathLike],
    options: TagOptions | None = None,
    *,
    jobs: int = 1,
    stats: StreamStats | None = None,
    **fields: Any,
) -> Iterator[tuple[int, Path, TagResult | AudiocnnError]]:
    """``(index into paths, path, result or decode error)`` per file of ``paths``, as files
    finish, tagged by ``tagger`` (a :class:`audiocnn.tagging.Tagger`).

    ``options``, or :class:`TagOptions` made of ``fields``, are planned for the model before
    the first file; ``stats`` (also ``tagger.stats``) receives the run's peaks.
    """
    options = tag_options(options, **fields)
    plan = tagger.plan(options)
    streams = tagger.streams_for(jobs)
    tagger.stats = stats = StreamStats() if stats is None else stats
    b = _Batcher(tagger, plan, options, streams, stats)
    with tagger.backend.threads_per_stream(streams), contextlib.closing(b.scorer):
        yield from _run_stream(tagger, paths, jobs, b, options)


def _run_stream(
    tagger: Any, paths: Sequence[str | os.PathLike], jobs: int, b: _Batcher, options: TagOptions
) -> Iterator[tuple[int, Path, TagResult | AudiocnnError]]:
    """:func:`tag_stream`'s loop: blocks in, batches out, each song's result once its
    last window is scored."""

    def finished() -> Iterator[tuple[int, Path, TagResult | AudiocnnError]]:
        for s in b.ready():
            path = paths[s.index]
            try:
                res = tagger.result(path, s, options)
            except AudioDecodeError as exc:  # e.g. scores that are not finite: this file only
                res = exc
            yield s.index, Path(path), res

    for kind, i, payload in decoded_blocks(paths, tagger.sample_rate, block_seconds=tagger.block_seconds, jobs=jobs):
        if kind == "block":
            b.block(i, payload)
        elif kind == "error":
            b.error(i)
            yield i, Path(paths[i]), AudioDecodeError(str(payload))
        else:
            b.end(i)
        yield from finished()
    b.drain()
    yield from finished()
