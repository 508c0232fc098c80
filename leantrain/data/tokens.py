"""``tokens``: language modelling on token shards in nanoGPT's format.

A directory holds ``train.bin`` and ``val.bin`` (optionally ``test.bin``): headerless arrays of
token ids, ``uint16`` (nanoGPT's ``prepare.py``) or ``uint32``, and a ``meta.json`` beside them::

    {"vocab_size": 50257, "dtype": "uint16", "tokenizer": "tokenizer.json"}

(``tokenizer`` optional: a ``tokenizer.json`` in the directory, used to decode samples; the recipe's
``data.vocab_size`` / ``data.dtype`` may stand in for ``meta.json``). nanoGPT's ``meta.pkl`` is
refused: leantrain never unpickles. ``leantrain tokenize`` writes such a directory from text.

Shards are read through ``np.memmap``: opening a multi-GB split costs no memory, and a batch reads
only its windows. Training windows come from the same seeded, checkpointed, per-rank sampler as
``text`` (each rank draws from its own contiguous shard with its own generator). Evaluation during
training uses fixed batches drawn once from ``val_seed``; a whole-split evaluation scores every
non-overlapping window when the split has at most ``eval_windows`` of them, else a fixed subset of
``eval_windows`` non-overlapping windows drawn once from ``val_seed`` (the same for every run).
Ids are checked against ``vocab_size`` on a sample of every split at start and in every batch.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..config import check
from ..errors import LeantrainError
from ..registry import register_data
from . import DataInfo, Task
from .text import BatchSampler

DTYPES = {"uint16": np.uint16, "uint32": np.uint32}
SPLIT_FILES = {"train": "train.bin", "val": "val.bin", "test": "test.bin"}
FULL_CHECK_TOKENS = 1 << 23
"""Splits up to this many tokens have every id checked at start; larger ones a spread sample."""
SAMPLE_CHUNKS, CHUNK_TOKENS = 64, 1 << 16
META_HELP = ('write a meta.json beside the shards instead, e.g. {"vocab_size": 65, "dtype": "uint16"} '
             '(optionally "tokenizer": "tokenizer.json"), or set data.vocab_size in the recipe')


@dataclass
class TokensConfig:
    path: str | None = None
    """Directory holding train.bin and val.bin (optionally test.bin) of token ids, as nanoGPT's
    prepare.py writes them, and a meta.json (vocab_size, dtype, tokenizer)."""
    dtype: Literal["uint16", "uint32"] | None = None
    """Element type of the shards; null = meta.json's, else uint16 (nanoGPT's)."""
    vocab_size: int | None = None
    """Number of token ids; null = meta.json's. Every id must be below it."""
    val_seed: int = 1337
    """Seed of the fixed evaluation windows (and of the subset a large split is scored on)."""
    eval_windows: int = 4096
    """Whole-split evaluation scores every non-overlapping window of a split with at most this many;
    a larger split is scored on this many of them, drawn once from val_seed. 0 = always every window."""

    def validate(self) -> None:
        check(bool(self.path), "path", "required: the directory holding train.bin and val.bin")
        check(self.vocab_size is None or self.vocab_size > 0, "vocab_size", "must be positive")
        check(self.eval_windows >= 0, "eval_windows", "must be ≥ 0")


def read_meta_json(directory: Path) -> dict:
    f = directory / "meta.json"
    if not f.is_file():
        if (directory / "meta.pkl").exists():
            raise LeantrainError(f"{directory}/meta.pkl is a pickle and leantrain never unpickles; "
                                 f"{META_HELP}")
        return {}
    try:
        meta = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LeantrainError(f"{f} is not valid JSON ({e}); {META_HELP}") from None
    if not isinstance(meta, dict):
        raise LeantrainError(f"{f} must hold a JSON object, got {type(meta).__name__}; {META_HELP}")
    v = meta.get("vocab_size")
    if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
        raise LeantrainError(f"{f}: vocab_size must be a positive integer, got {v!r}")
    if meta.get("dtype") is not None and meta["dtype"] not in DTYPES:
        raise LeantrainError(f"{f}: dtype must be one of {', '.join(DTYPES)}, got {meta['dtype']!r}")
    if meta.get("tokenizer") is not None and not isinstance(meta["tokenizer"], str):
        raise LeantrainError(f"{f}: tokenizer must name a file beside the shards, got {meta['tokenizer']!r}")
    return meta


def file_digest(path: Path, edge: int = 1 << 20) -> str:
    """SHA-256 of a file's size, first and last ``edge`` bytes: cheap for huge files."""
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(edge))
        if path.stat().st_size > edge:
            f.seek(max(path.stat().st_size - edge, edge))
            h.update(f.read(edge))
    return h.hexdigest()


