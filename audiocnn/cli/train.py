"""Training and evaluation commands (parsing and printing; the work is in audiocnn.training
and audiocnn.evaluation)."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import List, Optional

import typer

from audiocnn.cli import common
from audiocnn.cli.main import app
from audiocnn.errors import UsageError


@app.command("train")
def train(
    config: str = typer.Argument(..., help="Experiment YAML (see configs/)."),
    overrides: Optional[List[str]] = typer.Option(
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
    from audiocnn.training.runlock import run_lock

    if resume and restart:
        raise UsageError("--resume and --restart contradict each other", hint="pass one of them")
    if restart and not run_dir:
        raise UsageError("--restart needs the --run-dir to start over", hint="pass --run-dir DIR")
    cfg, rd = _resolve_run(config, list(overrides or []), run_dir, resume)
    # Only one process of a torchrun job guards (and may clear) the folder.
    with run_lock(rd) if _is_main() else contextlib.nullcontext(rd):
        result = _train_in(cfg, rd, config, device=device, resume=resume, restart=restart)
    if result.best_epoch is not None and _is_main():
        best = result.best_metric
        best_s = "n/a" if best is None or (isinstance(best, float) and math.isnan(best)) else f"{best:.4f}"
        common.log(f"best {result.monitor} {best_s} at epoch {result.best_epoch}; run folder {result.run_dir}")
        common.log(f"next: audiocnn evaluate {result.run_dir} --split test")
        typer.echo(str(result.run_dir))


def _resolve_run(config: str, sets: list[str], run_dir: Optional[str], resume: bool):
    """(validated config, run folder) of a train command line."""
    from audiocnn.config import config_from_mapping, load_config, read_yaml
    from audiocnn.training.distributed import env_world_size
    from audiocnn.training.loop import CONFIG_NAME, default_run_dir, latest_run_dir

    cfg_path = Path(config)
    name = cfg_path.stem
    if resume:
        rd = Path(run_dir) if run_dir else latest_run_dir(name)
        if rd is None:
            raise UsageError(f"--resume: no earlier run of {name!r} under runs/", hint="pass --run-dir DIR")
        saved = rd / CONFIG_NAME
        # the run's own resolved config is authoritative; --set may still change e.g. epochs
        cfg = config_from_mapping(read_yaml(saved), sets) if saved.is_file() else load_config(cfg_path, sets)
        return cfg, rd
    cfg = load_config(cfg_path, sets)
    if run_dir:
        return cfg, Path(run_dir)
    if env_world_size() > 1:
        raise UsageError("with torchrun every process must agree on the run folder", hint="pass --run-dir DIR")
    return cfg, _unique(default_run_dir(name))


def _train_in(cfg, rd: Path, config: str, *, device: str, resume: bool, restart: bool):
    """Run the training in ``rd`` (its lock held): refuse to overwrite an earlier run
    unless asked to resume or restart it."""
    from audiocnn.errors import CheckpointError
    from audiocnn.training.loop import LAST_NAME
    from audiocnn.training.loop import train as run_training
    from audiocnn.training.runlock import clear_run, holds_run

    if restart and _is_main():
        clear_run(rd)
    elif not resume and not restart and holds_run(rd):
        raise UsageError(
            f"{rd} already holds a run",
            hint="add --resume to continue it, --restart to start it over, or choose another --run-dir",
        )
    try:
        return run_training(cfg, rd, data_dir=common.state.data_dir, device=device, resume=resume, progress=True)
    except CheckpointError as exc:
        if resume and exc.message.startswith(str(rd / LAST_NAME)) and "--restart" in (exc.hint or ""):
            # name the real config file in the way out
            raise CheckpointError(
                exc.message,
                hint=f"start the run folder over with `audiocnn train {config} --run-dir {rd} --restart`, "
                "or train into a fresh --run-dir",
            ) from None
        raise


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _unique(path: Path) -> Path:
    if not path.exists():
        return path
    i = 1
    while Path(f"{path}-{i}").exists():
        i += 1
    return Path(f"{path}-{i}")


@app.command("evaluate")
def evaluate(
    target: str = typer.Argument(..., help="Run folder or checkpoint (.safetensors)."),
    split: str = typer.Option("test", "--split", help="train, valid or test."),
    fmt: str = typer.Option("table", "--format", help="table or json."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Evaluate on this prepared dataset (default: the one it was trained on)."),
    eval_chunks: Optional[int] = typer.Option(None, "--eval-chunks", help="Score N evenly spaced windows per clip (the papers' protocol, = `tag --chunks N`); default: the windows `tag` uses."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda (or cuda:N) or mps."),
    batch_size: int = typer.Option(4, "--batch-size", help="Windows per model batch."),
    out: Optional[str] = typer.Option(None, "--out", help="Folder for metrics.json, per_tag.csv and plots."),
    no_plots: bool = typer.Option(False, "--no-plots", help="Skip the PNG plots."),
) -> None:
    """Song-level ROC-AUC / PR-AUC (and accuracy) of a trained model on a split."""
    from audiocnn.evaluation import evaluate as run_eval

    if fmt not in ("table", "json"):
        raise UsageError(f"--format must be table or json, got {fmt!r}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    m = run_eval(target, data_dir=common.state.data_dir, split=split, dataset=dataset, eval_chunks=eval_chunks,
                 device=device, batch_size=batch_size, out_dir=out, plots=not no_plots, progress=True)
    if fmt == "json":
        keys = ["roc_auc_macro", "pr_auc_macro", "roc_auc_micro", "pr_auc_micro", "accuracy", "balanced_accuracy",
                "f1_macro", "f1_micro", "n_clips", "split", "dataset", "model", "task", "checkpoint", "framing",
                "eval_chunks", "n_labels",
                "n_labels_scored", "excluded_labels", "out_dir"]
        common.print_json({k: _clean(m[k]) for k in keys if k in m})
        return
    _print_table(m)


def _clean(v):
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def _print_table(m: dict) -> None:
    from rich.table import Table

    framing = f"{m['eval_chunks']} chunks each" if m.get("eval_chunks") else "windows as `tag`"
    t = Table(title=f"{m['model']} on {m['dataset']} / {m['split']} ({m['n_clips']} clips, {framing})")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for key in ("roc_auc_macro", "pr_auc_macro", "roc_auc_micro", "pr_auc_micro", "accuracy", "balanced_accuracy",
                "f1_macro", "f1_micro"):
        if key in m:
            v = m[key]
            t.add_row(key, "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}")
    t.add_row("labels scored", f"{m['n_labels_scored']} / {m['n_labels']}")
    console = common.out_console()
    console.print(t)
    scored = [x for x in m["per_tag"] if x["roc_auc"] is not None]
    if scored:
        scored.sort(key=lambda x: x["roc_auc"])
        worst = ", ".join(f"{x['label']} {x['roc_auc']:.3f}" for x in scored[:3])
        best = ", ".join(f"{x['label']} {x['roc_auc']:.3f}" for x in scored[::-1][:3])
        console.print(f"best tags: {best}\nworst tags: {worst}", highlight=False)
    for e in m["excluded_labels"]:
        console.print(f"not scored: {e['label']} ({e['reason']})", highlight=False)
    console.print(f"written to {m['out_dir']}", highlight=False)
