"""``hf``: language modelling on a local Hugging Face dataset, tokenized once and cached as shards.

``data.path`` is a directory written by ``save_to_disk`` (a ``Dataset`` or ``DatasetDict``), or local
data files read by ``datasets.load_dataset`` — a ``.json`` / ``.jsonl`` / ``.parquet`` / ``.csv`` /
``.txt`` file, or a directory of them (one format). Nothing is downloaded: ``HF_DATASETS_OFFLINE``
and ``HF_HUB_OFFLINE`` are set before ``datasets`` is imported (and in its config if it already was).

Splits: ``train``; validation from a ``validation`` / ``val`` / ``valid`` / ``dev`` split, else the last
``val_fraction`` of the training records (in order, as ``text`` splits); ``test`` where present. Each
record's ``text_field`` plus ``separator`` is encoded with the run's tokenizer — ``data.tokenizer``
(a tokenizer.json or tokenizer directory) or, if null, a byte-level BPE of ``vocab_size`` tokens
trained on the training records — and written as ``tokens`` shards into the cache directory
``<cache_dir>/hf/<key>``, where the key hashes the datasets' fingerprints, the tokenizer and these
options. A later run with the same dataset and tokenizer reads the cache; where it is, is printed.
Then the data behaves exactly as the ``tokens`` kind (memory-mapped, same sampler and evaluation).
Needs the optional ``hf`` extra (``datasets``, ``tokenizers``).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..config import check
from ..errors import LeantrainError
from ..registry import register_data
from .shards import ShardWriter, shard_dtype, write_meta
from .tokenizer import check_bpe_vocab, load_tokenizer, tokenizer_sha256, train_bpe
from .tokens import TokensTask

BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}
SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
VAL_NAMES = ("validation", "val", "valid", "dev")
CACHE_FORMAT = 1
RECORDS_PER_BATCH = 1000
PROGRESS_RECORDS = 100_000
"""Datasets with at least this many records get a progress bar while tokenizing (on a terminal)."""


@dataclass
class HFConfig:
    path: str | None = None
    """A save_to_disk directory, or local .json/.jsonl/.parquet/.csv/.txt file(s) (a file or a
    directory of them) for datasets.load_dataset. Never downloaded."""
    text_field: str = "text"
    """Column holding each record's text."""
    tokenizer: str | None = None
    """tokenizer.json or Hugging Face tokenizer directory; null = train a byte-level BPE of
    vocab_size tokens on the training records (cached with the shards)."""
    vocab_size: int = 8192
    """Size of the BPE trained when tokenizer is null."""
    separator: str | None = None
    """Text appended to each record before tokenizing; null = a newline for .txt files (one record
    per line, so the file is reproduced) and a blank line for other records."""
    val_fraction: float = 0.1
    """Without a validation split: share of the training records, from the end, used for validation."""
    val_seed: int = 1337
    """Seed of the fixed evaluation windows (as the tokens kind)."""
    eval_windows: int = 4096
    """Whole-split evaluation: every non-overlapping window up to this many, else this many drawn once
    from val_seed (as the tokens kind). 0 = always every window."""
    cache_dir: str | None = None
    """Where tokenized shards are cached; null = $LEANTRAIN_CACHE, else $XDG_CACHE_HOME/leantrain,
    else ~/.cache/leantrain."""

    def validate(self) -> None:
        check(bool(self.path), "path", "required: a save_to_disk directory or local data files")
        check(bool(self.text_field), "text_field", "must name a column")
        check(0.0 < self.val_fraction < 1.0, "val_fraction", f"must be in (0, 1), got {self.val_fraction}")
        check(self.eval_windows >= 0, "eval_windows", "must be ≥ 0")
        if self.tokenizer is None:
            try:
                check_bpe_vocab(self.vocab_size)
            except LeantrainError as e:
                check(False, "vocab_size", str(e))


