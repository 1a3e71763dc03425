"""One share of a job for each of N processes: ``--shard K/N`` (a job array's task K of N) or
torchrun's ``RANK`` / ``WORLD_SIZE``.

Every process computes the same assignment from the same list of items, whatever order the
list came in: items are sorted by name, then dealt greedily, heaviest first (by size, a proxy
for audio duration), each to the share with the least weight so far. So a process re-run
alone takes exactly the items it had, and the shares weigh about the same. The processes
need not talk to each other: each writes its own part, and the parts are merged once every
one is complete.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from audiocnn.errors import UsageError

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Share ``index`` (from 0) of ``count``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def part_path(self, output: str | os.PathLike) -> Path:
        """This share's part file next to ``output``: ``tags.jsonl`` -> ``tags.part-1-of-3.jsonl``
        (the suffix kept: it picks the format)."""
        out = Path(output)
        return out.with_name(f"{out.stem}.part-{self.index}-of-{self.count}{out.suffix}")

    def all(self) -> list[Shard]:
        return [Shard(k, self.count) for k in range(self.count)]


def parse_shard(text: str) -> Shard:
    """``"K/N"`` (0 <= K < N) -> :class:`Shard`; anything else raises :class:`UsageError`."""
    k, sep, n = str(text).partition("/")
    if not sep or not k.strip().isdigit() or not n.strip().isdigit():
        raise UsageError(
            f"shard={text!r}: expected K/N, this process's share K (from 0) of N, e.g. 0/4", arguments=("shard",)
        )
    shard = Shard(int(k), int(n))
    if shard.count < 1 or shard.index >= shard.count:
        raise UsageError(f"shard={text!r}: K must be 0..N-1 and N at least 1", arguments=("shard",))
    return shard


def shard_from_env(environ: dict[str, str] | None = None) -> Shard | None:
    """torchrun's ``RANK`` of ``WORLD_SIZE`` when there is more than one process, else None."""
    env = os.environ if environ is None else environ
    size, rank = env.get("WORLD_SIZE", ""), env.get("RANK", "")
    if not size.isdigit() or int(size) <= 1:
        return None
    if not rank.isdigit() or int(rank) >= int(size):
        raise UsageError(f"RANK={rank!r} with WORLD_SIZE={size}: expected 0..{int(size) - 1}")
    return Shard(int(rank), int(size))


def local_rank(environ: dict[str, str] | None = None) -> int | None:
    """torchrun's ``LOCAL_RANK`` (this process's GPU on its node), or None."""
    value = (os.environ if environ is None else environ).get("LOCAL_RANK", "")
    return int(value) if value.isdigit() else None


def assign(items: Sequence[T], count: int, name: Callable[[T], str], weight: Callable[[T], float]) -> list[int]:
    """The share (0..count-1) of each item, in the items' order: sorted by ``name``, heaviest
    first, each to the lightest share so far (ties: the lowest share)."""
    order = sorted(range(len(items)), key=lambda i: name(items[i]))
    order.sort(key=lambda i: -weight(items[i]))  # stable: equal weights stay in name order
    loads = [(0.0, k) for k in range(count)]  # a heap: the lightest share on top
    share = [0] * len(items)
    for i in order:
        load, k = heapq.heappop(loads)
        share[i] = k
        heapq.heappush(loads, (load + max(float(weight(items[i])), 1.0), k))
    return share


def file_weight(path: str | os.PathLike) -> float:
    """A file's size in bytes (0 when it cannot be read): its share of the work."""
    try:
        return float(os.stat(path).st_size)
    except OSError:
        return 0.0
