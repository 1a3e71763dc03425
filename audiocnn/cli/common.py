"""State and printing helpers shared by the CLI command modules.

Results go to stdout (``out``); logs, warnings and progress bars to stderr (``err``).
"""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import re
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from rich.console import Console

from audiocnn.constants import DEFAULT_DATA_DIR, default_data_dir
from audiocnn.errors import AudiocnnError, UsageError
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
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_CliWords("%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)


class _CliWords(logging.Formatter):
    """Log lines in CLI words: a library line that names its arguments
    (``log.info("... use force=True ...", extra={"arguments": ("force",)})``) shows them as
    the flags of the innermost :func:`flags` block, and a next call it quotes as a command,
    as errors do."""

    def format(self, record: logging.LogRecord) -> str:
        arguments = tuple(getattr(record, "arguments", ()))
        if arguments or "`" in str(record.msg):
            text = in_flags(commands_in(record.getMessage()), arguments, _names[-1])
            record = logging.makeLogRecord({**record.__dict__, "msg": text, "args": ()})
        return super().format(record)


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


#: the flags of each command's library arguments whose flag is not ``--`` and the name with dashes
COMMAND_FLAGS: dict[str, dict[str, str]] = {
    "prepare": {"labels_file": "--labels", "dataset_name": "--name", "jobs": "-j"},
    "features": {"overrides": "--set", "jobs": "-j", "max_failure_fraction": "--max-failures"},
    "train": {"overrides": "--set"},
    "evaluate": {"chunks": "--eval-chunks", "out_dir": "--out"},
    "verify": {"jobs": "-j"},
}
#: the flag names of the ``flags()`` blocks we are in (log lines use the innermost)
_names: list[dict[str, str]] = [{}]


def flag_of(argument: str, names: dict[str, str]) -> str:
    """The flag of a library argument: ``names[argument]``, else ``--`` and the argument
    with dashes (``top_k`` -> ``--top-k``)."""
    return names.get(argument) or "--" + argument.replace("_", "-")


def in_flags(text: str, arguments: tuple[str, ...], names: dict[str, str]) -> str:
    """``text`` (a library message) with each of ``arguments`` as its flag: ``name=value``
    becomes ``--flag value`` (``name=True``: ``--flag``), the bare name opening the text
    or quoted alone (`` `name` ``) becomes ``--flag`` (the ways :class:`UsageError` names
    an argument)."""
    for arg in arguments:
        flag = flag_of(arg, names)

        def keyword(m: re.Match, flag: str = flag) -> str:
            value = m.group(1) if m.group(1) is not None else m.group(2)
            return flag if value == "True" else f"{flag} {value}"

        text = re.sub(rf"\b{re.escape(arg)}=(?:'([^']*)'|(\S+?))(?=[\s,;)`]|:\s|:$|$)", keyword, text)
        text = text.replace(f"`{arg}`", flag)
        if re.match(rf"{re.escape(arg)}\b(?!=)", text):
            text = flag + text[len(arg) :]
    return text


_CALL = re.compile(r"`([a-z]+)\(([^`]*)\)`")


def commands_in(text: str) -> str:
    """``text`` with each next call it quotes (`` `prepare('gtzan', force=True)` ``, see
    :func:`audiocnn.errors.next_call`) as the command line that does it
    (`` `audiocnn prepare gtzan --force` ``)."""

    def command(m: re.Match) -> str:
        name = m.group(1)
        try:
            call = ast.parse(f"f({m.group(2)})", mode="eval").body
            values = [ast.literal_eval(v) for v in call.args]
            arguments = [(k.arg, ast.literal_eval(k.value)) for k in call.keywords]
        except (SyntaxError, ValueError):
            return m.group(0)
        if name not in COMMAND_FLAGS or None in (k for k, _ in arguments):
            return m.group(0)
        words = ["audiocnn", name, *map(str, values)]
        for arg, value in arguments:
            flag = flag_of(arg, COMMAND_FLAGS[name])
            if value is True:
                words.append(flag)
            elif value not in (False, None):
                for item in value if isinstance(value, (list, tuple)) else [value]:
                    words += [flag, str(item)]
        return f"`{shlex.join(words)}`"

    return _CALL.sub(command, text)


def cli_words(exc: AudiocnnError) -> str:
    """The one line of an error as the CLI prints it: next calls as commands and, where no
    :func:`flags` block has shown them already, its arguments as their ``--`` flags."""
    return in_flags(commands_in(str(exc)), exc.arguments, {})


@contextlib.contextmanager
def flags(**names: str) -> Iterator[None]:
    """Inside, a library error (:class:`UsageError`, or any :class:`AudiocnnError` that
    names ``arguments``) and a library log line that names them speak CLI: the arguments
    are shown as flags (:func:`in_flags`), next calls as commands (:func:`commands_in`);
    ``names`` maps the arguments whose flag is not ``--`` and their name with dashes
    (``taggram_dir="--taggram"``)."""
    _names.append(names)
    try:
        yield
    except AudiocnnError as exc:
        if not exc.arguments:
            raise
        hint = in_flags(commands_in(exc.hint), exc.arguments, names) if exc.hint else None
        raise type(exc)(in_flags(commands_in(exc.message), exc.arguments, names), hint=hint) from exc
    finally:
        _names.pop()
