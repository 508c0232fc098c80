"""The method contract. A method is one object with a config, hooks for events, and its state.

Three kinds (``kind``):

* ``schedule`` — changes run-time state at events (subnetwork masks, dropout rates).
* ``surgery`` — changes the model's parameters at a safe point (``STEP_START``) and calls
  ``state.request_rebuild()``; the trainer rebuilds the optimizer and re-wraps DDP. On resume,
  ``restore`` replays the structural change before the checkpoint's weights are loaded.
* ``step_strategy`` — replaces forward/loss/backward by ``training_step``. At most one per run.

A surgery method may also take over the steps of a phase (e.g. growth training its operator before
the target trains normally): it sets ``replaces_steps`` and answers ``replaces_step(state)`` per step;
it then counts as the run's one step strategy.

Lifecycle: ``check`` (validate against the built model) → ``setup`` (attach modules or change the
model before the optimizer exists; also on resume, before the checkpoint is loaded) → ``restore``
(on resume: replay step-dependent structure) → events → ``finish`` (long end-of-run work, after the
final checkpoint). State that is not JSON (tensors of an operator, its own optimizer) goes through
``tensors`` / ``load_tensors`` into the checkpoint. Console messages go through ``state.say`` (quiet
runs stay quiet), long work through ``state.track`` (a progress bar).

Capability flags tell the trainer what a method needs instead of the trainer knowing methods.
"""
from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from .events import Event
from .state import State


@dataclass
class NoOptions:
    """This method takes no options."""


class Method:
    name: ClassVar[str] = ""
    Config: ClassVar[type] = NoOptions
    kind: ClassVar[Literal["schedule", "surgery", "step_strategy"]] = "schedule"
    find_unused_parameters: ClassVar[bool] = False
    """True if some parameters may get no gradient in a step (DDP must be told)."""
    exclusive_group: ClassVar[str | None] = None
    """Methods sharing a group cannot be combined (e.g. two depth-dropping methods)."""
    replaces_steps: ClassVar[bool] = False
    """True if ``training_step`` replaces some steps (every step strategy; surgery with a phase)."""
    accumulates: ClassVar[bool] = False
    """Step strategies: ``training_step`` runs once per micro-batch of ``train.grad_accum_steps``,
    back-propagates through ``state.backward`` (which divides by N) and steps optimizers of its own
    only on ``state.last_micro_batch``. A run with grad_accum_steps > 1 refuses a strategy without it."""
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    """Step strategies: the ``train.precision`` values ``training_step`` honours (its forward under
    ``state.autocast()``, its backward through ``state.backward``); a run with another is refused."""
    handles_gradients: ClassVar[bool] = False
    """True if ``training_step`` itself averages gradients across ranks and clips them (e.g. per
    module, with several backward passes a step): the trainer then neither wraps the model in DDP
    (it broadcasts rank 0's weights once instead) nor clips globally."""

    def __init__(self, cfg: Any = None):
        self.cfg = cfg if cfg is not None else self.Config()

    # -- lifecycle -----------------------------------------------------------------------------
    def check(self, state: State) -> None:
        """Validate against the run (steps, model shape) before anything is written; raise ConfigError.
        (The trainer has already validated ``cfg`` itself, also for methods made in Python.)"""

    def setup(self, state: State) -> None:
        """Once, after the model is built and checked, before the optimizer exists: attach modules to
        the model or replace ``state.model``. Parameters present after setup are trained by the run's
        optimizer. When resuming (or loading a trained model), ``load_state_dict`` has already run, so
        setup knows how far training got; the checkpoint's weights are loaded afterwards."""

    def on_event(self, event: Event, state: State) -> None:
        """React to an event. Schedules and surgery do their work here."""

    def takes_step(self, state: State) -> bool:
        """Whether ``training_step`` replaces this step (only asked if ``replaces_steps``)."""
        return True

    def training_step(self, state: State, model: torch.nn.Module, x: torch.Tensor,
                      y: torch.Tensor) -> torch.Tensor:
        """Step strategies only: forward + backward on ``model`` (maybe DDP-wrapped or compiled) for one
        micro-batch; return its loss (detached). A strategy that steps optimizers of its own must not
        step them on a non-finite loss (see ``state.on_nonfinite``)."""
        raise NotImplementedError

    def finish(self, state: State) -> bool:
        """End-of-run work that may take long (e.g. scoring every configuration of a family), on a run
        that reached ``max_steps``: it runs after ``FIT_END`` and after the final checkpoint is written,
        so an interruption loses nothing — ``--resume`` of that checkpoint runs only this again. Keep its
        results in the method's state; return True if it did work (the trainer then checkpoints again),
        False if there was nothing (left) to do. Show long work with ``state.track``."""
        return False

    def flop_key(self, state: State) -> Hashable:
        """Anything besides the batch and ``model.shape_key()`` that changes a step's FLOPs."""
        return None

    # -- checkpointing -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state needed to resume exactly."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def tensors(self) -> dict[str, torch.Tensor]:
        """Tensor state outside the model and the run's optimizer (saved with safetensors)."""
        return {}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        pass

    def restore(self, state: State) -> None:
        """Surgery methods: after ``load_state_dict``, rebuild the model structure the checkpoint
        was saved with (its weights are loaded afterwards)."""

    @property
    def takes_steps(self) -> bool:
        """Whether this method may replace training steps (a step strategy, or ``replaces_steps``)."""
        return self.kind == "step_strategy" or self.replaces_steps

    @classmethod
    def summary(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
