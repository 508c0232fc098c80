"""``text``: character-level language modelling on a text file (the default data kind).

The bundled corpus (``datasets/shakespeare_char.txt``, built by ``scripts/build_shakespeare.py``)
is used when ``data.path`` is empty. The first ``1 - val_fraction`` of the text trains, the rest
validates (nanoGPT's split). Training batches are random windows drawn from a seeded
``torch.Generator`` (so a run, and a resumed run, sees the same batches); under DDP each rank draws
from its own contiguous shard of the training text with its own generator. Validation uses a fixed
list of windows drawn once from ``val_seed``, identical for every run and method.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import check
from ..errors import LeantrainError
from ..registry import register_data
from . import DataInfo, Sampler, Task

BUNDLED = Path(__file__).parent / "datasets" / "shakespeare_char.txt"


@dataclass
class TextConfig:
    path: str | None = None
    """Plain-text file to model character by character; null = the bundled Shakespeare corpus."""
    val_fraction: float = 0.1
    """Share of the text (taken from its end) used for validation."""
    val_seed: int = 1337
    """Seed of the fixed validation (and train-evaluation) windows; same for every run."""
    train_chars: int | None = None
    """Use only the first N characters of the training split (small-data / overfitting regimes)."""

    def validate(self) -> None:
        check(0.0 < self.val_fraction < 1.0, "val_fraction", f"must be in (0, 1), got {self.val_fraction}")
        check(self.train_chars is None or self.train_chars > 0, "train_chars", "must be positive")


def read_text(path: Path) -> str:
    if not path.exists():
        raise LeantrainError(f"data file not found: {path}")
    if not path.is_file():
        raise LeantrainError(f"data path is not a file: {path}")
    raw = path.read_bytes()
    if not raw.strip():
        raise LeantrainError(f"data file is empty: {path}")
    if b"\x00" in raw[:65536]:
        raise LeantrainError(f"data file looks binary (NUL bytes), expected plain text: {path}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LeantrainError(f"data file is not UTF-8 text ({e.reason} at byte {e.start}): {path}") from None


@register_data
class TextTask(Task):
    """Character-level text: encoded train/val token tensors plus the vocabulary."""
    name = "text"
    Config = TextConfig
    task = "lm"
    unit = "tokens"
    eval_batch_size = 64  # windows per batch of a whole-split pass (faster on CPU than larger ones)

    def __init__(self, cfg: TextConfig):
        super().__init__(cfg)
        self.path = Path(cfg.path) if cfg.path else BUNDLED
        text = read_text(self.path)
        self.chars = sorted(set(text))
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        data = torch.from_numpy(self._encode_bulk(text)).long()
        n = int(len(data) * (1 - cfg.val_fraction))
        self.train, self.val = data[:n], data[n:]
        if cfg.train_chars is not None:
            self.train = self.train[: cfg.train_chars]

    def _encode_bulk(self, text: str):
        table = np.zeros(max(map(ord, self.chars)) + 1, dtype=np.int32)
        for c, i in self.stoi.items():
            table[ord(c)] = i
        return table[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)]

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, s: str) -> list[int]:
        unknown = sorted(set(s) - set(self.stoi))
        if unknown:
            raise LeantrainError(f"prompt has characters outside the vocabulary: {''.join(unknown)!r}")
        return [self.stoi[c] for c in s]

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)

    def check_block_size(self, block_size: int, batch_size: int) -> None:
        for name, split in (("training", self.train), ("validation", self.val)):
            if len(split) <= block_size + 1:
                raise LeantrainError(
                    f"model.block_size={block_size} is longer than the {name} split of {self.path} "
                    f"({len(split)} characters); use a longer text or a shorter block_size")

    # -- the Task interface
    def info(self) -> DataInfo:
        return DataInfo(task="lm", vocab_size=self.vocab_size)

    def check_model(self, model_cfg, batch_size: int, world: int) -> None:
        self.check_block_size(model_cfg.block_size, batch_size)

    def items_per_sample(self, model_cfg) -> int:
        return model_cfg.block_size

    def meta(self) -> dict:
        return {"vocab": self.chars}

    def fingerprint(self) -> dict:
        from . import file_digest
        path = f"bundled:{self.path.name}" if self.path == BUNDLED else str(self.path)
        return {"kind": self.name, "path": path, **file_digest(self.path), "vocab_size": self.vocab_size}

    def sampler(self, batch_size: int, seed: int, rank: int, world: int, model_cfg) -> "BatchSampler":
        return BatchSampler(self.train, model_cfg.block_size, batch_size, seed, rank, world)

    def has_fixed_eval(self) -> bool:
        return True

    def eval_batches(self, split: str, batch_size: int, model_cfg, *, whole: bool = False, n_batches: int = 0):
        """``n_batches`` fixed batches of windows (drawn once from ``val_seed``; ``val_seed + 1`` for
        the training split) or, with ``whole``, every non-overlapping window of the split."""
        if split not in self.splits:
            raise LeantrainError(f"text data has no {split!r} split (it has {', '.join(self.splits)})")
        data = self.train if split == "train" else self.val
        if whole:
            return list(split_windows(data, model_cfg.block_size, batch_size))
        seed = self.cfg.val_seed + (1 if split == "train" else 0)
        return fixed_batches(data, model_cfg.block_size, batch_size, n_batches, seed)


def windows(data: torch.Tensor, starts: torch.Tensor, block_size: int):
    x = torch.stack([data[i: i + block_size] for i in starts.tolist()])
    y = torch.stack([data[i + 1: i + 1 + block_size] for i in starts.tolist()])
    return x, y


class BatchSampler(Sampler):
    """Random training windows from a seeded generator; its state goes into checkpoints."""

    def __init__(self, data: torch.Tensor, block_size: int, batch_size: int, seed: int,
                 rank: int = 0, world: int = 1):
        shard = len(data) // world
        self.data = data[rank * shard: (rank + 1) * shard] if world > 1 else data
        if len(self.data) <= block_size + 1:
            raise LeantrainError(f"each of {world} ranks' training shards is shorter than block_size")
        self.block_size, self.batch_size = block_size, batch_size
        self.gen = torch.Generator().manual_seed(seed + 1_000_003 * rank)

    def next(self):
        starts = torch.randint(len(self.data) - self.block_size, (self.batch_size,), generator=self.gen)
        return windows(self.data, starts, self.block_size)

    def state(self) -> dict[str, torch.Tensor]:
        return {"sampler": self.gen.get_state()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.gen.set_state(state["sampler"])


def split_windows(data: torch.Tensor, block_size: int, batch_size: int):
    """Every non-overlapping window of a split, in order, batched: for whole-split evaluation."""
    n = (len(data) - 1) // block_size
    starts = torch.arange(n) * block_size
    for chunk in starts.split(batch_size):
        yield windows(data, chunk, block_size)


def fixed_batches(data: torch.Tensor, block_size: int, batch_size: int, n_batches: int, seed: int):
    """The same ``n_batches`` windows every time: evaluations are comparable across runs."""
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(len(data) - block_size, (n_batches, batch_size), generator=gen)
    return [windows(data, s, block_size) for s in starts]
