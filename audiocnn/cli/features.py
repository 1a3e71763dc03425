"""`audiocnn features DATASET --kind waveform|mel|both`: the feature-store sub-step of prepare."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer

from audiocnn import configio, pipeline
from audiocnn.cli import common
from audiocnn.cli.app import app
from audiocnn.errors import ConfigError, UsageError


class Kind(str, Enum):
    """``--kind``: which store(s) to build."""

    waveform = "waveform"
    mel = "mel"
    both = "both"


class TextOrJson(str, Enum):
    text = "text"
    json = "json"


def resolve_dataset_dir(dataset: str) -> Path:
    """A dataset name under --data-dir, or a path to a dataset folder."""
    p = Path(dataset)
    if (p / "manifest.jsonl").is_file() and (p.is_absolute() or "/" in dataset or dataset.startswith(".")):
        return p
    return common.state.data_dir / dataset


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``--set key=value`` items by the one override parser (:func:`audiocnn.configio.parse_overrides`:
    values are YAML scalars, aliases bounded); a bad one is a usage error."""
    try:
        return dict(configio.parse_overrides(items))
    except ConfigError as exc:
        raise UsageError(exc.message, hint=exc.hint, arguments=exc.arguments) from None


@app.command("features")
def features(
    dataset: str = typer.Argument(..., help="A prepared dataset (name under --data-dir, or its folder)."),
    kind: Kind = typer.Option(Kind.mel, "--kind", help="waveform, mel or both."),
    sample_rate: Optional[int] = typer.Option(
        None,
        "--sample-rate",
        min=1,
        show_default=False,
        help="Target sample rate (default 16000; SampleCNN's paper setting is 22050).",
    ),
    jobs: Optional[int] = typer.Option(
        None, "-j", "--jobs", min=1, help="Worker processes (default: all cores).", show_default=False
    ),
    overrides: Optional[list[str]] = typer.Option(
        None, "--set", help="Front-end option key=value, e.g. --set n_mels=128 (repeatable).", show_default=False
    ),
    min_seconds: float = typer.Option(1.0, "--min-seconds", help="Skip clips shorter than this (seconds)."),
    max_failures: float = typer.Option(
        0.05, "--max-failures", help="Fail when more than this fraction of clips cannot be extracted."
    ),
    fmt: TextOrJson = typer.Option(TextOrJson.text, "--format", help="text or json."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
    shard: Optional[str] = typer.Option(
        None,
        "--shard",
        show_default=False,
        help="Extract only share K (from 0) of N of the chunks (a job array's task; under torchrun "
        "RANK/WORLD_SIZE pick it); the last share to finish merges the store.",
    ),
) -> None:
    """Extract waveform or log-mel features of a prepared dataset into the on-disk store.

    Resumable and idempotent: a re-run skips finished work; a different front-end config
    makes a new store next to the old one.
    """
    from audiocnn.features.store import extraction_summary  # deferred: torch, only once there is work to do

    with common.flags(**common.COMMAND_FLAGS["features"]):
        options = parse_overrides(overrides or [])
    configs = pipeline.frontend_configs(kind.value, sample_rate, options)
    picked = _shard(shard)
    with common.flags(**common.COMMAND_FLAGS["features"]):
        stores = pipeline.extract(
            resolve_dataset_dir(dataset),
            configs,
            jobs=jobs,
            min_seconds=min_seconds,
            max_failure_fraction=max_failures,
            progress=not no_progress,
            shard=picked,
        )
    if picked is not None and not stores:  # a share whose store(s) other shares still have to finish
        common.err_console().print(
            f"share {picked} extracted; other shares are left or running: the last to finish merges the store",
            highlight=False,
        )
        return
    results = [extraction_summary(store) for store in stores]
    if fmt is TextOrJson.json:
        common.print_json(results if len(results) > 1 else results[0])
        return
    console = common.out_console()
    for r in results:
        counts = ", ".join(f"{s} {n}" for s, n in r["clips"].items())
        console.print(f"{r['kind']}: {r['path']}", highlight=False)
        console.print(f"  clips: {counts}; failed: {r['failures']}", highlight=False)
        if r["failures"]:
            console.print(f"  failures listed in {Path(r['path']) / 'failures.jsonl'}", highlight=False)


def _shard(text: str | None):
    """--shard K/N, or torchrun's RANK of WORLD_SIZE; None for one process."""
    from audiocnn.shards import parse_shard, shard_from_env  # deferred: only for a sharded run

    return parse_shard(text) if text is not None else shard_from_env()
