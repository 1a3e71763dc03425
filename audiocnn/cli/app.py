"""The ``audiocnn`` Typer app and its global options; the command modules add their
commands to it, and :mod:`audiocnn.cli.main` imports them all and runs it."""

from __future__ import annotations

from typing import Any, Optional

import typer

from audiocnn import __version__
from audiocnn.cli import common

app = typer.Typer(
    name="audiocnn",
    help="Music auto-tagging with CNNs: prepare datasets, train models, tag songs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: "[default: ...]" must print as written
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"audiocnn {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    data_dir: Optional[str] = typer.Option(
        None,
        "--data-dir",
        help="Root folder of prepared datasets (default: ./data, or $AUDIOCNN_DATA_DIR). Pretrained imports and "
        "ONNX exports go to the cache folder: $AUDIOCNN_CACHE_DIR, else ~/.cache/audiocnn.",
        show_default=False,
    ),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Debug logging; tracebacks on errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Music auto-tagging with CNNs: prepare datasets, train models, tag songs."""
    common.state.data_dir = common.resolve_data_dir(data_dir)
    common.state.verbose = verbose
    common.setup_logging(verbose)


def plain_help(command: Any) -> Any:
    """``command`` (the click command Typer built) with help a person reads, whatever
    Typer's version: a command's whole first paragraph as its summary in a group's list
    (click cuts a summary at about 45 characters with "..."), and placeholders named
    after the value (``PATH...``, ``--model MODEL``) rather than Python types
    (``<list[str]>``, ``<str>``) or braces (``{paths}...``). Choices keep their list."""
    for cmd in getattr(command, "commands", {}).values():
        if not cmd.short_help and cmd.help:
            cmd.short_help = " ".join(cmd.help.split("\n\n")[0].split())
        plain_help(cmd)
    for param in getattr(command, "params", []):
        if param.metavar is not None or _is_choice(param) or getattr(param, "is_flag", False):
            continue
        name = (param.name or "value").upper()
        if param.param_type_name == "argument":
            param.metavar = name.removesuffix("S") + "..." if param.nargs != 1 else name
            shown = param.metavar if param.required else f"[{param.metavar}]"
            param.get_usage_pieces = lambda ctx, shown=shown: [shown]
            param.display_type_rich = lambda ctx: None  # Typer >= 0.2x would add "<list[str]>"
        else:
            param.metavar = name
    return command


def _is_choice(param: Any) -> bool:
    """Whether a parameter takes one of a list of values (click: ``type.choices``; Typer
    0.2x's own parameters: ``type_descriptor.is_choice``)."""
    if getattr(getattr(param, "type", None), "choices", None):
        return True
    return bool(getattr(getattr(param, "type_descriptor", None), "is_choice", False))
