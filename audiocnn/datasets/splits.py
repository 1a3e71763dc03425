"""Seeded, stratified train/valid/test assignment for datasets without an official split."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import Sequence


def stratified_split(
    items: Sequence[tuple[str, str]],
    *,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> dict[str, str]:
    """Assign ``train/valid/test`` per stratum ``key``, reproducibly for a given seed.

    Each stratum is sorted, shuffled with a generator seeded by (seed, key) and cut by
    ``fractions``; strata of 3+ items get at least one valid and one test item, so small
    classes still appear in every split.
    """
    groups: dict[str, list[str]] = defaultdict(list)
    for item_id, key in items:
        groups[key].append(item_id)
    out: dict[str, str] = {}
    for key in sorted(groups):
        ids = sorted(groups[key])
        random.Random(f"{seed}:{key}").shuffle(ids)
        n = len(ids)
        n_valid = int(round(n * fractions[1]))
        n_test = int(round(n * fractions[2]))
        if n >= 3:
            n_valid = max(1, n_valid)
            n_test = max(1, n_test)
        n_valid = min(n_valid, n)
        n_test = min(n_test, n - n_valid)
        for i, item_id in enumerate(ids):
            if i < n_test:
                out[item_id] = "test"
            elif i < n_test + n_valid:
                out[item_id] = "valid"
            else:
                out[item_id] = "train"
    return out


def stratum_keys(labels_by_id: dict[str, list[str]]) -> list[tuple[str, str]]:
    """One stratum per clip: its rarest label (multi-label), or its only label."""
    counts = Counter(lab for labs in labels_by_id.values() for lab in labs)
    items = []
    for cid, labs in labels_by_id.items():
        key = min(labs, key=lambda lab: (counts[lab], lab)) if labs else ""
        items.append((cid, key))
    return items


def proportional_subset(items: Sequence[tuple[str, str, str]], n: int) -> list[str]:
    """At most ``n`` of ``items`` (id, split, stratum), every split keeping its share.

    Each split gets ``n`` times its fraction (largest remainders first, and at least one
    clip while ``n`` allows); within a split the strata (labels) take turns, in id order,
    so a small part of a dataset still holds every label. Deterministic.
    """
    by_split: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for item_id, split, key in items:
        by_split[split].append((item_id, key))
    total = sum(len(v) for v in by_split.values())
    if n >= total:
        return sorted(i for i, _s, _k in items)
    exact = {s: n * len(v) / total for s, v in by_split.items()}
    quota = {s: int(x) for s, x in exact.items()}
    for s in sorted(by_split, key=lambda s: (-(exact[s] - quota[s]), s)):
        if sum(quota.values()) >= n:
            break
        quota[s] += 1
    for s in sorted(by_split, key=lambda s: len(by_split[s])):
        if quota[s] == 0 and n >= len(by_split):
            donor = max(quota, key=lambda d: quota[d])
            quota[donor] -= 1
            quota[s] = 1
    chosen: list[str] = []
    for s, members in by_split.items():
        strata: dict[str, list[str]] = defaultdict(list)
        for item_id, key in sorted(members):
            strata[key].append(item_id)
        queues = [strata[k] for k in sorted(strata)]
        taken = 0
        depth = 0
        deepest = max(len(q) for q in queues)
        while taken < quota[s] and depth < deepest:
            for q in queues:
                if depth < len(q) and taken < quota[s]:
                    chosen.append(q[depth])
                    taken += 1
            depth += 1
    return sorted(chosen)
