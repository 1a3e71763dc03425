"""``audiocnn train`` as one library call: which run folder, which config, the folder's
lock and policy (:mod:`audiocnn.training.rundir`), then :func:`audiocnn.training.loop.train`.

The Trainer knows nothing of these decisions: it is given a run folder and whether to
resume it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from audiocnn.configio import read_yaml
from audiocnn.errors import CheckpointError, UsageError
from audiocnn.training import distributed as D
from audiocnn.training.config import config_from_mapping, load_config
from audiocnn.training.loop import TrainResult, train
from audiocnn.training.rundir import check_run_folder, check_run_owner, choose_run_dir, run_lock


def train_command(
    config_path: str | os.PathLike,
    overrides: list[str],
    *,
    run_dir: str | os.PathLike | None,
    data_dir: str | os.PathLike,
    device: str = "auto",
    resume: bool = False,
    restart: bool = False,
) -> TrainResult:
    """Pick the run folder and the config (a resumed run's own resolved config wins,
    ``overrides`` still apply), hold the folder's lock, and train."""
    if restart and not run_dir:
        raise UsageError("--restart needs the --run-dir to start over", hint="pass --run-dir DIR")
    path = Path(config_path)
    is_main = os.environ.get("RANK", "0") == "0"
    run = choose_run_dir(path.stem, run_dir, resume=resume, world_size=D.env_world_size())
    if resume and run.config.is_file():
        check_run_owner(run.path)  # a config.yaml of the user's is not a run's config
        config = config_from_mapping(read_yaml(run.config), overrides)
    else:
        config = load_config(path, overrides)
    with run_lock(run.path) if is_main else contextlib.nullcontext():  # one process of a torchrun job guards the folder
        check_run_folder(run, resume=resume, restart=restart, is_main=is_main)
        try:
            return train(config, run.path, data_dir=data_dir, device=device, resume=resume, progress=True)
        except CheckpointError as exc:
            raise _named_config(exc, path, resume) from None


def _named_config(exc: CheckpointError, config_path: Path, resume: bool) -> CheckpointError:
    """The same error, its way out naming the real config file."""
    if resume and "`audiocnn train CONFIG " in (exc.hint or ""):
        return type(exc)(
            exc.message, hint=exc.hint.replace("`audiocnn train CONFIG ", f"`audiocnn train {config_path} ")
        )
    return exc
