"""Benchmark suites (``leantrain bench SUITE``). Each registers (help, add_args, run) in BENCHES."""
from __future__ import annotations

from collections.abc import Callable

BENCHES: dict[str, tuple[str, Callable, Callable]] = {}


def register_bench(name: str, help: str, add_args: Callable = lambda p: None) -> Callable:
    def wrap(run: Callable) -> Callable:
        BENCHES[name] = (help, add_args, run)
        return run
    return wrap


from . import overhead  # noqa: E402,F401  (registers)
