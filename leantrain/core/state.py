"""The small mutable training state every method sees."""
from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ..data import Task
    from ..recipe import Recipe
    from .evaluation import EvalResult


@dataclass
class State:
    recipe: "Recipe"
    model: torch.nn.Module
    """The unwrapped model (never the DDP wrapper); methods reach it through the model protocol
    (:func:`leantrain.models.protocol.require` / ``adapt``)."""
    optimizer: torch.optim.Optimizer | None
    data: "Task"
    """The data kind (splits, batches, scoring)."""
    step: int = 0
    """Optimizer steps completed."""
    loss: float | None = None
    """Training loss of the last step (this rank)."""
    val_loss: float | None = None
    best_val_loss: float | None = None
    val_error: float | None = None
    """Classification: top-1 validation error (%) of the last evaluation."""
    best_val_error: float | None = None
    val_result: "EvalResult | None" = None
    """The last evaluation in full (loss, its standard error, samples, error)."""
    rank: int = 0
    world_size: int = 1
    data_rank: int = 0
    """Which shard of the training data this rank draws from (data parallelism: its rank). Ranks that
    share a data rank draw identical batches (e.g. the stages of one module-parallel pipeline)."""
    data_world: int = 1
    """Number of data shards (data-parallel replicas)."""
    step_group: Any = None
    """Process group of the ranks that take every step in lockstep (None: all): the trainer's
    per-step agreement (non-finite steps, Ctrl-C) runs within it."""
    report_weight: float = 1.0
    """This rank's weight in the reported training loss (a pipeline reports its last stage's)."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """Method metrics for the next metrics row, namespaced ``method/name``."""
    rebuild: dict[str, str] | None = None
    """Set by :meth:`request_rebuild`; the trainer consumes it."""
    evaluate: "Callable[..., EvalResult] | None" = None
    """``evaluate(split="val", whole=True)``: score the full model on a split now (eval mode; the
    run's state is untouched). Set by the trainer, for methods that need a measurement."""

    @property
    def max_steps(self) -> int:
        return self.recipe.train.max_steps

    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1]."""
        return self.step / self.max_steps

    def log(self, key: str, value: Any) -> None:
        self.metrics[key] = value

    def request_rebuild(self, copy_optimizer_state: dict[str, str] | None = None) -> None:
        """After surgery: rebuild the optimizer (and DDP) for the model's current parameters.

        Parameters that survive keep their optimizer state. ``copy_optimizer_state`` maps a new
        parameter's name to an old parameter's name whose AdamW moments it should start from.
        """
        self.rebuild = {**(self.rebuild or {}), **(copy_optimizer_state or {})}
