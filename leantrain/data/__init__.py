"""Data kinds, one file each, chosen by ``data.name`` in a recipe (default ``text``).

A data kind (a :class:`Task` subclass registered with ``@register_data``) owns everything the
trainer must not know about the data: reading and checking it, the splits, training batches from a
seeded generator (its state is checkpointed, so a resumed run sees the same batches), evaluation
batches, how a batch is scored, and a :class:`DataInfo` that tells the model what the data decides
(vocabulary, input shape, classes). Kinds: ``text`` (character-level language modelling),
``tokens`` (nanoGPT-format token shards, memory-mapped) and ``hf`` (a local Hugging Face dataset,
tokenized once into cached shards) for subword language modelling, ``mnist1d``, ``npz`` and
``cifar10`` (classification, in ``arrays.py`` / ``mnist1d.py``). Helpers, not kinds:
``tokenizer.py`` (BPE training and loading, the codec a checkpoint decodes with) and ``shards.py``
(writing shards: ``leantrain tokenize``).
"""
from __future__ import annotations

import hashlib
import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

Batch = tuple[torch.Tensor, torch.Tensor]


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


class Sampler:
    """Training batches from a seeded generator; ``state()`` / ``load_state()`` for exact resume."""

    def next(self) -> Batch:
        raise NotImplementedError

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors that restore the sampler exactly (keys are names, stored per rank)."""
        raise NotImplementedError

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError


class Task:
    """A data kind. Subclasses set ``name``, ``Config``, ``task`` and ``unit`` and implement the rest."""
    name: ClassVar[str] = ""
    Config: ClassVar[type]
    task: ClassVar[str] = "lm"
    """``lm`` or ``classification``: which models can consume it (see ``register_model``)."""
    unit: ClassVar[str] = "tokens"
    """What throughput counts: ``tokens`` (per sequence: the model's context) or ``samples``."""
    splits: ClassVar[tuple[str, ...]] = ("train", "val")
    """Splits this data has (``test`` only where one is held out)."""
    eval_batch_size: ClassVar[int] = 256
    """Samples per batch when a whole split is evaluated (results do not depend on it; speed does)."""

    def __init__(self, cfg):
        self.cfg = cfg

    # -- what the model and the run must know
    def info(self) -> DataInfo:
        raise NotImplementedError

    def check_model(self, model_cfg, batch_size: int, world: int) -> None:
        """Refuse a model config that cannot run on this data (e.g. a context longer than a split)."""

    def items_per_sample(self, model_cfg) -> int:
        """Units of throughput in one sample (tokens of a sequence; 1 for classification)."""
        return 1

    def meta(self) -> dict:
        """JSON facts a checkpoint needs to use the model without the data (e.g. the vocabulary)."""
        return {}

    def fingerprint(self) -> dict:
        """A JSON identity of the data's *content*, stored in checkpoints as ``data_fingerprint``: a
        resumed run refuses data with another one. Kinds add sizes and a content hash (cheap for huge
        files: see :func:`file_digest`); a ``path`` entry is informational only (moved data with the same
        content is the same data). This default — the kind and ``meta()`` — suits data that ``meta()``
        already identifies; a kind reading files or generating data should override it."""
        return {"kind": self.name, **self.meta()}

    # -- batches
    def sampler(self, batch_size: int, seed: int, rank: int, world: int, model_cfg) -> Sampler:
        raise NotImplementedError

    def eval_batches(self, split: str, batch_size: int, model_cfg, *, whole: bool = False,
                     n_batches: int = 0) -> list[Batch]:
        """Evaluation batches of ``split``: the whole split, or (where the data allows a cheaper
        figure, see ``has_fixed_eval``) ``n_batches`` fixed batches, the same for every run."""
        raise NotImplementedError

    def has_fixed_eval(self) -> bool:
        """True if ``eval_batches(whole=False)`` is a subset (fixed batches), not the whole split."""
        return False

    # -- scoring
    def score(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-sample losses (mean over a sequence's tokens) and, for classification, per-sample
        correctness (1.0 right, 0.0 wrong); None where error is not defined."""
        if self.task == "lm":
            B = y.size(0)
            nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1), reduction="none")
            return nll.view(B, -1).mean(1), None
        nll = F.cross_entropy(logits.float(), y, reduction="none")
        return nll, (logits.argmax(-1) == y).float()


DIGEST_WHOLE_BYTES = 64 << 20
"""Files up to this size are hashed whole; larger ones by their size and first and last MiB."""


def file_digest(path: str | Path) -> dict:
    """``{"bytes": size, "sha256": ...}`` of a file: the whole file up to DIGEST_WHOLE_BYTES, else the
    size and the first and last MiB (``"hashed": "first and last MiB"``) — a fingerprint that costs the
    same for a 100 GB shard as for a 100 MB one and still tells a different or truncated file."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= DIGEST_WHOLE_BYTES:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
            return {"bytes": size, "sha256": h.hexdigest()}
        h.update(f.read(1 << 20))
        f.seek(size - (1 << 20))
        h.update(f.read(1 << 20))
    return {"bytes": size, "sha256": h.hexdigest(), "hashed": "first and last MiB"}


def tensor_digest(*tensors) -> str:
    """sha256 over the bytes (and dtypes and shapes) of tensors or arrays: data held in memory."""
    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(t.numpy() if isinstance(t, torch.Tensor) else t)
        h.update(f"{a.dtype}{tuple(a.shape)}".encode())
        h.update(memoryview(a).cast("B"))  # no copy
    return h.hexdigest()


def for_model(task: Task, model_cfg) -> Task:
    """The data as ``model_cfg``'s model trains on it: a config may wrap it (``wrap_data``, e.g. an
    hf BERT masks the windows for masked language modelling); unchanged otherwise."""
    wrap = getattr(model_cfg, "wrap_data", None)
    return wrap(task) if wrap is not None else task


def load_kinds() -> None:
    """Import every data-kind module in this package (each registers itself)."""
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")


from .text import BUNDLED, BatchSampler, TextConfig, TextTask, fixed_batches, split_windows  # noqa: E402

load_kinds()

__all__ = ["for_model", "DataInfo", "Sampler", "Task", "Batch", "BUNDLED", "BatchSampler", "TextConfig",
           "TextTask", "file_digest", "fixed_batches", "split_windows", "tensor_digest"]
