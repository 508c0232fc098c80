"""The GPT's weights as growth operators see them: named tensors, per-block views, shape rules.

Every growth function maps a trained source :class:`GPT` to a target :class:`GPTConfig` and returns
the target's tensors keyed like ``GPT.named_parameters()`` — the token embedding once (the head is
tied to it), ``{prefix}.{i}.…`` for each block, the final norm's. The names are the roles of the
model protocol's ``weight_roles()`` (:data:`TOKEN`, :data:`QKV`, ...: the operators are written for
the gpt layout — pre-norm blocks, fused q/k/v, GELU MLP, learned positions, tied head — and
:func:`check_layout` refuses a model whose roles differ). :func:`build_model` turns them into a
model; ``torch.func.functional_call(GPT(target), tensors, (x, y))`` runs the target on them
without copying (tied weights follow the token embedding).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ...errors import ConfigError, LeantrainError
from ...models.gpt import GPT, GPTConfig, gpt_weight_roles
from ...models.protocol import WeightRoles

Tensors = dict[str, torch.Tensor]


def module_of(weight: str) -> str:
    return weight.rsplit(".", 1)[0]


ROLES: WeightRoles = gpt_weight_roles(GPTConfig(n_layer=1, n_head=1, n_embd=1, vocab_size=1, bias=True))
"""The gpt layout's weight roles (the model protocol): where every name below comes from."""
_B = ROLES.blocks[0]
PREFIX = ROLES.block_prefix
TOKEN, POSITION, FINAL_NORM = ROLES.token_embedding, ROLES.position_embedding, ROLES.final_norm
QKV, ATTN_OUT, MLP_IN, MLP_OUT = (module_of(w.name) for w in (_B.qkv, _B.attn_out, _B.mlp_in, _B.mlp_out))
"""Module names (inside a block) of the fused q/k/v projection, the attention output projection and
the MLP's input and output projections; parameters are ``{name}.weight`` / ``{name}.bias``."""
NORM_1, NORM_2 = _B.norms
ATTENTION, MLP = _B.attention, _B.mlp
NON_BLOCK = (("token", TOKEN), ("position", POSITION), ("final_norm_weight", f"{FINAL_NORM}.weight"),
             ("final_norm_bias", f"{FINAL_NORM}.bias"))
"""(role, name) of the tensors outside the blocks (the bias only with ``bias=True``)."""

# Parameter names inside one block, in GPT's order; biases exist only with ``bias=True``.
BLOCK_WEIGHTS = (f"{NORM_1}.weight", f"{QKV}.weight", f"{ATTN_OUT}.weight", f"{NORM_2}.weight",
                 f"{MLP_IN}.weight", f"{MLP_OUT}.weight")
BLOCK_BIASES = (f"{NORM_1}.bias", f"{QKV}.bias", f"{ATTN_OUT}.bias", f"{NORM_2}.bias", f"{MLP_IN}.bias",
                f"{MLP_OUT}.bias")


def check_layout(model, what: str) -> None:
    """ConfigError unless ``model`` declares the protocol's ``weight_roles`` and they are the gpt
    layout the operators are written for (same names, fused q/k/v, no grouped-query attention, no
    gated MLP, a head tied to the token embedding)."""
    from ...models import protocol
    view = protocol.require(model, "weight_roles", what)
    roles = view.weight_roles()
    same = (roles.block_prefix, roles.token_embedding, roles.position_embedding, roles.final_norm, roles.tied) == \
        (PREFIX, TOKEN, POSITION, FINAL_NORM, True)
    if not (same and all(_gpt_block(b) for b in roles.blocks)):
        raise ConfigError(f"{what}: the growth operators are written for the gpt layout (pre-norm blocks with "
                          f"a fused q/k/v, a GELU MLP, learned positions, a tied head); model "
                          f"{type(model).__name__}'s weight roles differ")


def _gpt_block(b) -> bool:
    weights = (b.qkv, b.attn_out, b.mlp_in, b.mlp_out)
    return (b.qkv is not None and b.qkv.parts == ("q", "k", "v") and b.mlp_gate is None and b.kv_groups == 1
            and not any(w.transposed for w in weights) and tuple(b.norms) == (NORM_1, NORM_2)
            and tuple(module_of(w.name) for w in weights) == (QKV, ATTN_OUT, MLP_IN, MLP_OUT))


def block_names(cfg: GPTConfig) -> tuple[str, ...]:
    return BLOCK_WEIGHTS + (BLOCK_BIASES if cfg.bias else ())


def source_tensors(model: GPT) -> Tensors:
    """The model's parameters by name, detached (growth never trains the source)."""
    return {name: p.detach() for name, p in model.named_parameters()}


