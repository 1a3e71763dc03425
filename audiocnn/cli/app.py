"""The ``audiocnn`` Typer app and its global options; the command modules add their
commands to it, and :mod:`audiocnn.cli.main` imports them all and runs it."""

from __future__ import annotations

from typing import Optional

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
        help="Root folder of prepared datasets and pretrained models (default: ./data, or $AUDIOCNN_DATA_DIR).",
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
