"""Writing token shards (``leantrain tokenize``, and the ``hf`` kind's cache): text in, nanoGPT-format
``train.bin`` / ``val.bin`` + ``meta.json`` + ``tokenizer.json`` out.

Streaming throughout: text is read in pieces that end at a newline (at most ``PIECE_CHARS``
characters; a longer line is cut), encoded in batches and appended to the shard, so an input larger
than memory works. Every cut depends on the text alone, so the same input gives byte-identical
shards. The validation split is the last ``val_fraction`` of the characters, as the ``text`` kind
splits (the same characters for a single input file). Output is written to a temporary directory
beside ``--out`` and moved into place at the end: a failure leaves ``--out`` as it was.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from ..errors import LeantrainError
from .tokenizer import check_bpe_vocab, load_tokenizer, train_bpe

PIECE_CHARS = 1 << 16
READ_CHARS = 1 << 20
ENCODE_BATCH = 64
"""Pieces per ``encode_batch`` call (the tokenizer encodes a batch in parallel)."""
PROGRESS_BYTES = 16 << 20
"""Inputs at least this large get a progress bar (on a terminal)."""
DEFAULT_VOCAB = 8192
"""BPE size when neither --vocab-size nor --tokenizer is given."""
OUTPUT_FILES = ("train.bin", "val.bin", "test.bin", "meta.json", "tokenizer.json")


def shard_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def check_inputs(paths: list[Path]) -> None:
    if not paths:
        raise LeantrainError("no input files")
    for p in paths:
        if not p.exists():
            raise LeantrainError(f"input file not found: {p}")
        if not p.is_file():
            raise LeantrainError(f"input is not a file: {p}")
        with open(p, "rb") as f:
            head = f.read(65536)
        if b"\x00" in head:
            raise LeantrainError(f"input looks binary (NUL bytes), expected UTF-8 text: {p}")
    if not any(p.stat().st_size for p in paths):
        raise LeantrainError(f"input is empty: {', '.join(map(str, paths))}")


def read_blocks(paths: list[Path]) -> Iterator[str]:
    """The inputs' text, concatenated in order, in blocks of up to READ_CHARS characters (exactly as
    stored: no newline translation)."""
    for p in paths:
        with open(p, encoding="utf-8", newline="") as f:
            while True:
                try:
                    block = f.read(READ_CHARS)
                except UnicodeDecodeError as e:
                    raise LeantrainError(f"input is not UTF-8 text ({e.reason}): {p}") from None
                if not block:
                    break
                yield block


def count_chars(paths: list[Path]) -> int:
    return sum(len(b) for b in read_blocks(paths))


def split_pieces(blocks: Iterable[str], split_at: int) -> Iterator[tuple[str, str]]:
    """(split, piece) for the text of ``blocks``: pieces end at a newline (or after PIECE_CHARS
    characters), and the piece that holds character ``split_at`` is cut there (train | val)."""
    pos, carry = 0, ""
    for block in blocks:
        buf, i = carry + block, 0
        while len(buf) - i >= PIECE_CHARS:
            end = buf.rfind("\n", i, i + PIECE_CHARS) + 1
            if end <= i:
                end = i + PIECE_CHARS
            yield from _cut(buf[i:end], pos, split_at)
            pos, i = pos + end - i, end
        carry = buf[i:]
    if carry:
        yield from _cut(carry, pos, split_at)


def _cut(piece: str, pos: int, split_at: int) -> Iterator[tuple[str, str]]:
    if pos + len(piece) <= split_at:
        yield "train", piece
    elif pos >= split_at:
        yield "val", piece
    else:
        k = split_at - pos
        yield "train", piece[:k]
        yield "val", piece[k:]


class ShardWriter:
    """Appends encoded ids to ``<dir>/<split>.bin`` files of one dtype; counts tokens and characters."""

    def __init__(self, directory: Path, dtype: str, vocab_size: int):
        self.directory, self.dtype, self.vocab_size = directory, np.dtype(dtype), vocab_size
        self.files: dict = {}
        self.tokens: dict[str, int] = {}
        self.chars: dict[str, int] = {}

    def add(self, split: str, ids: list[int], chars: int) -> None:
        if split not in self.files:
            self.files[split] = open(self.directory / f"{split}.bin", "wb")
            self.tokens[split] = self.chars[split] = 0
        a = np.asarray(ids, dtype=np.int64)
        if len(a) and (a.max() >= self.vocab_size or a.min() < 0):
            raise LeantrainError(f"the tokenizer produced id {int(a.max())}, outside its vocabulary of "
                                 f"{self.vocab_size}")
        self.files[split].write(a.astype(self.dtype).tobytes())
        self.tokens[split] += len(a)
        self.chars[split] += chars

    def close(self) -> None:
        for f in self.files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()


def encode_pieces(tok, pieces: Iterable[tuple[str, str]], writer: ShardWriter, bar=None) -> None:
    """Encode (split, text) pieces in batches (in order) and append them to ``writer``."""
    batch: list[tuple[str, str]] = []

    def flush():
        encoded = tok.encode_batch([t for _, t in batch], add_special_tokens=False)
        for (split, text), enc in zip(batch, encoded):
            writer.add(split, enc.ids, len(text))
            if bar is not None:
                bar.update(len(text))
        batch.clear()

    for item in pieces:
        batch.append(item)
        if len(batch) == ENCODE_BATCH:
            flush()
    if batch:
        flush()


def write_meta(directory: Path, tok, writer: ShardWriter, extra: dict) -> dict:
    meta = {"vocab_size": tok.get_vocab_size(with_added_tokens=True), "dtype": writer.dtype.name,
            "tokenizer": "tokenizer.json",
            **{f"{s}_tokens": n for s, n in writer.tokens.items()},
            **{f"{s}_chars": n for s, n in writer.chars.items()}, **extra}
    (directory / "tokenizer.json").write_text(tok.to_str(), encoding="utf-8")
    (directory / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def staging_dir(out: Path, overwrite: bool) -> Path:
    """Check ``out`` and make the temporary directory the shards are written into (beside it)."""
    if out.exists() and not out.is_dir():
        raise LeantrainError(f"--out {out} is a file, not a directory")
    held = [f for f in OUTPUT_FILES if (out / f).exists()]
    if held and not overwrite:
        raise LeantrainError(f"--out {out} already holds token data ({', '.join(held)}); pass --overwrite "
                             "to replace it")
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    except OSError as e:
        raise LeantrainError(f"cannot write to {parent}: {e.strerror}") from None
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would become --out's mode
    return tmp


def publish(tmp: Path, out: Path) -> None:
    """Move the finished shards from ``tmp`` into ``out`` (renames: never a half-written file)."""
    if not out.exists():
        os.replace(tmp, out)
        return
    for f in OUTPUT_FILES:
        if (out / f).exists():
            (out / f).unlink()
    for f in tmp.iterdir():
        os.replace(f, out / f.name)
    tmp.rmdir()


def tokenize_files(inputs: list[str | Path], out: str | Path, vocab_size: int | None = None,
                   tokenizer: str | Path | None = None, val_fraction: float = 0.1, overwrite: bool = False,
                   progress: bool | None = None) -> dict:
    """``leantrain tokenize``: train a byte-level BPE of ``vocab_size`` tokens on the training part of
    ``inputs`` (or load ``tokenizer``), then write train.bin / val.bin + meta.json + tokenizer.json to
    ``out``. Returns the meta.json written."""
    paths, out = [Path(p) for p in inputs], Path(out)
    if vocab_size is not None and tokenizer is not None:
        raise LeantrainError("give --vocab-size (train a BPE) or --tokenizer (use one), not both")
    if not 0.0 < val_fraction < 1.0:
        raise LeantrainError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    check_inputs(paths)
    tok = load_tokenizer(tokenizer) if tokenizer is not None else None
    if tok is None:
        check_bpe_vocab(vocab_size or DEFAULT_VOCAB)
    total_bytes = sum(p.stat().st_size for p in paths)
    show = (sys.stderr.isatty() if progress is None else progress) and total_bytes >= PROGRESS_BYTES
    total = count_chars(paths)  # also checks the text is UTF-8 before anything is written
    split_at = int(total * (1 - val_fraction))
    if split_at == 0 or split_at == total:
        raise LeantrainError(f"the input ({total} characters) is too short to split with --val-fraction "
                             f"{val_fraction}")
    tmp = staging_dir(out, overwrite)
    try:
        if tok is None:
            train_text = (t for s, t in split_pieces(read_blocks(paths), split_at) if s == "train")
            tok = train_bpe(train_text, vocab_size or DEFAULT_VOCAB, progress=show)
        vocab = tok.get_vocab_size(with_added_tokens=True)
        writer = ShardWriter(tmp, shard_dtype(vocab), vocab)
        bar = None
        if show:
            from tqdm import tqdm
            bar = tqdm(total=total, unit="char", unit_scale=True, desc="tokenize", dynamic_ncols=True)
        try:
            encode_pieces(tok, split_pieces(read_blocks(paths), split_at), writer, bar)
        finally:
            writer.close()
            if bar is not None:
                bar.close()
        meta = write_meta(tmp, tok, writer, {"val_fraction": val_fraction, "inputs": [str(p) for p in paths]})
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta
