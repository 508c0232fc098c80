"""leantrain: cheaper neural-network training with faithful, measured efficiency methods."""
from .core import Callback, Event, Method, State, Trainer
from .errors import ConfigError, LeantrainError
from .models import GPT, GPTConfig
from .recipe import Recipe, TrainConfig
from .registry import list_methods, list_models, register_method, register_model

__version__ = "0.1.0"
__all__ = ["Callback", "Event", "Method", "State", "Trainer", "Recipe", "TrainConfig", "GPT", "GPTConfig",
           "ConfigError", "LeantrainError", "register_method", "register_model", "list_methods",
           "list_models"]
