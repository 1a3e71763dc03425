"""BatchNorm statistics that match the weights being evaluated ("precise BN").

A BatchNorm layer normalises with batch statistics while training but with its running
averages in eval mode. Those averages forget their initial values (mean 0, variance 1)
at a rate set by ``momentum``: with musicnn's TensorFlow decay of 0.99 (torch momentum
0.01) they need about 500 steps, and a user's folder of a few hundred clips trains for
far fewer. The eval-mode network then applies per-channel offsets that training never
saw: the ranking of clips can stay perfect (ROC-AUC 1.0) while the arg-max decisions are
wrong (accuracy 0.5). Lowering one model's momentum would only move the problem.

The fix here works for every model and every run length: before each validation the
running statistics of every BatchNorm layer that is being trained are recomputed from
scratch as the plain average over a number of training batches, with the current
weights, the training precision and dropout switched off (the network evaluation will
see), then averaged over DDP processes. Frozen layers (``freeze_backbone``), whose
BatchNorm stays in eval mode, keep their statistics exactly, and so do pretrained
imports, which are never recomputed outside training. Cost: forward passes over
``bn_stats_batches`` training batches per epoch (no backward, no optimiser step).
(Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021, sec. 3: "precise BN".)
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from audiocnn.training import distributed as D


def trained_batchnorms(model: nn.Module) -> list[_BatchNorm]:
    """BatchNorm layers that update running statistics in the model's current mode."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]


@torch.no_grad()
def recompute_batchnorm_stats(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    *,
    max_batches: int,
    forward: Callable[[torch.Tensor], torch.Tensor],
    info: D.DistInfo | None = None,
) -> int:
    """Replace the running statistics of ``model``'s trained BatchNorm layers by their
    average over up to ``max_batches`` of ``batches``; returns the batches used.

    ``model`` must be in the mode training leaves it in (so frozen parts stay frozen);
    ``forward`` runs one batch the way training does (device, autocast). Dropout is
    switched off while the statistics are gathered and every mode is restored after.
    """
    layers = trained_batchnorms(model)
    if not layers or max_batches <= 0:
        return 0
    momenta = [bn.momentum for bn in layers]
    saved = [(bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()) for bn in layers]
    dropouts = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.training]
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches below
    for m in dropouts:
        m.eval()
    used = 0
    try:
        for x in batches:
            if used >= max_batches:
                break
            if x.shape[0] > 1:  # a batch of one has no variance to measure
                forward(x)
                used += 1
    finally:
        for bn, momentum in zip(layers, momenta):
            bn.momentum = momentum
        for m in dropouts:
            m.train()
        if used == 0:  # nothing measured (or interrupted): keep the statistics as they were
            for bn, (mean, var, n) in zip(layers, saved):
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
                bn.num_batches_tracked.copy_(n)
    _average_over_processes(layers, info)
    return used


def _average_over_processes(layers: list[_BatchNorm], info: D.DistInfo | None) -> None:
    """Every process ends with the same statistics: the mean of the processes' averages."""
    if info is None or not info.enabled:
        return
    for bn in layers:
        D.all_reduce_mean_(bn.running_mean, info)
        D.all_reduce_mean_(bn.running_var, info)