def get_block(tensors: Tensors, i: int) -> Tensors:
    """Block ``i``'s tensors keyed by their name inside the block (``f"{QKV}.weight"``, ...)."""
    prefix = f"{PREFIX}.{i}."
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def put_block(tensors: Tensors, i: int, block: Tensors) -> None:
    tensors.update({f"{PREFIX}.{i}.{k}": v for k, v in block.items()})


def non_block(tensors: Tensors) -> Tensors:
    """Embeddings and final LayerNorm: everything outside the blocks."""
    return {k: v for k, v in tensors.items() if not k.startswith(f"{PREFIX}.")}


def load_tensors(model: GPT, tensors: Tensors) -> None:
    """Copy ``tensors`` into ``model``'s parameters; names and shapes must match exactly."""
    params = dict(model.named_parameters())
    if set(params) != set(tensors):
        missing, extra = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
        raise LeantrainError(f"growth: tensors do not fit the target model "
                             f"(missing {missing}, unexpected {extra})")
    with torch.no_grad():
        for name, p in params.items():
            if p.shape != tensors[name].shape:
                raise LeantrainError(f"growth: {name} has shape {tuple(tensors[name].shape)}, "
                                  f"the target model needs {tuple(p.shape)}")
            p.copy_(tensors[name])


def parameter_shapes(cfg: GPTConfig) -> dict[str, torch.Size]:
    """Parameter name -> shape of a GPT with config ``cfg`` (built on the meta device: no memory)."""
    with torch.device("meta"):
        return {name: p.shape for name, p in GPT(cfg).named_parameters()}


def build_model(cfg: GPTConfig, tensors: Tensors) -> GPT:
    """A target GPT holding ``tensors`` (on their device and dtype)."""
    ref = tensors[TOKEN]
    model = GPT(cfg).to(device=ref.device, dtype=ref.dtype)
    load_tensors(model, tensors)
    return model


# ---------------------------------------------------------------------------------- shape rules
def head_size(cfg: GPTConfig) -> int:
    return cfg.n_embd // cfg.n_head


def check_growth(src: GPTConfig, tgt: GPTConfig, op: str, *, keep_head_size: bool = True,
                 keep_width: bool = False, depth_multiple: bool = False) -> None:
    """Raise ConfigError (one line, naming the key) unless ``op`` can grow ``src`` into ``tgt``.

    Every operator keeps vocabulary, context length and the bias setting, and never shrinks.
    ``keep_head_size``: width grows by adding whole heads (copy/FPI style), so n_embd/n_head must
    stay; ``keep_width``: depth-only operators; ``depth_multiple``: n_layer must be a multiple of
    the source's (copies of the whole stack).
    """
    tgt.validate()
    for key in ("vocab_size", "block_size", "bias"):
        a, b = getattr(src, key), getattr(tgt, key)
        if a != b:
            raise ConfigError(f"model.{key}: {op} keeps the source's {key}={a}, the target has {b}")
    for key in ("n_layer", "n_embd"):
        a, b = getattr(src, key), getattr(tgt, key)
        if b < a:
            raise ConfigError(f"model.{key}: {op} cannot shrink the source's {key}={a} to {b}")
    if keep_width and (tgt.n_embd, tgt.n_head) != (src.n_embd, src.n_head):
        raise ConfigError(f"model.n_embd: {op} grows depth only; the target's width {tgt.n_embd} "
                          f"(n_head={tgt.n_head}) must equal the source's {src.n_embd} (n_head={src.n_head})")
    hs = head_size(src)
    if keep_head_size and head_size(tgt) != hs:
        need = (f"needs n_head={tgt.n_embd // hs}, got {tgt.n_head}" if tgt.n_embd % hs == 0
                else f"must be a multiple of {hs}")
        raise ConfigError(f"model.n_head: {op} keeps the head size {hs} (source n_embd={src.n_embd}, "
                          f"n_head={src.n_head}); target n_embd={tgt.n_embd} {need}")
    if depth_multiple and tgt.n_layer % src.n_layer:
        raise ConfigError(f"model.n_layer: {op} copies the whole stack, so the target's n_layer="
                          f"{tgt.n_layer} must be a multiple of the source's {src.n_layer}")


# ------------------------------------------------------------------------------ width index maps
@dataclass
class WidthMaps:
    """Which source unit every target unit copies (copy-based width growth).

    Each map is a LongTensor over the target's units whose first entries are the identity (the
    old units keep their place). ``q``/``k``/``v`` map attention channels (rows of c_attn's q, k, v
    parts; ``v`` also maps c_proj's input columns), ``hidden`` the MLP's 4·n_embd units; one per
    block. ``embd`` maps the residual stream and is shared by everything.
    """
    embd: torch.Tensor
    q: list[torch.Tensor]
    k: list[torch.Tensor]
    v: list[torch.Tensor]
    hidden: list[torch.Tensor]


