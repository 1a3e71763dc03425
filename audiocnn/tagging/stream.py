"""Tag many songs as one stream: decoding in worker processes, windows of several songs in
one batch, results in the order songs finish.

:func:`tag_stream` is :meth:`Tagger.tag_files` for a library: the files are decoded by
:func:`audiocnn.audio_pool.decoded_blocks` (``jobs`` processes, bounded queue), each song
in flight keeps the streaming state of :meth:`Tagger.tag_file` (the mel stream, the
windower, its per-window score rows), and windows from whichever songs are in flight fill
the same batch. A song's result equals ``tag_file``'s for the same options.

On a CPU with ``jobs > 1`` the network runs up to ``jobs`` batches at once in threads,
each on its share of torch's threads (:meth:`Tagger.streams_for`); batches are scored in
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from audiocnn.audio_pool import decoded_blocks
from audiocnn.constants import Aggregate, Framing
from audiocnn.errors import AudiocnnError, AudioDecodeError
from audiocnn.features.frontends import MelStream
from audiocnn.tagging.tagger import Tagger, TagResult, WindowPlan, _EvenChunks, _Windower


@dataclass
class StreamCounters:
    """Peaks of one :func:`tag_stream` run: what bounds its memory."""

    max_songs_in_flight: int = 0
    max_batch: int = 0
    max_songs_per_batch: int = 0


class _Song:
    """One song in flight: :meth:`Tagger._stream`'s state, fed block by block."""

    def __init__(self, index: int, tagger: Tagger, plan: WindowPlan, chunks: int | None) -> None:
        self.index = index
        self.mel = MelStream(tagger.model.frontend, tagger.device) if plan.framing == Framing.song.value else None
        self.windower = _Windower(plan.size, plan.hop) if chunks is None else _EvenChunks(plan.size, int(chunks))
        self.samples = 0
        self.padded = False
        self.rows: list[np.ndarray] = []
        self.embs: list[np.ndarray] = []
        self.pending = 0  # windows in the batch, not scored yet

    def push(self, block: np.ndarray) -> list[np.ndarray]:
        self.samples += block.shape[0]
        return self._windows(block)

    def _windows(self, block: np.ndarray) -> list[np.ndarray]:
        return list(self.windower.push(self.mel.push(block) if self.mel is not None else block))

    def finish(self, min_samples: int) -> list[np.ndarray]:
        """The last windows: zero padding of a song shorter than one window, as tag_file does."""
        out: list[np.ndarray] = []
        if self.samples < min_samples:
            self.padded = True
            out += self._windows(np.zeros(min_samples - self.samples, np.float32))
        if self.mel is not None:
            out += list(self.windower.push(self.mel.finish()))
        return out + list(self.windower.finish())


Scored = tuple[list[Any], np.ndarray, np.ndarray | None]


