"""Whether a validation or test split is large enough to trust.

With 3 validation clips, accuracy moves in steps of a third: it reaches 1.0 early and
ties for the rest of the run while the model still improves, and a test score is decided
by one clip. ``prepare`` and ``train`` say so, with the counts per class, instead of
letting a user act on such a score. Works on any clips with ``split`` and ``labels``
(a manifest's), so it sits below the datasets layer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

#: fewer clips of a class than this in a validation or test split, and one clip moves the
#: class's recall by more than 20 points: accuracy ties across epochs and a score is noise
MIN_CLIPS_PER_CLASS = 5
#: classes named in a note (the ones with the fewest clips)
SHOWN_CLASSES = 6


def small_split_notes(
    clips: Iterable[Any],
    labels: Sequence[str],
    splits: Sequence[str] = ("valid", "test"),
    minimum: int = MIN_CLIPS_PER_CLASS,
) -> list[str]:
    """One sentence per split of ``splits`` in which a class of ``labels`` has fewer than
    ``minimum`` clips: how many clips the split has and how many each class has (fewest
    first). The caller adds what to do (its own words for a larger split)."""
    counts: dict[str, Counter] = {s: Counter() for s in splits}
    totals: Counter = Counter()
    for clip in clips:
        if clip.split in counts:
            counts[clip.split].update(clip.labels)
            totals[clip.split] += 1
    notes = []
    for split in splits:
        if not totals[split]:
            continue
        per_class = sorted(((counts[split][label], label) for label in labels), key=lambda t: (t[0], t[1]))
        if per_class[0][0] >= minimum:
            continue
        shown = ", ".join(f"{label} {n}" for n, label in per_class[:SHOWN_CLASSES])
        more = f", ... ({len(per_class) - SHOWN_CLASSES} more)" if len(per_class) > SHOWN_CLASSES else ""
        lo, hi = per_class[0][0], per_class[-1][0]
        notes.append(
            f"the {split} split has {totals[split]} clips, {lo if lo == hi else f'{lo} to {hi}'} per class "
            f"({shown}{more}): too few to trust its scores or to choose the best epoch by them "
            f"(fewer than {minimum} clips of a class: one clip moves its recall by more than 20 points)"
        )
    return notes