class WindowBatches(Sequence):
    """Batches of windows at ``starts`` of a memmapped split, read when indexed (never all at once)."""

    def __init__(self, task: "TokensTask", split: str, starts: torch.Tensor, block_size: int, batch_size: int):
        self.task, self.split, self.block_size = task, split, block_size
        self.chunks = list(starts.split(batch_size)) if len(starts) else []

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i):
        if isinstance(i, slice):
            sub = WindowBatches(self.task, self.split, torch.empty(0, dtype=torch.long), self.block_size, 1)
            sub.chunks = self.chunks[i]
            return sub
        return self.task.windows(self.split, self.chunks[i], self.block_size)


class ShardSampler(BatchSampler):
    """:class:`~leantrain.data.text.BatchSampler` (same generator, same starts, same per-rank shards)
    over a memmapped split; every batch's ids are checked against the vocabulary."""

    def __init__(self, task: "TokensTask", block_size: int, batch_size: int, seed: int, rank: int, world: int):
        super().__init__(task.arrays["train"], block_size, batch_size, seed, rank, world)
        self.task = task
        self.offset = (len(task.arrays["train"]) // world) * rank if world > 1 else 0

    def next(self):
        starts = torch.randint(len(self.data) - self.block_size, (self.batch_size,), generator=self.gen)
        return self.task.windows("train", starts + self.offset, self.block_size)


@register_data
class TokensTask(Task):
    """Token shards (nanoGPT's train.bin / val.bin, uint16 or uint32), memory-mapped."""
    name = "tokens"
    Config = TokensConfig
    task = "lm"
    unit = "tokens"
    eval_batch_size = 64

    def __init__(self, cfg: TokensConfig):
        super().__init__(cfg)
        self.open(Path(cfg.path), cfg.dtype, cfg.vocab_size)

    # -- opening and checking
    def open(self, directory: Path, dtype: str | None, vocab_size: int | None) -> None:
        if not directory.exists():
            raise LeantrainError(f"token data directory not found: {directory}")
        if not directory.is_dir():
            raise LeantrainError(f"token data path is not a directory (expected train.bin, val.bin inside): "
                                 f"{directory}")
        self.directory = directory
        meta = read_meta_json(directory)
        self.meta_json = meta
        for key, mine in (("dtype", dtype), ("vocab_size", vocab_size)):
            if mine is not None and meta.get(key) is not None and meta[key] != mine:
                raise LeantrainError(f"data.{key}={mine!r} disagrees with {directory}/meta.json ({meta[key]!r})")
        self.dtype = dtype or meta.get("dtype") or "uint16"
        self.vocab_size = vocab_size or meta.get("vocab_size")
        if self.vocab_size is None:
            raise LeantrainError(f"the vocabulary size of {directory} is unknown: {META_HELP}")
        if self.dtype == "uint16" and self.vocab_size > 1 << 16:
            raise LeantrainError(f"vocab_size {self.vocab_size} does not fit uint16 shards; write them as "
                                 "uint32 (dtype: uint32)")
        missing = [SPLIT_FILES[s] for s in ("train", "val") if not (directory / SPLIT_FILES[s]).is_file()]
        if missing:
            raise LeantrainError(f"{directory} has no {' or '.join(missing)} (token shards: train.bin, val.bin, "
                                 "optionally test.bin)")
        self.splits = tuple(s for s in SPLIT_FILES if (directory / SPLIT_FILES[s]).is_file())
        self.arrays = {s: self._memmap(s) for s in self.splits}
        for s in self.splits:
            self._check_ids(s)
        self.tokenizer_text = self._read_tokenizer(meta.get("tokenizer"))

    def _memmap(self, split: str) -> np.ndarray:
        f = self.directory / SPLIT_FILES[split]
        size, item = f.stat().st_size, np.dtype(DTYPES[self.dtype]).itemsize
        if size == 0:
            raise LeantrainError(f"token shard {f} is empty")
        if size % item:
            raise LeantrainError(f"token shard {f} has {size} bytes, not a multiple of {item} ({self.dtype}); "
                                 "wrong dtype or a truncated file")
        return np.memmap(f, dtype=DTYPES[self.dtype], mode="r")

    def _check_ids(self, split: str) -> None:
        """Every id of a small split, or SAMPLE_CHUNKS spread chunks of a large one, below vocab_size."""
        a = self.arrays[split]
        if len(a) <= FULL_CHECK_TOKENS:
            spans = [(i, min(i + FULL_CHECK_TOKENS, len(a))) for i in range(0, len(a), FULL_CHECK_TOKENS)]
        else:
            spans = [(int(i), int(i) + CHUNK_TOKENS)
                     for i in np.linspace(0, len(a) - CHUNK_TOKENS, SAMPLE_CHUNKS).astype(np.int64)]
        for lo, hi in spans:
            self._check_range(split, a[lo:hi], lo)

    def _check_range(self, split: str, ids: np.ndarray, offset: int) -> None:
        top = int(ids.max())
        if top >= self.vocab_size:
            at = offset + int(np.argmax(ids >= self.vocab_size))
            raise LeantrainError(f"token id {top} at position {at} of {self.directory / SPLIT_FILES[split]} is "
                                 f"≥ vocab_size {self.vocab_size}")

    def _read_tokenizer(self, name: str | None) -> str | None:
        if name is None:
            return None
        f = self.directory / name
        if not f.is_file():
            raise LeantrainError(f"{self.directory}/meta.json names tokenizer {name!r}, but {f} does not exist")
        text = f.read_text(encoding="utf-8", errors="replace")
        try:
            from .tokenizer import tokenizer_from_str
            tok = tokenizer_from_str(text, str(f))
        except ImportError:  # pragma: no cover - without the hf extra the text is kept unchecked
            return text
        if tok.get_vocab_size(with_added_tokens=True) > self.vocab_size:
            raise LeantrainError(f"tokenizer {f} has {tok.get_vocab_size(with_added_tokens=True)} tokens, more "
                                 f"than vocab_size {self.vocab_size}")
        return text

    # -- windows
    def windows(self, split: str, starts: torch.Tensor, block_size: int):
        """(x, y) int64 batches of the windows at ``starts``; ids checked against the vocabulary."""
        a = self.arrays[split]
        w = np.stack([a[s: s + block_size + 1] for s in starts.tolist()])
        if int(w.max()) >= self.vocab_size:
            row = int(np.argmax((w >= self.vocab_size).any(1)))
            self._check_range(split, w[row], int(starts[row]))
        t = torch.from_numpy(w.astype(np.int64))
        return t[:, :-1].contiguous(), t[:, 1:].contiguous()

    def tokens(self, split: str) -> int:
        return len(self.arrays[split])

    def whole_starts(self, split: str, block_size: int) -> torch.Tensor:
        """Starts of the windows a whole-split evaluation scores (see the module docstring)."""
        n = (len(self.arrays[split]) - 1) // block_size
        idx = torch.arange(n)
        cap = self.cfg.eval_windows
        if cap and n > cap:
            gen = torch.Generator().manual_seed(self.cfg.val_seed + 2)
            idx = torch.randperm(n, generator=gen)[:cap].sort().values
        return idx * block_size

    def is_subset(self, split: str, block_size: int) -> bool:
        """True if a whole-split evaluation of ``split`` scores a subset (the split is large)."""
        n = (len(self.arrays[split]) - 1) // block_size
        return bool(self.cfg.eval_windows) and n > self.cfg.eval_windows

    # -- the Task interface
    def info(self) -> DataInfo:
        return DataInfo(task="lm", vocab_size=self.vocab_size)

    def check_model(self, model_cfg, batch_size: int, world: int) -> None:
        block = model_cfg.block_size
        for split in self.splits:
            n = len(self.arrays[split])
            if n <= block + 1:
                raise LeantrainError(f"model.block_size={block} is longer than the {split} split of "
                                     f"{self.directory} ({n} tokens); use more data or a shorter block_size")
        if len(self.arrays["train"]) // world <= block + 1:
            raise LeantrainError(f"each of {world} ranks' training shards ({len(self.arrays['train']) // world} "
                                 f"tokens) is shorter than block_size {block}")

    def items_per_sample(self, model_cfg) -> int:
        return model_cfg.block_size

    def meta(self) -> dict:
        return {"tokenizer": self.tokenizer_text} if self.tokenizer_text is not None else {}

    def fingerprint(self) -> dict:
        """Kind, directory, dtype, vocabulary and per split its size and a hash of its first and last
        MiB; meta.json and the tokenizer by hash."""
        files = {s: {"bytes": (self.directory / SPLIT_FILES[s]).stat().st_size,
                     "sha256_edges": file_digest(self.directory / SPLIT_FILES[s])} for s in self.splits}
        return {"kind": self.name, "path": str(self.directory.resolve()), "dtype": self.dtype, "vocab_size": self.vocab_size,
                "splits": files,
                "meta_sha256": hashlib.sha256(json.dumps(self.meta_json, sort_keys=True).encode()).hexdigest(),
                "tokenizer_sha256": (None if self.tokenizer_text is None
                                     else hashlib.sha256(self.tokenizer_text.encode()).hexdigest())}

    def sampler(self, batch_size: int, seed: int, rank: int, world: int, model_cfg) -> ShardSampler:
        return ShardSampler(self, model_cfg.block_size, batch_size, seed, rank, world)

    def has_fixed_eval(self) -> bool:
        return True

    def eval_batches(self, split: str, batch_size: int, model_cfg, *, whole: bool = False, n_batches: int = 0):
        """``n_batches`` fixed batches (drawn once from ``val_seed``, ``val_seed + 1`` for the training
        split, as text does) or, with ``whole``, the windows of :meth:`whole_starts`, read lazily."""
        if split not in self.splits:
            raise LeantrainError(f"token data {self.directory} has no {split!r} split (it has "
                                 f"{', '.join(self.splits)})")
        block = model_cfg.block_size
        if whole:
            return WindowBatches(self, split, self.whole_starts(split, block), block, batch_size)
        gen = torch.Generator().manual_seed(self.cfg.val_seed + (1 if split == "train" else 0))
        starts = torch.randint(len(self.arrays[split]) - block, (n_batches, batch_size), generator=gen)
        return [self.windows(split, s, block) for s in starts]