def default_cache() -> Path:
    if os.environ.get("LEANTRAIN_CACHE"):
        return Path(os.environ["LEANTRAIN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "leantrain"


def import_datasets():
    """``datasets``, offline whatever the environment says."""
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import datasets
    except ImportError:  # pragma: no cover - the hf extra is installed by `make test`
        raise LeantrainError("the hf data kind needs the datasets library: pip install 'leantrain[hf]'") from None
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    if not sys.stderr.isatty():  # progress bars only on a terminal
        datasets.disable_progress_bars()
    return datasets


def load_local(path: Path, cache: Path) -> tuple[dict, str]:
    """The dataset's splits ({name: Dataset}) and the builder that read it (``disk`` for save_to_disk)."""
    if not path.exists():
        raise LeantrainError(f"dataset not found: {path}")
    datasets = import_datasets()
    try:
        if path.is_dir() and any((path / m).is_file() for m in SAVED_MARKERS):
            ds, builder = datasets.load_from_disk(str(path)), "disk"
        else:
            files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file()
                                                          and f.suffix in BUILDERS and not f.name.startswith("."))
            kinds = {BUILDERS.get(f.suffix) for f in files}
            if not files or None in kinds:
                raise LeantrainError(f"{path} is neither a save_to_disk directory nor local data files "
                                     f"({', '.join(BUILDERS)})")
            if len(kinds) > 1:
                raise LeantrainError(f"{path} mixes data formats ({', '.join(sorted(kinds))}); use one")
            builder = kinds.pop()
            ds = datasets.load_dataset(builder, data_files=[str(f) for f in files], cache_dir=str(cache / "datasets"))
    except LeantrainError:
        raise
    except Exception as e:  # datasets and pyarrow raise many kinds for unreadable files
        raise LeantrainError(f"cannot load dataset {path}: {type(e).__name__}: "
                             f"{(str(e).strip().splitlines() or [''])[0]}") from None
    splits = dict(ds) if isinstance(ds, datasets.DatasetDict) else {"train": ds}
    return splits, builder


def choose_splits(found: dict, cfg: HFConfig, where: Path) -> dict:
    if "train" not in found:
        raise LeantrainError(f"dataset {where} has no 'train' split (it has {', '.join(found) or 'none'})")
    train = found["train"]
    val = next((found[n] for n in VAL_NAMES if n in found), None)
    if val is None:  # the last val_fraction of the records, in order
        n = len(train)
        k = int(n * (1 - cfg.val_fraction))
        if k == 0 or k == n:
            raise LeantrainError(f"dataset {where} has {n} training records, too few to carve a validation split "
                                 f"with val_fraction {cfg.val_fraction}")
        train, val = train.select(range(k)), train.select(range(k, n))
    splits = {"train": train, "val": val}
    if "test" in found:
        splits["test"] = found["test"]
    for name, d in splits.items():
        if len(d) == 0:
            raise LeantrainError(f"dataset {where}: the {name} split is empty")
        if cfg.text_field not in d.column_names:
            raise LeantrainError(f"dataset {where} has no column {cfg.text_field!r} (columns: "
                                 f"{', '.join(d.column_names)}); set data.text_field")
        dtype = getattr(d.features[cfg.text_field], "dtype", None)
        if dtype not in ("string", "large_string"):
            raise LeantrainError(f"dataset {where}: column {cfg.text_field!r} holds {d.features[cfg.text_field]}, "
                                 "not text")
    return splits


def record_texts(d, field: str, sep: str):
    for batch in d.iter(batch_size=RECORDS_PER_BATCH):
        yield [(t or "") + sep for t in batch[field]]


@register_data
class HFTask(TokensTask):
    """A local Hugging Face dataset (save_to_disk, or json/parquet/csv/text files), tokenized once and cached."""
    name = "hf"
    Config = HFConfig

    def __init__(self, cfg: HFConfig):
        self.cfg = cfg
        self.source = Path(cfg.path)
        self.cache_root = Path(cfg.cache_dir) if cfg.cache_dir else default_cache()
        self.cache_path, self.identity = _on_rank0(self._prepare)
        self.open(self.cache_path, None, None)

    def _prepare(self) -> tuple[Path, dict]:
        """(cache directory of the shards, identity): tokenize into the cache unless it holds them."""
        found, builder = load_local(self.source, self.cache_root)
        splits = choose_splits(found, self.cfg, self.source)
        tok = load_tokenizer(self.cfg.tokenizer) if self.cfg.tokenizer else None
        sep = self.cfg.separator if self.cfg.separator is not None else ("\n" if builder == "text" else "\n\n")
        identity = {"format": CACHE_FORMAT, "source": str(self.source.resolve()),
                    "dataset": {s: d._fingerprint for s, d in splits.items()}, "text_field": self.cfg.text_field,
                    "separator": sep,
                    "tokenizer": tokenizer_sha256(tok) if tok else {"bpe_vocab_size": self.cfg.vocab_size}}
        key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
        target = self.cache_root / "hf" / key
        if (target / "meta.json").is_file():
            print(f"leantrain: hf data {self.source}: cached tokens at {target}", file=sys.stderr, flush=True)
            return target, identity
        print(f"leantrain: hf data {self.source}: tokenizing {sum(len(d) for d in splits.values()):,} records "
              f"into {target}", file=sys.stderr, flush=True)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".tmp", dir=target.parent))
        except OSError as e:
            raise LeantrainError(f"cannot write the token cache {target.parent}: {e.strerror}") from None
        try:
            if tok is None:
                texts = (t for batch in record_texts(splits["train"], self.cfg.text_field, sep) for t in batch)
                tok = train_bpe(texts, self.cfg.vocab_size, length=len(splits["train"]))
            vocab = tok.get_vocab_size(with_added_tokens=True)
            writer = ShardWriter(tmp, shard_dtype(vocab), vocab)
            total = sum(len(d) for d in splits.values())
            from tqdm import tqdm
            bar = tqdm(total=total, unit="record", desc="tokenize", dynamic_ncols=True,
                       disable=not sys.stderr.isatty() or total < PROGRESS_RECORDS)
            try:
                for name, d in splits.items():
                    for batch in record_texts(d, self.cfg.text_field, sep):
                        for text, enc in zip(batch, tok.encode_batch(batch, add_special_tokens=False)):
                            writer.add(name, enc.ids, len(text))
                        bar.update(len(batch))
            finally:
                writer.close()
                bar.close()
            write_meta(tmp, tok, writer, {"source": identity})
            if target.exists() and not (target / "meta.json").is_file():
                shutil.rmtree(target)  # an unfinished copy (never published by this code; be safe)
            try:
                os.replace(tmp, target)
            except OSError:  # another process finished the same cache first: keep its copy
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target, identity

    def fingerprint(self) -> dict:
        """The dataset's identity (source, datasets' fingerprints, text field, tokenizer) and its
        cached shards' fingerprint."""
        return {**super().fingerprint(), "kind": self.name, "dataset": self.identity}


def _on_rank0(fn):
    """``fn()`` on rank 0 of a process group (the others wait, then get its result or its one-line
    error); just ``fn()`` without one. The token cache is written once."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return fn()
    box = [None]
    if dist.get_rank() == 0:
        try:
            box = [("ok", fn())]
        except LeantrainError as e:
            box = [("error", str(e))]
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise LeantrainError(value)
    return value
