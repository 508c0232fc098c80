"""Data kinds (tasks), one file each, chosen by ``data.name`` in a recipe. Importing registers them.

A data kind turns its config into train / validation (/ test) splits, batches drawn from a seeded
generator (checkpointed), evaluation batches, and a :class:`DataInfo` that tells the model what the
data decides (vocabulary, input shape, classes).
"""
from __future__ import annotations

from dataclasses import dataclass

from .text import BUNDLED, BatchSampler, CharData, DataConfig, fixed_batches, split_windows


@dataclass(frozen=True)
class DataInfo:
    """What a model must know about the data it consumes (``ModelConfig.adapt_to_data``)."""
    task: str
    """``lm`` (token sequences, next-token targets) or ``classification`` (arrays with labels)."""
    vocab_size: int | None = None
    """lm: number of distinct tokens."""
    input_shape: tuple[int, ...] | None = None
    """classification: one sample's shape, channels first: (C, L) for signals, (C, H, W) for images."""
    num_classes: int | None = None
    """classification: number of labels."""


__all__ = ["DataInfo", "BUNDLED", "BatchSampler", "CharData", "DataConfig", "fixed_batches", "split_windows"]
