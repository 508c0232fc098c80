"""Loggers for ``train.log_to``: every metrics row (metrics.jsonl, which the trainer always writes)
also goes to a CSV file, TensorBoard event files or a Weights & Biases offline run.

Each is a :class:`~leantrain.core.callback.Callback` made on rank 0 only. Nested values (per-site
rates) are flattened to ``a/b/c`` keys; TensorBoard and W&B take the numbers, the CSV every scalar.
Optional packages are checked when the Trainer is built, before anything is written.
"""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
from pathlib import Path
from typing import Any

from .core.callback import Callback
from .core.checkpoint import write_text_atomic
from .errors import ConfigError


def flatten(row: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}/"))
        elif v is None or isinstance(v, (int, float, str, bool)):
            out[f"{prefix}{k}"] = v
    return out


def numbers(row: dict) -> dict[str, float]:
    """The finite numbers of a flattened row, ``step`` left out (it is the x axis)."""
    return {k: float(v) for k, v in flatten(row).items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _metrics_rows(out_dir: Path) -> list[dict]:
    path = out_dir / "metrics.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


class CSVLogger(Callback):
    """``metrics.csv``: one line per metrics row; the header is the union of the keys seen (the file is
    rewritten when a new key appears, e.g. a method metric after a stage change). On resume it is
    rebuilt from metrics.jsonl, which the trainer has already cut back to the checkpoint."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / "metrics.csv"
        self.rows: list[dict] = []
        self.columns: list[str] = []

    def on_fit_start(self, state) -> None:
        self.rows, self.columns = [], []
        for row in _metrics_rows(self.path.parent):
            self._add(flatten(row))
        self._rewrite()

    def _add(self, flat: dict) -> bool:
        self.rows.append(flat)
        new = [k for k in flat if k not in self.columns]
        self.columns += new
        return bool(new)

    def _rewrite(self) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, self.columns, lineterminator="\n")
        w.writeheader()
        w.writerows(self.rows)
        write_text_atomic(self.path, buf.getvalue())

    def on_log(self, row, state) -> None:
        flat = flatten(row)
        if self._add(flat):
            self._rewrite()
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, self.columns, lineterminator="\n").writerow(flat)


class TensorBoardLogger(Callback):
    """TensorBoard event files in ``tensorboard/`` (torch.utils.tensorboard): every number of a row as
    a scalar at its step. On resume, events after the checkpoint's step are purged."""

    def __init__(self, out_dir: Path):
        self.log_dir = Path(out_dir) / "tensorboard"
        self.writer = None

    def on_fit_start(self, state) -> None:
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(self.log_dir), purge_step=state.step + 1 if state.step else None)

    def on_log(self, row, state) -> None:
        for k, v in numbers(row).items():
            self.writer.add_scalar(k, v, row["step"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class WandbLogger(Callback):
    """A Weights & Biases run in offline mode (``wandb/``; ``wandb sync`` uploads it later if you
    want): the recipe as its config, every number of a row at its step. Never contacts the network."""

    def __init__(self, out_dir: Path, config: dict):
        self.out_dir, self.config, self.run = Path(out_dir), config, None

    def on_fit_start(self, state) -> None:
        import wandb
        self.run = wandb.init(mode="offline", dir=str(self.out_dir), name=self.out_dir.name,
                              project="leantrain", config=self.config)

    def on_log(self, row, state) -> None:
        self.run.log(numbers(row), step=row["step"])

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def make_loggers(log_to: list[str], out_dir: Path, recipe) -> list[Callback]:
    """The loggers ``train.log_to`` names (jsonl is the trainer's own), or a ConfigError naming the
    missing package."""
    loggers: list[Callback] = []
    for name in dict.fromkeys(log_to):
        if name == "csv":
            loggers.append(CSVLogger(out_dir))
        elif name == "tensorboard":
            try:
                import torch.utils.tensorboard  # noqa: F401  (needs the tensorboard package)
            except ImportError:
                raise ConfigError("train.log_to: tensorboard needs the tensorboard package: "
                                  "pip install 'leantrain[tensorboard]'") from None
            loggers.append(TensorBoardLogger(out_dir))
        elif name == "wandb":
            if importlib.util.find_spec("wandb") is None:
                raise ConfigError("train.log_to: wandb needs the wandb package (pip install wandb; leantrain "
                                  "runs it offline, it never uploads)")
            loggers.append(WandbLogger(out_dir, recipe.to_dict()))
    return loggers
