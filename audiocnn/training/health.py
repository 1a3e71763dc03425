"""Training health: stop cleanly on a non-finite loss, say when a run overfits.

A loss that becomes NaN or infinite never recovers, and every later step only spreads
NaN through the weights; going on would end in a traceback from the metrics (NaN scores)
and a ``last.pt`` full of NaN. So the step that sees it stops the run with one line
naming the epoch and step, and the run folder keeps the state of the last finished
epoch, from which ``--resume`` (with a lower ``lr``, say) goes on.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from audiocnn.errors import TrainingError

#: validation loss rising this many epochs in a row while training loss falls = overfitting
OVERFIT_EPOCHS = 3


def check_loss(loss: float, *, epoch: int, step: int, run_dir: Path, last_good_epoch: int, has_state: bool) -> None:
    """Raise :class:`TrainingError` when ``loss`` is NaN or infinite (``epoch``/``step`` 1-based)."""
    if math.isfinite(loss):
        return
    raise TrainingError(
        f"training diverged: the loss is {loss} at epoch {epoch}, step {step}",
        hint=_next_step(run_dir, last_good_epoch, has_state),
        arguments=NEXT_STEP_ARGUMENTS,
    )


def check_weights(
    params: Iterable[torch.Tensor], *, epoch: int, run_dir: Path, last_good_epoch: int, has_state: bool
) -> None:
    """Raise :class:`TrainingError` when a weight became NaN or infinite during ``epoch``."""
    if all(bool(torch.isfinite(p).all()) for p in params):
        return
    raise TrainingError(
        f"training diverged: weights became NaN or infinite during epoch {epoch}",
        hint=_next_step(run_dir, last_good_epoch, has_state),
        arguments=NEXT_STEP_ARGUMENTS,
    )


#: the arguments of the train call a hint of :func:`_next_step` names
NEXT_STEP_ARGUMENTS = ("run_dir", "resume", "overrides")


def _next_step(run_dir: Path, last_good_epoch: int, has_state: bool) -> str:
    if has_state and last_good_epoch > 0:
        return (
            f"{run_dir} keeps the state after epoch {last_good_epoch}; continue from it with a lower "
            f"learning rate: `run_dir='{run_dir}' resume=True overrides=lr=...`"
        )
    return (
        "nothing was saved yet; train again with a lower learning rate (`overrides=lr=...`) or `overrides=grad_clip=1`"
    )


def overfitting_note(history: Sequence[dict[str, Any]], epochs: int = OVERFIT_EPOCHS) -> str | None:
    """A warning when validation loss rose for ``epochs`` epochs in a row while the
    training loss fell over the same epochs, else None."""
    if len(history) < epochs + 1:
        return None
    recent = history[-(epochs + 1) :]
    valid = [float(r["valid_loss"]) for r in recent]
    train = [float(r["train_loss"]) for r in recent]
    if not all(math.isfinite(v) for v in valid + train):
        return None
    rising = all(b > a for a, b in zip(valid, valid[1:]))
    falling = all(b < a for a, b in zip(train, train[1:]))
    if not (rising and falling):
        return None
    return (
        f"the model is overfitting: validation loss rose for {epochs} epochs "
        f"({valid[0]:.4f} -> {valid[-1]:.4f}) while training loss fell ({train[0]:.4f} -> {train[-1]:.4f}); "
        "best.safetensors keeps the best epoch (consider early_stopping, weight_decay or augmentation)"
    )
