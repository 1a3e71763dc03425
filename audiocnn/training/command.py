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
from audiocnn.errors import UsageError
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
    ``overrides`` still apply), hold the folder's lock, and train.

    Errors here and in training name these arguments (``arguments``); a way out is written
    as the arguments of the call to make next, quoted (`` `run_dir='R' resume=True` ``).
    """
    if restart and not run_dir:
        raise UsageError(
            "restart=True needs the `run_dir` to start over", hint="pass `run_dir`", arguments=("restart", "run_dir")
        )
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
        return train(config, run.path, data_dir=data_dir, device=device, resume=resume, progress=True)
