"""`audiocnn train` (parsing and printing; the work is in audiocnn.training)."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from typing import Optional

import typer

from audiocnn.cli import common
from audiocnn.cli.app import app
from audiocnn.errors import AudiocnnError

#: train_command's arguments whose flag is not their name with dashes
TRAIN_FLAGS = common.COMMAND_FLAGS["train"]


@contextlib.contextmanager
def _next_command(config: str) -> Iterator[None]:
    """A library error's quoted arguments (`` `run_dir=R resume=True` ``, shown as flags
    by :func:`common.flags`) become the whole command to run next."""
    try:
        yield
    except AudiocnnError as exc:
        command = f"`audiocnn train {config} --"
        if "`--" not in exc.message + (exc.hint or ""):
            raise
        hint = exc.hint.replace("`--", command) if exc.hint else None
        raise type(exc)(exc.message.replace("`--", command), hint=hint) from exc


@app.command("train")
def train(
    config: str = typer.Argument(..., help="Experiment YAML (see configs/)."),
    overrides: Optional[list[str]] = typer.Option(
        None, "--set", help="Override a config key: key=value (YAML scalar; dotted for nested keys). Repeatable."
    ),
    run_dir: Optional[str] = typer.Option(
        None, "--run-dir", help="Run folder (default: runs/<config-name>-<timestamp>)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda (or cuda:N) or mps."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --run-dir (default: the newest run of this config) from last.pt."
    ),
    restart: bool = typer.Option(
        False, "--restart", help="Start the run in --run-dir over: remove its earlier training state and results first."
    ),
) -> None:
    """Train a model from an experiment config; resumable (--resume), multi-GPU with torchrun."""
    from audiocnn.training.command import train_command  # deferred: torch, only once there is work to do

    with _next_command(config), common.flags(**TRAIN_FLAGS):
        result = train_command(
            config,
            list(overrides or []),
            run_dir=run_dir,
            data_dir=common.state.data_dir,
            device=device,
            resume=resume,
            restart=restart,
        )
    if result.best_epoch is not None and os.environ.get("RANK", "0") == "0":
        best = result.best_metric
        best_s = "n/a" if best is None or (isinstance(best, float) and math.isnan(best)) else f"{best:.4f}"
        common.log(f"best {result.monitor} {best_s} at epoch {result.best_epoch}; run folder {result.run_dir}")
        common.log(f"next: audiocnn evaluate {result.run_dir} --split test")
        typer.echo(str(result.run_dir))
