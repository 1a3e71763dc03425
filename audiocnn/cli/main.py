"""The ``audiocnn`` command: every command module registered on one app, one-line errors."""

from __future__ import annotations

import sys
import traceback
from typing import Optional

import typer

# each module adds its commands to ``app``; the order here is the order in --help
from audiocnn.cli import common, data, evaluate, export, features, models, tag, train  # noqa: F401
from audiocnn.cli.app import app, plain_help
from audiocnn.cli.pretrained import pretrained_app
from audiocnn.errors import AudiocnnError

app.add_typer(pretrained_app, name="pretrained")


def run(argv: Optional[list[str]] = None) -> int:
    """Run the CLI and return the exit code (what tests call)."""
    command = plain_help(typer.main.get_command(app))
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


if __name__ == "__main__":  # `python -m audiocnn.cli.main` (e.g. under torchrun)
    main()
