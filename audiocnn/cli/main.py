"""The ``audiocnn`` command: global options, command registration, one-line errors."""

from __future__ import annotations

import sys
import traceback
from typing import Optional

import typer


from audiocnn import __version__
from audiocnn.cli import common
from audiocnn.errors import AudiocnnError

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


def _register() -> None:
    # Each module adds its commands to ``app``; the order here is the order in --help.
    from audiocnn.cli import data, features, models, tag, train  # noqa: F401
    from audiocnn.cli.pretrained import pretrained_app

    app.add_typer(pretrained_app, name="pretrained")


if __name__ != "__main__":
    _register()


def run(argv: Optional[list[str]] = None) -> int:
    """Run the CLI and return the exit code (what tests call)."""
    command = typer.main.get_command(app)
    common.state.verbose = False
    try:
        # Standalone mode: click prints usage errors and handles --help/--version exits;
        # our own errors propagate to here.
        command.main(args=argv, prog_name="audiocnn", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except AudiocnnError as exc:
        if common.state.verbose:
            traceback.print_exc()
        # one line whatever the message holds (a file name with a newline, say)
        print(f"error: {common.printable(exc)}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        return 0
    return 0


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    # `python -m audiocnn.cli.main` (e.g. under torchrun): the command modules register on
    # the importable module's app, so run that one, not this __main__ copy.
    from audiocnn.cli.main import main as _main

    _main()
