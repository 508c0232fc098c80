"""The small mutable training state every method sees."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ..data import Task
    from ..recipe import Recipe
    from .evaluation import EvalResult
    from .precision import Precision


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
    """Training loss of the last step (this rank). With ``train.host_sync: log`` the host reads losses
    only at log, evaluation and checkpoint steps: then it is the loss of the last step before that read."""
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
    precision: "Precision | None" = None
    """The run's autocast and loss scaling (train.precision, grad_accum_steps); set by the trainer.
    Step strategies run their forward under :meth:`autocast` and back-propagate with :meth:`backward`."""
    micro_batch: int = 0
    """Index of the micro-batch being run within the step (0 … grad_accum_steps − 1)."""
    _micro_sums: dict[str, tuple[float, int]] = field(default_factory=dict, repr=False)
    """:meth:`log_mean`'s running sums within the step."""

    @property
    def grad_accum_steps(self) -> int:
        return self.recipe.train.grad_accum_steps

    @property
    def last_micro_batch(self) -> bool:
        """True on the step's last micro-batch: a strategy that steps optimizers of its own does it then."""
        return self.micro_batch == self.grad_accum_steps - 1

    def autocast(self):
        """The run's autocast context (train.precision) for a training forward; a no-op for fp32."""
        return self.precision.autocast() if self.precision is not None else contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate a micro-batch's loss: divided by grad_accum_steps (the step applies the mean
        gradient) and, for fp16, multiplied by the loss scale (the trainer unscales before clipping)."""
        if self.precision is not None:
            self.precision.backward(loss)
        else:
            loss.backward()
    verbose: bool = True
    """Whether console messages show (the trainer's ``verbose``: false with ``--quiet``)."""
    show_progress: bool = False
    """Whether progress bars show (the trainer's ``progress``: on a terminal, unless quiet)."""

    @property
    def max_steps(self) -> int:
        return self.recipe.train.max_steps

    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1]."""
        return self.step / self.max_steps

    def log(self, key: str, value: Any) -> None:
        self.metrics[key] = value

    def log_mean(self, key: str, value: float) -> None:
        """Log a per-micro-batch figure (e.g. a part of the loss) as its mean over the step's
        micro-batches, as the trainer's ``train_loss`` is; with one micro-batch, :meth:`log`."""
        sums = self._micro_sums
        if self.micro_batch == 0 or key not in sums:
            sums[key] = (0.0, 0)
        total, n = sums[key]
        sums[key] = (total + float(value), n + 1)
        self.metrics[key] = sums[key][0] / sums[key][1]

    def track(self, items, what: str) -> list:
        """``items`` to work through (end-of-run work, ``Method.finish``), shown: a progress bar on a
        terminal, else one line saying what runs and how many; nothing when quiet (or not rank 0)."""
        items = list(items)
        if not self.verbose or self.rank != 0:
            return items
        if self.show_progress:
            from tqdm import tqdm
            return tqdm(items, desc=what, dynamic_ncols=True)
        print(f"{what}: {len(items)} to go", flush=True)
        return items

    def say(self, text: str) -> None:
        """A console message from a method (a schedule's summary, end-of-run work): printed once, by
        rank 0, unless the run is quiet. Methods print through here, never with ``print``."""
        if self.verbose and self.rank == 0:
            print(text, flush=True)

    def request_rebuild(self, copy_optimizer_state: dict[str, str] | None = None) -> None:
        """After surgery: rebuild the optimizer (and DDP) for the model's current parameters.

        Parameters that survive keep their optimizer state. ``copy_optimizer_state`` maps a new
        parameter's name to an old parameter's name whose AdamW moments it should start from.
        """
        self.rebuild = {**(self.rebuild or {}), **(copy_optimizer_state or {})}
