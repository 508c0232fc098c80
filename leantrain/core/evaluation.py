"""Evaluation: a model's mean loss (and classification error) over batches, with standard errors.

Every figure carries its evaluation standard error, from the per-sample values (text: per-window
losses; classification: per-sample losses and 0/1 errors), so a reader can tell an effect from the
noise of *which* samples were evaluated. Under DDP the batches are shared out by rank and the sums
reduced, so every rank gets the same result.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import distributed


@dataclass
class EvalResult:
    loss: float
    """Mean per-sample loss (text: mean over windows of the mean token loss = mean token loss)."""
    loss_se: float
    """Standard error of ``loss``: std of the per-sample losses / √n."""
    n: int
    """Samples (windows) evaluated."""
    error: float | None = None
    """Top-1 error in percent (classification)."""
    error_se: float | None = None
    """Its binomial standard error, in percent."""

    def row(self, prefix: str) -> dict[str, float]:
        """As metrics: ``{prefix}_loss``, ``{prefix}_loss_se`` and, for classification, ``{prefix}_error``
        and ``{prefix}_error_se``."""
        out = {f"{prefix}_loss": self.loss, f"{prefix}_loss_se": self.loss_se}
        if self.error is not None:
            out.update({f"{prefix}_error": self.error, f"{prefix}_error_se": self.error_se})
        return out


@torch.no_grad()
def evaluate(model: torch.nn.Module, task, batches: Sequence, device: torch.device) -> EvalResult:
    """Score ``model`` (in whatever mode the caller set) on ``batches``, this rank's share under DDP."""
    rank, world = distributed.rank_world()
    total = torch.zeros(4, dtype=torch.float64)  # Σ loss, Σ loss², n, Σ correct
    # a Sequence is sliced as it is (token shards read their windows only when indexed)
    for x, y in (batches if isinstance(batches, Sequence) else list(batches))[rank::world]:
        logits, _ = model(x.to(device))
        losses, correct = task.score(logits, y.to(device))
        losses = losses.double().cpu()
        total += torch.tensor([losses.sum().item(), (losses * losses).sum().item(), len(losses),
                               0.0 if correct is None else correct.sum().item()], dtype=torch.float64)
    s, s2, n, right = distributed.sum_tensor(total).tolist()
    if n == 0:
        raise ValueError("evaluation over no samples")
    mean = s / n
    var = max(s2 / n - mean * mean, 0.0) * n / max(n - 1, 1)
    result = EvalResult(loss=mean, loss_se=math.sqrt(var / n), n=int(n))
    if task.task == "classification":
        p = 1.0 - right / n
        result.error, result.error_se = 100.0 * p, 100.0 * math.sqrt(p * (1 - p) / n)
    return result
