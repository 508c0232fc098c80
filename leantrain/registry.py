"""Registries of models and methods, so the CLI, recipes and tests can enumerate everything."""
from __future__ import annotations

import difflib
import fnmatch
from typing import Callable

from .errors import ConfigError

MODELS: dict[str, tuple[Callable, type]] = {}
MODEL_TASKS: dict[str, str] = {}
METHODS: dict[str, type] = {}
DATA: dict[str, type] = {}


def register_model(name: str, config: type, task: str = "lm") -> Callable:
    """Decorate a factory ``fn(config) -> nn.Module``; ``config`` is its dataclass and ``task`` the
    kind of data it consumes (``lm`` token sequences, ``classification`` labelled arrays). Before
    building, the trainer calls ``config.adapt_to_data(info)`` so the config fills in what the data
    decides (vocabulary, channels, classes) and refuses what it cannot take."""
    def wrap(fn: Callable) -> Callable:
        MODELS[name] = (fn, config)
        MODEL_TASKS[name] = task
        return fn
    return wrap


def register_data(cls: type) -> type:
    """Class decorator for data kinds (:class:`leantrain.data.Task` subclasses, keyed by ``cls.name``)."""
    DATA[cls.name] = cls
    return cls


def register_method(cls: type) -> type:
    """Class decorator for :class:`leantrain.core.method.Method` subclasses (keyed by ``cls.name``)."""
    METHODS[cls.name] = cls
    return cls


def _lookup(table: dict, name: str, kind: str):
    _ensure_loaded()
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown {kind} {name!r}{hint}; known: {', '.join(sorted(table))}")
    return table[name]


def get_model(name: str) -> tuple[Callable, type]:
    return _lookup(MODELS, name, "model")


def get_method(name: str) -> type:
    return _lookup(METHODS, name, "method")


def get_data(name: str) -> type:
    return _lookup(DATA, name, "data kind")


def model_task(name: str) -> str:
    get_model(name)
    return MODEL_TASKS[name]


def list_methods(pattern: str = "*") -> list[type]:
    _ensure_loaded()
    return [METHODS[n] for n in sorted(METHODS) if fnmatch.fnmatch(n, pattern)]


def list_models(pattern: str = "*") -> list[str]:
    _ensure_loaded()
    return [n for n in sorted(MODELS) if fnmatch.fnmatch(n, pattern)]


def list_data(pattern: str = "*") -> list[type]:
    _ensure_loaded()
    return [DATA[n] for n in sorted(DATA) if fnmatch.fnmatch(n, pattern)]


PLUGIN_GROUP = "leantrain.models"
"""Entry-point group of packages that register their own models (``register_model``) on import."""
_plugins: list[str] | None = None


def _ensure_loaded() -> None:
    # Importing the packages runs their @register_* decorators; then the plugins' (once).
    from . import data, methods, models  # noqa: F401
    global _plugins
    if _plugins is None:
        from importlib.metadata import entry_points
        _plugins = []
        for ep in entry_points(group=PLUGIN_GROUP):
            try:
                ep.load()
            except Exception as e:  # a broken plugin is the user's to fix: one line, naming it
                raise ConfigError(f"model plugin {ep.name!r} ({ep.value}, entry point group {PLUGIN_GROUP}) "
                                  f"failed to import: {type(e).__name__}: {e}") from None
            _plugins.append(ep.name)
