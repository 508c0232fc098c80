"""Benchmark suites (``leantrain bench SUITE``). Each registers (help, add_args, run) in BENCHES."""
from __future__ import annotations

from collections.abc import Callable

BENCHES: dict[str, tuple[str, Callable, Callable]] = {}


def register_bench(name: str, help: str, add_args: Callable = lambda p: None) -> Callable:
    def wrap(run: Callable) -> Callable:
        BENCHES[name] = (help, add_args, run)
        return run
    return wrap


def _load_suites() -> None:
    """Import every suite module in this package (each registers itself)."""
    import importlib
    import pkgutil
    for mod in pkgutil.iter_modules(__path__):
        if mod.name != "common":
            importlib.import_module(f"{__name__}.{mod.name}")


_load_suites()
