"""User callbacks: custom logging and monitoring on the events methods see, with no checkpoint state.

A callback observes; it does not change training (that is what a :class:`~leantrain.Method` is for)
and nothing of it is saved, so adding or removing one never affects a resume. Events reach
callbacks after every method has handled them, on every rank (check ``state.rank`` to log once).

    class PrintVal(Callback):
        def on_eval_end(self, state):
            print(state.step, state.val_loss)

    Trainer(recipe, "runs/x", callbacks=[PrintVal()]).fit()
"""
from __future__ import annotations

from typing import Any

from .events import Event
from .state import State


class Callback:
    """Override ``on_<event>(state)`` for the events you need (``on_fit_start``, ``on_step_start``,
    ``on_after_backward``, ``on_step_end``, ``on_eval_start``, ``on_eval_end``, ``on_checkpoint``,
    ``on_fit_end``), ``on_log(row, state)`` for every metrics row (rank 0), and ``close()`` to release
    resources when ``fit`` returns or raises."""

    def on_event(self, event: Event, state: State) -> None:
        handler = getattr(self, f"on_{event.value}", None)
        if handler is not None:
            handler(state)

    def on_log(self, row: dict[str, Any], state: State) -> None:
        """A metrics row as metrics.jsonl holds it (``step``, ``train_loss``, ``val_loss``, ``lr``,
        method metrics named ``method/name``, ...); only on rank 0."""

    def close(self) -> None:
        """``fit`` ended (returned, stopped or raised)."""
