"""The trained runs a family is built from (SN-Net anchors, Learngene auxiliaries, the ancestry):
checked against the run before anything is loaded, loaded with :func:`leantrain.core.loading.load_trained`,
and recorded by checkpoint identity so a run that reloads one later (a teacher on resume) can tell
whether it changed."""
from __future__ import annotations

from pathlib import Path

from ...core import State, checkpoint
from ...core.loading import Trained, load_trained
from ...errors import ConfigError, LeantrainError


STACK_MODELS = ("gpt", "hf")
"""Models a family's stacks can be (every stack of a family the same kind)."""
WRAPPING = ("snnet", "learngene_pool", "learngene_distill")
"""Methods whose runs hold a family or a wrapper, not a plain GPT."""


def read_source(path: str, key: str, state: State, what: str, plain: bool = True) -> dict:
    """``state.json`` of run ``path`` after checking it fits this run: a ``gpt`` trained on the same
    data kind and vocabulary, with the recipe's context length, and (``plain``) without a method that
    wraps the model. ``key`` names the option in errors."""
    try:
        meta = checkpoint.read_meta(path)
    except LeantrainError as e:
        raise ConfigError(f"{key}: {e}") from None
    recipe = meta["recipe"]
    data = recipe.get("data", {}).get("name", "text")
    if data != state.recipe.data_name:
        raise ConfigError(f"{key}: {path} was trained on data {data!r}; this run has {state.recipe.data_name!r}")
    theirs, ours = meta.get("vocab"), state.data.meta().get("vocab")
    if theirs != ours:
        raise ConfigError(f"{key}: {path} was trained on another vocabulary ({len(theirs or [])} tokens) "
                          f"than this run's data ({len(ours or [])} tokens)")
    model = recipe.get("model", {})
    if model.get("name", "gpt") not in STACK_MODELS:
        raise ConfigError(f"{key}: {path} holds a {model.get('name')!r} model; {what} must be gpt runs "
                          "(or hf runs of one family)")
    wrapped = [m["name"] for m in meta.get("methods", []) if m["name"] in WRAPPING]
    if plain and wrapped:
        raise ConfigError(f"{key}: {path} was trained with {wrapped[0]}, which replaces the model; {what} "
                          "must be plain gpt runs")
    block_size = getattr(state.recipe.model, "block_size", None)
    if model.get("block_size") != block_size:
        raise ConfigError(f"{key}: {path} has block_size {model.get('block_size')}, this recipe's "
                          f"model.block_size is {block_size}; set model.block_size: {model.get('block_size')}")
    return meta


def is_pretrained_dir(path: str) -> bool:
    """A ``save_pretrained`` directory (config.json, no leantrain checkpoint)."""
    if not (Path(path) / "config.json").is_file():
        return False
    try:
        checkpoint.resolve(path)
    except LeantrainError:
        return True
    return False


def pretrained_stack(path: str, key: str, state: State):
    """An ``hf`` stack from a plain save_pretrained directory, with its identity (SHA-256 of its
    weights; no step): the recipe's block_size, a vocabulary that covers the data's."""
    import hashlib

    import torch

    from ...models.hf import HFConfig, HFModel, build_hf_model
    block_size = getattr(state.recipe.model, "block_size", 64)
    try:
        cfg = HFConfig(path=str(path), block_size=block_size)
        cfg.validate()
        with torch.random.fork_rng(devices=[]):
            model = HFModel(build_hf_model(cfg), cfg)
    except LeantrainError as e:
        raise ConfigError(f"{key}: {e}") from None
    vocab = state.data.meta().get("vocab")
    if model.task != "causal_lm" or (vocab is not None and model.hf.config.vocab_size < len(vocab)):
        raise ConfigError(f"{key}: {path} holds a {cfg.model_type} {model.task.replace('_', ' ')} model with "
                          f"{model.hf.config.vocab_size} tokens; stitched families are causal LMs covering the "
                          f"data's {len(vocab or [])} tokens")
    digest = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return model, {"run": str(Path(path).resolve()), "step": None, "model_sha256": digest.hexdigest()}


def identity(path: str, meta: dict) -> dict:
    """Where a source run is and which checkpoint of it was used (its model file's SHA-256)."""
    return {"run": str(Path(path).resolve()), "step": meta["step"], "model_sha256": meta["sha256"]["model"]}


def method_state(meta: dict, name: str) -> dict | None:
    """The JSON state method ``name`` saved in a checkpoint's meta, or None if the run had no such method."""
    return next((m["state"] for m in meta.get("methods", []) if m["name"] == name), None)


def load_recorded(ident: dict, key: str) -> Trained:
    """Load the run ``ident`` records, refusing it if its checkpoint is no longer the one recorded."""
    try:
        trained = load_trained(ident["run"])
    except LeantrainError as e:
        raise LeantrainError(f"{key}: {e}") from None
    meta = trained.ckpt.meta
    if meta["sha256"]["model"] != ident["model_sha256"]:
        raise LeantrainError(f"{key}: {ident['run']} changed since this run started (its checkpoint was "
                             f"step {ident['step']}, now step {meta['step']} with other weights)")
    return trained
