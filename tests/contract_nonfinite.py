"""A test-only step strategy that makes one rank's loss NaN at one step (the gradients stay finite)."""
from __future__ import annotations

from leantrain import Method


class NaNLossAt(Method):
    """Step strategy: normal forward/backward, but the returned loss is NaN at ``step`` on ``rank``."""
    name = "probe_nan_loss"
    kind = "step_strategy"

    def __init__(self, step: int, rank: int = 0):
        super().__init__()
        self.at, self.on_rank = step, rank

    def training_step(self, state, model, x, y):
        _, loss = model(x, y)
        loss.backward()
        if state.step == self.at and state.rank == self.on_rank:
            return loss.detach() * float("nan")
        return loss.detach()
