"""Tokenizers for language-model data: byte-level BPE training, loading, and the text codec a
checkpoint carries (so ``leantrain sample`` encodes prompts and decodes samples like the data did).

Two codecs: :class:`CharCodec` (the ``text`` kind's character vocabulary, checkpoint meta ``vocab``)
and :class:`TokenizerCodec` (a Hugging Face ``tokenizers`` tokenizer, checkpoint meta ``tokenizer``:
the ``tokenizer.json`` text). ``tokenizers`` belongs to the optional ``hf`` extra and is imported
only when a tokenizer is trained, loaded or used.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from ..errors import LeantrainError

MIN_BPE_VOCAB = 257
"""A byte-level BPE starts from the 256 byte symbols; it needs room for at least one merge."""


def import_tokenizers():
    try:
        import tokenizers
    except ImportError:  # pragma: no cover - the hf extra is installed by `make test`
        raise LeantrainError("tokenizers are not installed: pip install 'leantrain[hf]'") from None
    return tokenizers


def train_bpe(texts: Iterable[str], vocab_size: int, length: int | None = None, progress: bool = False):
    """A byte-level BPE (GPT-2's pre-tokenizer, no special tokens) of at most ``vocab_size`` tokens,
    trained on ``texts``, streamed (only word counts are kept). Deterministic: the same texts give
    the same tokenizer. A small corpus may end with fewer tokens than asked (no pair left to merge)."""
    check_bpe_vocab(vocab_size)
    tk = import_tokenizers()
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, show_progress=progress, special_tokens=[],
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer, length=length)
    return tok


def check_bpe_vocab(vocab_size: int) -> None:
    if vocab_size < MIN_BPE_VOCAB:
        raise LeantrainError(f"a byte-level BPE needs a vocabulary of at least {MIN_BPE_VOCAB} tokens (256 bytes "
                             f"+ merges), got {vocab_size}")


def load_tokenizer(path: str | Path):
    """A ``tokenizer.json`` file, or a Hugging Face tokenizer directory (its ``tokenizer.json``, or —
    with ``transformers`` installed — any fast tokenizer it can load from the directory, offline)."""
    path = Path(path)
    if not path.exists():
        raise LeantrainError(f"tokenizer not found: {path}")
    file = path / "tokenizer.json" if path.is_dir() else path
    if file.is_file():
        return tokenizer_from_str(file.read_text(encoding="utf-8", errors="replace"), str(file))
    try:
        from transformers import AutoTokenizer
        fast = AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)
        backend = getattr(fast, "backend_tokenizer", None)
    except ImportError:
        backend = None
    except Exception as e:  # transformers raises many kinds for a directory it cannot read
        raise LeantrainError(f"cannot load a tokenizer from {path}: {str(e).splitlines()[0]}") from None
    if backend is None:
        raise LeantrainError(f"{path} holds no tokenizer.json (and no fast tokenizer transformers can load)")
    return backend


def tokenizer_from_str(text: str, where: str = "tokenizer"):
    tk = import_tokenizers()
    try:
        return tk.Tokenizer.from_str(text)
    except Exception as e:  # tokenizers raises a bare Exception with serde's message
        raise LeantrainError(f"{where} is not a valid tokenizer.json: {str(e).splitlines()[0]}") from None


def tokenizer_sha256(tok) -> str:
    return hashlib.sha256(tok.to_str().encode()).hexdigest()


# ---------------------------------------------------------------------------------------- codecs
class Codec:
    """Text ↔ token ids, as the model was trained."""

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError


class CharCodec(Codec):
    """One id per character of a fixed vocabulary (the ``text`` data kind)."""

    def __init__(self, vocab: list[str]):
        self.vocab = list(vocab)
        self.stoi = {c: i for i, c in enumerate(self.vocab)}

    def encode(self, text: str) -> list[int]:
        bad = sorted(set(text) - set(self.stoi))
        if bad:
            raise LeantrainError(f"prompt has characters outside the vocabulary: {''.join(bad)!r}")
        return [self.stoi[c] for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.vocab[i] for i in ids)


class TokenizerCodec(Codec):
    """A ``tokenizers`` tokenizer (no special tokens added: a prompt is continued as written)."""

    def __init__(self, tok):
        self.tok = tok

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)


def codec_from_meta(meta: dict, where: str = "checkpoint") -> Codec:
    """The codec a checkpoint's data meta describes: ``tokenizer`` (tokenizer.json text) or
    ``vocab`` (the character list)."""
    if meta.get("tokenizer") is not None:
        return TokenizerCodec(tokenizer_from_str(meta["tokenizer"], f"the tokenizer in {where}"))
    if meta.get("vocab") is not None:
        return CharCodec(meta["vocab"])
    raise LeantrainError(f"{where} holds no vocabulary or tokenizer, so its ids cannot be turned into text; "
                         "train on data with a tokenizer (meta.json beside the shards: "
                         '{"tokenizer": "tokenizer.json", ...})')


def tokenizer_meta(tok) -> dict:
    """What a checkpoint stores to decode with ``tok`` (see :func:`codec_from_meta`)."""
    return {"tokenizer": tok.to_str()}

