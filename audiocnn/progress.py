"""Progress bars on stderr, one builder for every command (rich, transient).

``progress_bar`` counts items or bytes and yields ``advance(n)``; ``StepBar`` is the
training loop's bar, restarted per phase (epoch, validation) with a free-text field for
the running loss. Disabled bars cost nothing, so library code can always ask for one.
``human_size`` writes a byte count the way bars and log lines show it.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator


def human_size(n: float) -> str:
    """``n`` bytes as people read them: ``512 B``, ``1.5 KiB`` ... ``2.0 TiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _progress(*columns: Any, transient: bool = True):
    from rich.console import Console  # deferred: rich is only needed once a bar is shown
    from rich.progress import BarColumn, Progress, TextColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        *columns,
        console=Console(file=sys.stderr, soft_wrap=True),
        transient=transient,
    )


@contextmanager
def progress_bar(
    description: str, total: int | None, *, enabled: bool = True, unit: str = "items"
) -> Iterator[Callable[[int], None]]:
    """A bar of ``total`` items (``unit="items"``) or bytes (``unit="bytes"``) with the
    time remaining; yields ``advance(n)``."""
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import (  # deferred: rich is only needed once a bar is shown
        DownloadColumn,
        MofNCompleteColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    middle = (DownloadColumn(), TransferSpeedColumn()) if unit == "bytes" else (MofNCompleteColumn(),)
    with _progress(*middle, TimeRemainingColumn()) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


class StepBar:
    """A bar restarted per phase, with running info (``update(1, "loss 0.31")``)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar = None
        self._task = None

    def __enter__(self) -> StepBar:
        if self.enabled:
            from rich.progress import MofNCompleteColumn, TextColumn, TimeElapsedColumn  # deferred: as above

            self._bar = _progress(MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[info]}"))
            self._bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def start(self, description: str, total: int) -> None:
        if self._bar is not None:
            if self._task is not None:
                self._bar.remove_task(self._task)
            self._task = self._bar.add_task(description, total=total, info="")

    def update(self, advance: int = 1, info: str = "") -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, advance=advance, info=info)
