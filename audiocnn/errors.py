"""Exception hierarchy. The CLI prints any ``AudiocnnError`` as one line and exits non-zero.

Messages name the path or value at fault, what was expected and, where there is one, the
next command to run (``hint``).
"""

from __future__ import annotations

from typing import Any


class AudiocnnError(Exception):
    """Base class of every error audiocnn reports to users."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None, arguments: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        #: the function arguments the message names (see :class:`UsageError`)
        self.arguments = tuple(arguments)

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


def next_call(command: str, *values: Any, **arguments: Any) -> str:
    """A command for a message to suggest, written as a Python call of the step by its
    arguments: ``next_call("prepare", "gtzan", force=True)`` is ``prepare('gtzan', force=True)``.
    Quoted in backticks in a message or hint, a front-end shows it in its own terms (the CLI
    as ``audiocnn prepare gtzan --force``, see :func:`audiocnn.cli.common.commands_in`);
    a list value is an argument given once per item."""
    return f"{command}({', '.join([*map(repr, values), *(f'{k}={v!r}' for k, v in arguments.items())])})"


class NotAvailableError(AudiocnnError):
    """A capability that this build of audiocnn does not provide (yet)."""

    exit_code = 2


class UsageError(AudiocnnError):
    """A bad argument value or combination of arguments.

    The message speaks of the function's arguments, never of a front-end's words for them:
    ``arguments`` lists the ones it names, each written either ``name=value`` (Python's
    keyword form) or as the bare name that opens the message (``"top_k must be >= 1"``).
    A front-end shows them in its own terms: the CLI as flags (``--top-k``), see
    :func:`audiocnn.cli.common.flags`. Any other :class:`AudiocnnError` may name its
    arguments the same way (a config override, a run folder to resume).
    """

    exit_code = 2


class AudioDecodeError(AudiocnnError):
    """An audio file is missing, empty, truncated or not audio."""


class ConfigError(AudiocnnError):
    """A configuration file or ``--set`` override is invalid."""


class DatasetError(AudiocnnError):
    """A dataset is unknown, not prepared, or its files are inconsistent."""


class DownloadError(AudiocnnError):
    """A remote file could not be fetched."""


class ChecksumError(DownloadError):
    """A downloaded file does not have the published digest."""


class UnsafeArchiveError(DatasetError):
    """An archive member would land outside the extraction folder."""


class FeatureError(AudiocnnError):
    """The feature store is missing, inconsistent, or extraction failed."""


class ModelError(AudiocnnError):
    """Unknown model name, bad model arguments, or bad model input."""


class CheckpointError(AudiocnnError):
    """A checkpoint is missing, corrupt or not an audiocnn checkpoint."""


class DeviceError(AudiocnnError):
    """The requested compute device is not available."""


class TrainingError(AudiocnnError):
    """Training cannot go on (e.g. the loss became NaN or infinite)."""