def unit_map(n_src: int, n_tgt: int, mapping: str = "random",
             generator: torch.Generator | None = None) -> torch.Tensor:
    """g over n_tgt units: g(i) = i for the first n_src, then a source unit for each new one.

    ``random``: uniform over the source units (Net2Net, bert2BERT); ``cyclic``: i mod n_src [ours] —
    when n_tgt is a multiple of n_src every unit gets the same number of copies, which keeps
    LayerNorm statistics (and so FPI's function) exact.
    """
    new = n_tgt - n_src
    if mapping == "cyclic":
        extra = torch.arange(n_src, n_tgt) % n_src
    elif mapping == "random":
        extra = torch.randint(0, n_src, (new,), generator=generator)
    else:
        raise ConfigError(f"mapping: expected 'random' or 'cyclic', got {mapping!r}")
    return torch.cat([torch.arange(n_src), extra])


def head_channels(heads: torch.Tensor, size: int) -> torch.Tensor:
    """Channel map of a head map: target head h's channel c copies source head heads[h]'s channel c."""
    return (heads[:, None] * size + torch.arange(size)).flatten()


def chunked(g: torch.Tensor, n_src: int, chunks: int) -> torch.Tensor:
    """Map over ``chunks`` consecutive copies of a unit range: chunk k's unit o copies k·n_src + g(o)."""
    return torch.cat([k * n_src + g for k in range(chunks)])


def copy_maps(src: GPTConfig, tgt: GPTConfig, mapping: str = "random",
              generator: torch.Generator | None = None) -> WidthMaps:
    """Head-whole width maps (FPI, Net2Net, AKI): the residual stream and, per block, one head map
    shared by q, k and v (a copied head must keep its attention pattern) and an MLP unit map."""
    hs = head_size(src)
    embd = unit_map(src.n_embd, tgt.n_embd, mapping, generator)
    heads = [head_channels(unit_map(src.n_head, tgt.n_head, mapping, generator), hs) for _ in range(src.n_layer)]
    hidden = [unit_map(4 * src.n_embd, 4 * tgt.n_embd, mapping, generator) for _ in range(src.n_layer)]
    return WidthMaps(embd, heads, list(heads), list(heads), hidden)


def selection(g: torch.Tensor, n_src: int, divide: bool = False) -> torch.Tensor:
    """The (n_src × n_tgt) matrix of a unit map: column j is one-hot at g(j) — divided by the unit's
    copy count for an FPI in-dimension — so ``x @ selection(g)`` equals ``x[..., g]``."""
    s = torch.zeros(n_src, len(g))
    s[g, torch.arange(len(g))] = 1.0
    return s / torch.bincount(g, minlength=n_src)[:, None] if divide else s


# ----------------------------------------------------------------------------- trained operators
def dense_operator_size(src: GPTConfig, tgt: GPTConfig, blocks: int = 12) -> int:
    """Entries of a full linear map from the source's block weights (``blocks`` n_embd² matrices per
    layer) to the target's: (B·D₁²·L₁)·(B·D₂²·L₂) — what Mango's and LiGO's factorisations avoid."""
    return (blocks * src.n_embd ** 2 * src.n_layer) * (blocks * tgt.n_embd ** 2 * tgt.n_layer)


class TrainedOperator(nn.Module):
    """A trainable growth operator: its parameters map frozen source tensors (non-persistent
    buffers, so ``state_dict()`` holds the operator alone) to the target's tensors.

    ``forward()`` returns the target's tensors as differentiable functions of the parameters, so
    ``torch.func.functional_call(target_model, op(), (x, y))`` trains the operator on the task loss;
    ``materialize()`` bakes them once training is done. The GPT operators (:class:`GrowthOperator`)
    and the role-based ones (``roles.RoleLiGO``, ``roles.RoleMango``) share this contract."""

    def forward(self) -> Tensors:
        raise NotImplementedError

    @torch.no_grad()
    def materialize(self) -> Tensors:
        return {name: t.detach().clone() for name, t in self().items()}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class GrowthOperator(TrainedOperator):
    """A :class:`TrainedOperator` from a source GPT's config to a target GPT's."""

    def __init__(self, source_config: GPTConfig, target: GPTConfig):
        super().__init__()
        self.source_config, self.target = source_config, target

    def dense_size(self) -> int:
        return dense_operator_size(self.source_config, self.target)
