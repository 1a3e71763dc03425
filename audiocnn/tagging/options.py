"""The options a user sets for tagging a song: one frozen dataclass, checked where it is made.

:class:`TagOptions` holds every choice that changes how a song is scored or what a result
carries (window, hop, aggregate, framing, chunks, threshold, top_k, the per-window arrays
wanted). Its checks need no model; the ones that do (the longest window a model takes,
whether it can frame a whole song) are made once by :meth:`audiocnn.tagging.Tagger.plan`.
A results file (``tag --output``) records the options marked ``record`` in their field's
metadata (all but the per-window arrays wanted) and resumes only what they match.

Adding an option is a field here (with its check in ``__post_init__``), its flag in
``audiocnn.cli.tag`` and the code that uses it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from audiocnn.constants import Aggregate, Framing
from audiocnn.errors import UsageError

#: The longest window (``window``), in multiples of the model's input: memory and time
#: per window grow with its length, and a song shorter than the window is zero-padded to
#: it (a 30000 s window padded a 3 s song to 8 hours and took 24 GB).
MAX_WINDOW_FACTOR = 10
#: The most windows ``chunks`` spreads over a song; the papers use 16. Each is one window
#: through the network, so a million chunks per song ran for minutes.
MAX_CHUNKS = 256

#: The per-window arrays the network gives beside the scores, by the field asking for them.
NETWORK_ARRAYS = ("embeddings", "attention")

_OUTPUT_ONLY = {"record": False}  # what a result carries, not how it is scored


class Tail(str, Enum):
    """What becomes of the audio after the last full window of consecutive windows."""

    end = "end"  # one more window ends at the end of the audio, overlapping the one before
    drop = "drop"  # not scored (musicnn's way)


@dataclass(frozen=True)
class TagOptions:
    """How to tag a song (every field checked when the options are made).

    ``window``/``hop`` in seconds (default: the model's native input, no overlap);
    ``aggregate`` combines the per-window scores (mean or max); ``framing`` picks how a
    song is cut (:class:`audiocnn.constants.Framing`); ``chunks=N`` scores N windows spread
    evenly over the song instead (the papers' protocol); ``threshold`` decides every tag of
    a multi-label model at that score (default: the checkpoint's per-tag thresholds);
    ``top_k`` limits a result's ``tags``; ``taggram``/``embeddings``/``attention`` keep the
    per-window scores / penultimate features / attention over time steps (a self-attention
    model such as ``cnnsa``; it keeps the taggram too) in the result. ``tail``: with consecutive windows, every
    second counts (``"end"``: the last window ends at the end of the audio, overlapping the
    one before) or a tail shorter than a window is not scored (``"drop"``, as musicnn does).
    """

    window: float | None = None
    hop: float | None = None
    aggregate: str = Aggregate.mean.value
    top_k: int | None = None
    framing: str = Framing.auto.value
    chunks: int | None = None
    threshold: float | None = None
    tail: str = Tail.end.value
    taggram: bool = field(default=False, metadata=_OUTPUT_ONLY)
    embeddings: bool = field(default=False, metadata=_OUTPUT_ONLY)
    attention: bool = field(default=False, metadata=_OUTPUT_ONLY)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalised once, here
        set_(self, "aggregate", _choice(Aggregate, self.aggregate, "aggregate"))
        set_(self, "framing", _choice(Framing, self.framing, "framing"))
        set_(self, "tail", _choice(Tail, self.tail, "tail"))
        if self.attention:  # its image is drawn under the taggram, on the same time axis
            set_(self, "taggram", True)
        for name in ("window", "hop"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise UsageError(f"{name} must be a positive number of seconds, got {value}", arguments=(name,))
        t = self.threshold
        if t is not None and not (isinstance(t, (int, float)) and 0.0 <= t <= 1.0):
            raise UsageError(f"threshold must be a number in [0, 1], got {t}", arguments=("threshold",))
        if self.top_k is not None and int(self.top_k) < 1:
            raise UsageError(f"top_k must be >= 1, got {self.top_k}", arguments=("top_k",))
        self._check_chunks()

    def _check_chunks(self) -> None:
        if self.chunks is None:
            return
        if not 1 <= int(self.chunks) <= MAX_CHUNKS:
            raise UsageError(
                f"chunks must be between 1 and {MAX_CHUNKS}, got {self.chunks}: each chunk is one window through "
                f"the network, so a song's chunks must be at most {MAX_CHUNKS} (the papers use 16)",
                arguments=("chunks",),
            )
        if self.hop is not None:
            raise UsageError(
                f"chunks={self.chunks} cannot be combined with hop={self.hop:g}: "
                "chunks are spread evenly over each file",
                arguments=("chunks", "hop"),
            )

    def replace(self, **changes: Any) -> TagOptions:
        """These options with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)

    def arrays(self) -> tuple[str, ...]:
        """The per-window arrays of :data:`NETWORK_ARRAYS` these options ask for."""
        return tuple(kind for kind in NETWORK_ARRAYS if getattr(self, kind))

    def record(self) -> dict[str, Any]:
        """The options a results-file record holds: every field that changes the scores."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("record", True)}


def tag_options(options: TagOptions | None = None, **fields: Any) -> TagOptions:
    """``options`` with ``fields`` changed, or new options of ``fields``: what the tagging
    functions take (``tag_file(path, top_k=5)`` or ``tag_file(path, TagOptions(...))``)."""
    if options is None:
        return TagOptions(**fields)
    return options.replace(**fields) if fields else options


def _choice(kind: type[Enum], value: Any, name: str) -> str:
    """``value`` as the plain string of one of ``kind``'s members; a UsageError naming
    ``name`` and the valid values otherwise."""
    try:
        return kind(value).value
    except ValueError:
        valid = ", ".join(m.value for m in kind)
        raise UsageError(f"{name} must be one of {valid}, got {value!r}", arguments=(name,)) from None
