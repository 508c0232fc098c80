"""``leantrain export --format hf``: a trained model as a ``save_pretrained`` directory.

The directory loads with ``transformers.AutoModelFor*.from_pretrained(DIR)`` and no leantrain
installed, and gives the logits leantrain's evaluation of the checkpoint gives. For text runs the
vocabulary goes with it as a ``tokenizers`` tokenizer (``AutoTokenizer.from_pretrained(DIR)``):
leantrain's character vocabulary as a character-level WordLevel model, or a token run's own
tokenizer, the masked-LM mask token included. The directory is written beside ``--out`` and renamed into place when complete; an
existing non-empty ``--out`` is refused, nothing in it is touched.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from .core.checkpoint import ensure_dir
from .core.loading import load_trained
from .errors import LeantrainError
from .models.protocol import require


def deployed_model(model):
    """The network that is deployed: local learning's wrapper unwrapped when it adds no context
    encoders (ContSup's encoders are part of the deployed network: no ecosystem format holds them)."""
    base = getattr(model, "base", None)
    contexts = getattr(model, "contexts", None)
    if base is None or contexts is None:
        return model
    if any(True for _ in contexts.parameters()):
        raise LeantrainError("export --format hf: this run's deployed network includes ContSup's context "
                             "encoders, which a transformers model cannot hold; train with context: none")
    return base


def char_tokenizer(vocab: list[str], mask_token_id: int | None):
    """leantrain's character vocabulary as a fast tokenizer (one token per character)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    ids = {c: i for i, c in enumerate(vocab)}
    extra = {}
    if mask_token_id is not None:
        ids["[MASK]"] = mask_token_id
        extra["mask_token"] = "[MASK]"
    tok = Tokenizer(models.WordLevel(ids, unk_token="[MASK]" if mask_token_id is not None else None))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, **extra)


def run_tokenizer(meta: dict):
    """The tokenizer of a text run's checkpoint meta, as a transformers fast tokenizer, or None: a
    character run's vocabulary (``vocab``), or a token run's ``tokenizers`` JSON (``tokenizer``).
    A masked-LM run's mask token (``mask_token_id``) is added as ``[MASK]``."""
    mask_id = meta.get("mask_token_id")
    if "vocab" in meta:
        return char_tokenizer(meta["vocab"], mask_id)
    if "tokenizer" not in meta:
        return None
    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer.from_str(meta["tokenizer"])
    extra = {}
    if mask_id is not None:
        if tok.token_to_id("[MASK]") is None and tok.get_vocab_size(with_added_tokens=True) == mask_id:
            tok.add_special_tokens([AddedToken("[MASK]", special=True)])
        if tok.token_to_id("[MASK]") != mask_id:
            raise LeantrainError(f"export --format hf: the run's mask token id {mask_id} is not the "
                                 "tokenizer's [MASK] token")
        extra["mask_token"] = "[MASK]"
    return PreTrainedTokenizerFast(tokenizer_object=tok, **extra)


def export_hf(ckpt_dir, out) -> dict:
    """Write the checkpoint's model to ``out`` as a save_pretrained directory; returns a summary."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LeantrainError(f"--out {out} already exists and is not an empty directory; name a new one")
    trained = load_trained(ckpt_dir)
    model = deployed_model(trained.model)
    view = require(model, "export", "export --format hf")
    ensure_dir(out.parent, "directory of --out")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        view.export_pretrained(tmp)
        tok = run_tokenizer(trained.ckpt.meta)
        tokenizer = tok is not None
        if tokenizer:
            tok.save_pretrained(str(tmp))
        if out.exists():
            out.rmdir()  # empty (checked above)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    params = sum(p.numel() for p in model.parameters())
    return {"out": str(out), "params": params, "tokenizer": tokenizer,
            "architecture": type(getattr(model, "hf", model)).__name__, "step": trained.ckpt.meta["step"]}
