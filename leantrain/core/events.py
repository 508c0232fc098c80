"""The training loop's events, in the order one step sees them.

Events named ``*_END``/``AFTER_*`` are dispatched to methods in reverse order, so a method that
changed something at the matching start event can undo it after the methods listed later did.
"""
from __future__ import annotations

from enum import Enum


class Event(str, Enum):
    FIT_START = "fit_start"
    """Model, optimizer and (on resume) checkpoint are loaded. Check the plan, print summaries."""
    STEP_START = "step_start"
    """Safe point before a step: no gradients pending. Schedules set masks and rates here;
    surgery changes the model here and calls ``state.request_rebuild()``."""
    AFTER_BACKWARD = "after_backward"
    """Gradients exist; clipping and the optimizer step follow."""
    STEP_END = "step_end"
    """The optimizer stepped; ``state.step`` counts it and ``state.loss`` holds its loss."""
    EVAL_START = "eval_start"
    """Before evaluation (the model is already in eval mode: the full network runs)."""
    CHECKPOINT = "checkpoint"
    """A checkpoint is about to be written (every rank): bring what it must hold into place (e.g.
    parameters and optimizer state that live on other ranks)."""
    EVAL_END = "eval_end"
    """``state.val_loss`` (and ``state.best_val_loss``) hold the new evaluation."""
    FIT_END = "fit_end"
    """Training stopped (finished or ``until`` reached)."""

    @property
    def reverse(self) -> bool:
        return self.name.endswith("_END") or self.name.startswith("AFTER_")
