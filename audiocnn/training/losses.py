"""The training loss of both tasks, with optional class weighting and label smoothing."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from audiocnn.constants import SINGLE_LABEL


class TaggingLoss(nn.Module):
    """Cross-entropy for single-label, BCE-with-logits for multi-label, with optional
    class weights (single-label) / positive weights (multi-label) and label smoothing."""

    def __init__(
        self, task: str, num_classes: int, *, label_smoothing: float = 0.0, weight: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        self.task = task
        self.num_classes = num_classes
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("weight", weight if weight is not None else None, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        logits = logits.float()
        if self.task == SINGLE_LABEL:
            if target.dim() == 2 and target.is_floating_point():  # class probabilities (mixup)
                return nn.functional.cross_entropy(
                    logits, target, weight=self.weight, label_smoothing=self.label_smoothing, reduction=reduction
                )
            if target.dim() == 2:
                target = target.argmax(dim=1)
            return nn.functional.cross_entropy(
                logits, target.long(), weight=self.weight, label_smoothing=self.label_smoothing, reduction=reduction
            )
        if target.dim() == 1:
            target = nn.functional.one_hot(target.long(), self.num_classes)
        target = target.float()
        if self.label_smoothing:
            target = target * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
        loss = nn.functional.binary_cross_entropy_with_logits(logits, target, pos_weight=self.weight, reduction="none")
        loss = loss.mean(dim=1)
        return loss.mean() if reduction == "mean" else loss.sum() if reduction == "sum" else loss


def class_weights(counts: np.ndarray, n_clips: int, task: str) -> torch.Tensor:
    """``balanced`` weights from training label counts: n / (C * count) for single-label
    (sklearn's definition), negatives / positives per tag for multi-label."""
    counts = np.asarray(counts, dtype=np.float64)
    safe = np.maximum(counts, 1.0)
    if task == SINGLE_LABEL:
        w = n_clips / (len(counts) * safe)
    else:
        w = np.maximum(n_clips - counts, 1.0) / safe
    return torch.tensor(w, dtype=torch.float32)
