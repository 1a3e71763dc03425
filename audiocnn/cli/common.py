"""State and printing helpers shared by the CLI command modules.

Results go to stdout (``out``); logs, warnings and progress bars to stderr (``err``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from rich.console import Console

from audiocnn.constants import DEFAULT_DATA_DIR, default_data_dir
from audiocnn.errors import UsageError
from audiocnn.fileio import FileWriteError, ensure_writable_dir


class TableOrJson(str, Enum):
    """``--format`` of the commands that print a table for people or JSON for programs."""

    table = "table"
    json = "json"


class Split(str, Enum):
    train = "train"
    valid = "valid"
    test = "test"


@dataclass
class State:
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    verbose: bool = False


state = State()


def out_console() -> Console:
    return Console(file=sys.stdout, soft_wrap=True)


def err_console() -> Console:
    return Console(file=sys.stderr, soft_wrap=True)


def resolve_data_dir(value: str | None) -> Path:
    return Path(value) if value else default_data_dir()


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s",
        stream=sys.stderr,
        force=True,
    )


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: object) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\x1b``...): a file name with
    a newline must not split a table row or a one-line error, nor one with an escape
    sequence reprogram the terminal. The bytes of a file name that is not UTF-8 show as
    ``\\xff`` (they are held as surrogate escapes, which no terminal can print)."""
    out = []
    for ch in str(text):
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # a byte of a file name that is not UTF-8 (os.fsdecode)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or 0x7F <= code < 0xA0 or code in (0x2028, 0x2029):
            out.append(_ESCAPES.get(ch) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"))
        else:
            out.append(ch)
    return "".join(out)


def writable_dir(option: str, folder: Path) -> Path:
    """Create ``folder`` for an output option and check it can be written, before any slow
    work (root ignores permission bits, so this also probes with a real file)."""
    try:
        return ensure_writable_dir(folder, option)
    except FileWriteError as exc:
        raise UsageError(exc.message, hint=exc.hint) from None


def log(message: str) -> None:
    """A progress/log line on stderr."""
    err_console().print(message, highlight=False)


def flag_of(argument: str, names: dict[str, str]) -> str:
    """The flag of a library argument: ``names[argument]``, else ``--`` and the argument
    with dashes (``top_k`` -> ``--top-k``)."""
    return names.get(argument) or "--" + argument.replace("_", "-")


def in_flags(text: str, arguments: tuple[str, ...], names: dict[str, str]) -> str:
    """``text`` (a library message) with each of ``arguments`` as its flag: ``name=value``
    becomes ``--flag value`` (``name=True``: ``--flag``), and the bare name opening the
    text becomes ``--flag`` (the two ways :class:`UsageError` names an argument)."""
    for arg in arguments:
        flag = flag_of(arg, names)

        def keyword(m: re.Match, flag: str = flag) -> str:
            value = m.group(1) if m.group(1) is not None else m.group(2)
            return flag if value == "True" else f"{flag} {value}"

        text = re.sub(rf"\b{re.escape(arg)}=(?:'([^']*)'|(\S+?))(?=[\s,;)]|:\s|:$|$)", keyword, text)
        if re.match(rf"{re.escape(arg)}\b(?!=)", text):
            text = flag + text[len(arg) :]
    return text


@contextlib.contextmanager
def flags(**names: str) -> Iterator[None]:
    """Inside, a library :class:`UsageError` speaks CLI: the arguments it names are shown as
    flags (:func:`in_flags`); ``names`` maps the arguments whose flag is not ``--`` and
    their name with dashes (``taggram_dir="--taggram"``)."""
    try:
        yield
    except UsageError as exc:
        if not exc.arguments:
            raise
        hint = in_flags(exc.hint, exc.arguments, names) if exc.hint else None
        raise type(exc)(in_flags(exc.message, exc.arguments, names), hint=hint) from exc