class _Scorer:
    """Runs the batches, here one after the other or ``streams`` at a time in threads, and
    hands their scores back in the order the batches came in."""

    def __init__(self, run: Callable[[list[np.ndarray]], tuple[np.ndarray, np.ndarray | None]], streams: int) -> None:
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

    def __init__(
        self, tagger: Tagger, plan: WindowPlan, chunks: int | None, want_emb: bool, custom: bool, streams: int
    ) -> None:
        self.tagger, self.plan, self.chunks = tagger, plan, chunks
        from_features = plan.framing == Framing.song.value
        self.scorer = _Scorer(lambda windows: tagger._run(windows, from_features, want_emb, custom), streams)
        self.songs: dict[int, _Song] = {}
        self.done: list[_Song] = []
        self.batch: list[tuple[_Song, np.ndarray]] = []
        self.counters = StreamCounters()

    def song(self, i: int) -> _Song:
        if i not in self.songs:
            self.songs[i] = _Song(i, self.tagger, self.plan, self.chunks)
            self.counters.max_songs_in_flight = max(self.counters.max_songs_in_flight, len(self.songs))
        return self.songs[i]

    def add(self, song: _Song, windows: list[np.ndarray]) -> None:
        for w in windows:
            self.batch.append((song, w))
            song.pending += 1
            if len(self.batch) >= self.tagger.batch_size:
                self.flush()

    def flush(self) -> None:
        if not self.batch:
            return
        c = self.counters
        c.max_batch = max(c.max_batch, len(self.batch))
        c.max_songs_per_batch = max(c.max_songs_per_batch, len({id(s) for s, _ in self.batch}))
        scored = self.scorer.submit([song for song, _ in self.batch], [w for _, w in self.batch])
        self.batch = []
        self._apply(scored)

    def drain(self) -> None:
        self.flush()
        self._apply(self.scorer.drain())

    @staticmethod
    def _apply(scored: list[Scored]) -> None:
        for songs, proba, emb in scored:
            for j, song in enumerate(songs):
                song.rows.append(proba[j : j + 1])
                if emb is not None:
                    song.embs.append(emb[j : j + 1])
                song.pending -= 1

    def block(self, i: int, samples: np.ndarray) -> None:
        self.add(self.song(i), self.song(i).push(samples))

    def error(self, i: int) -> None:
        s = self.songs.pop(i, None)
        self.batch[:] = [(t, w) for t, w in self.batch if t is not s]

    def end(self, i: int) -> None:
        s = self.song(i)
        self.add(s, s.finish(self.plan.min_samples))
        del self.songs[i]
        self.done.append(s)

    def ready(self) -> list[_Song]:
        """Finished songs whose every window is scored (taken out of ``done``)."""
        out = [s for s in self.done if s.pending == 0]
        self.done = [s for s in self.done if s.pending]
        return out


def tag_stream(
    tagger: Tagger,
    paths: Sequence[str | os.PathLike],
    *,
    jobs: int = 1,
    window: float | None = None,
    hop: float | None = None,
    aggregate: str | Aggregate = Aggregate.mean,
    top_k: int | None = None,
    framing: str | Framing = Framing.auto,
    chunks: int | None = None,
    threshold: float | None = None,
    return_taggram: bool = False,
    return_embeddings: bool = False,
    counters: StreamCounters | None = None,
) -> Iterator[tuple[int, Path, TagResult | AudiocnnError]]:
    """``(index into paths, path, result or decode error)`` per file, as files finish.

    Options are those of :meth:`Tagger.tag_file` (checked before the first file);
    ``counters`` receives the run's peaks.
    """
    plan = tagger.check(
        window=window, hop=hop, aggregate=aggregate, top_k=top_k, framing=framing, chunks=chunks, threshold=threshold
    )
    streams = tagger.streams_for(jobs)
    b = _Batcher(tagger, plan, chunks, return_embeddings, window is not None, streams)
    if counters is not None:
        b.counters = counters
    with tagger.threads_per_stream(streams), contextlib.closing(b.scorer):
        yield from _run_stream(tagger, paths, jobs, b, plan, aggregate, top_k, threshold, return_taggram)


def _run_stream(
    tagger: Tagger,
    paths: Sequence[str | os.PathLike],
    jobs: int,
    b: _Batcher,
    plan: WindowPlan,
    aggregate: Any,
    top_k: int | None,
    threshold: float | None,
    return_taggram: bool,
) -> Iterator[tuple[int, Path, TagResult | AudiocnnError]]:
    """:func:`tag_stream`'s loop: blocks in, batches out, each song's result once its
    last window is scored."""

    def finished() -> Iterator[tuple[int, Path, TagResult | AudiocnnError]]:
        for s in b.ready():
            path = paths[s.index]
            try:
                res = _result(tagger, path, plan, s, aggregate, top_k, threshold, return_taggram)
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


def _result(
    tagger: Tagger,
    path: Any,
    plan: WindowPlan,
    song: _Song,
    aggregate: Any,
    top_k: int | None,
    threshold: float | None,
    return_taggram: bool,
) -> TagResult:
    if not song.rows:  # cannot happen for a decodable file: padding guarantees a window
        raise AudioDecodeError(f"{path}: no complete window could be cut from the audio")
    taggram = np.concatenate(song.rows).astype(np.float32)
    embeddings = np.concatenate(song.embs).astype(np.float32) if song.embs else None
    info = {"samples": song.samples, "padded": song.padded}
    return tagger._result(
        path, plan, song.windower.starts, taggram, embeddings, info, aggregate, top_k, return_taggram, threshold
    )
