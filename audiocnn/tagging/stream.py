"""Tag many songs as one stream: decoding in worker processes, windows of several songs in
one batch, results in the order songs finish.

:func:`tag_stream` is :meth:`Tagger.tag_files` for a library: the files are decoded by
:func:`audiocnn.audio_pool.decoded_blocks` (``jobs`` processes, bounded queue), each song
in flight keeps the streaming state of :meth:`Tagger.tag_file` (the mel stream, the
windower, its per-window score rows), and windows from whichever songs are in flight fill
the same batch. A song's result equals ``tag_file``'s for the same options.

Memory is bounded by the number of songs in flight (at most ``jobs``), one block each, the
queue and one batch; only each finished song's small result leaves.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
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
    return_taggram: bool = False,
    return_embeddings: bool = False,
    counters: StreamCounters | None = None,
) -> Iterator[tuple[int, Path, TagResult | AudiocnnError]]:
    """``(index into paths, path, result or decode error)`` per file, as files finish.

    Options are those of :meth:`Tagger.tag_file` (checked before the first file).
    """
    plan = tagger.check(window=window, hop=hop, aggregate=aggregate, top_k=top_k, framing=framing, chunks=chunks)
    counters = counters if counters is not None else StreamCounters()
    from_features = plan.framing == Framing.song.value
    custom = window is not None
    songs: dict[int, _Song] = {}
    batch: list[tuple[_Song, np.ndarray]] = []

    def add(song: _Song, windows: list[np.ndarray]) -> None:
        for w in windows:
            batch.append((song, w))
            if len(batch) >= tagger.batch_size:
                flush()

    def flush() -> None:
        if not batch:
            return
        counters.max_batch = max(counters.max_batch, len(batch))
        proba, emb = tagger._run([w for _, w in batch], from_features, return_embeddings, custom)
        for j, (song, _) in enumerate(batch):
            song.rows.append(proba[j : j + 1])
            if emb is not None:
                song.embs.append(emb[j : j + 1])
        batch.clear()

    def song(i: int) -> _Song:
        if i not in songs:
            songs[i] = _Song(i, tagger, plan, chunks)
            counters.max_songs_in_flight = max(counters.max_songs_in_flight, len(songs))
        return songs[i]

    for kind, i, payload in decoded_blocks(paths, tagger.sample_rate, block_seconds=tagger.block_seconds, jobs=jobs):
        if kind == "block":
            add(song(i), song(i).push(payload))
            continue
        s = songs.pop(i, None) if kind == "error" else song(i)
        if kind == "error":
            batch[:] = [(t, w) for t, w in batch if t is not s]
            yield i, Path(paths[i]), AudioDecodeError(str(payload))
            continue
        add(s, s.finish(plan.min_samples))
        flush()
        del songs[i]
        yield i, Path(paths[i]), _result(tagger, paths[i], plan, s, aggregate, top_k, return_taggram)


def _result(
    tagger: Tagger, path: Any, plan: WindowPlan, song: _Song, aggregate: Any, top_k: int | None, return_taggram: bool
) -> TagResult:
    if not song.rows:  # cannot happen for a decodable file: padding guarantees a window
        raise AudioDecodeError(f"{path}: no complete window could be cut from the audio")
    taggram = np.concatenate(song.rows).astype(np.float32)
    embeddings = np.concatenate(song.embs).astype(np.float32) if song.embs else None
    info = {"samples": song.samples, "padded": song.padded}
    return tagger._result(path, plan, song.windower.starts, taggram, embeddings, info, aggregate, top_k, return_taggram)
