"""The small core: events, state, the method contract, the loop, checkpoints, DDP helpers."""
from .callback import Callback
from .events import Event
from .method import Method, NoOptions
from .state import State
from .trainer import Trainer

__all__ = ["Callback", "Event", "Method", "NoOptions", "State", "Trainer"]
