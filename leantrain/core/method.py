"""The method contract. A method is one object with a config, hooks for events, and its state.

Three kinds (``kind``):

* ``schedule`` — changes run-time state at events (subnetwork masks, dropout rates).
* ``surgery`` — changes the model's parameters at a safe point (``STEP_START``) and calls
  ``state.request_rebuild()``; the trainer rebuilds the optimizer and re-wraps DDP. On resume,
  ``restore`` replays the structural change before the checkpoint's weights are loaded.
* ``step_strategy`` — replaces forward/loss/backward by ``training_step``. At most one per run.

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

    def __init__(self, cfg: Any = None):
        self.cfg = cfg if cfg is not None else self.Config()

    # -- lifecycle -----------------------------------------------------------------------------
    def check(self, state: State) -> None:
        """Validate against the run (steps, model shape) before anything is written; raise ConfigError.
        (The trainer has already validated ``cfg`` itself, also for methods made in Python.)"""

    def on_event(self, event: Event, state: State) -> None:
        """React to an event. Schedules and surgery do their work here."""

    def training_step(self, state: State, model: torch.nn.Module, x: torch.Tensor,
                      y: torch.Tensor) -> torch.Tensor:
        """Step strategies only: forward + backward on ``model`` (maybe DDP-wrapped); return the loss."""
        raise NotImplementedError

    def flop_key(self, state: State) -> Hashable:
        """Anything besides the batch and ``model.shape_key()`` that changes a step's FLOPs."""
        return None

    # -- checkpointing -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state needed to resume exactly."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def restore(self, state: State) -> None:
        """Surgery methods: after ``load_state_dict``, rebuild the model structure the checkpoint
        was saved with (its weights are loaded afterwards)."""

    @classmethod
    def summary(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
