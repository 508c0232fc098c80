"""The model protocol: everything a training-efficiency method may ask of a model, and nothing else.

Methods never look at attribute names or classes (no ``isinstance(model, GPT)``, no ``model.wte``):
they call :func:`adapt` to get the model's *protocol view* and ask it for a **capability** — a
named group of the methods below. A model declares what it supports explicitly, so a look-alike
module (one that happens to have ``blocks`` and ``plan`` attributes) is refused up front by
:func:`require` instead of training as a plain model while a method believes it acts.

Two ways for a model to take part:

* **natively**: the ``nn.Module`` itself defines ``capabilities()`` (leantrain's ``gpt``,
  ``resnet`` and ``stitched_gpt`` do; subclass :class:`ModelProtocol` for the defaults);
* **through an adapter** for classes one does not own (Hugging Face models, a colleague's
  module): a subclass of :class:`Adapter` registered for the module class with
  :func:`register_adapter` — the pattern of Composer's policy maps. A registered adapter wins over
  a native implementation, so a user can override leantrain's own view of a class.

Every leantrain model also has ``forward(x, targets=None) -> (logits, loss)`` and ``shape_key()``
(what besides the batch shape determines a step's FLOPs, for the meter's FLOP cache); those are not
capabilities. The capabilities and what each promises (the rest of this file defines the types):

``blocks``
    ``blocks``: the ordered blocks (an ``nn.ModuleList``, or a list view of the model's own);
    ``always_run``: indices of blocks that may never be skipped (e.g. a ResNet's downsampling
    blocks); ``block_prefix``: the parameter-name prefix of block ``i`` is ``f"{block_prefix}.{i}."``.
``plan``
    ``plan``: a settable ``list[BlockPlan] | None``; in training mode only the listed blocks run, in
    order, with their residual-branch scale; ``None`` (and evaluation) = the full model, bit-identical
    to an untouched model. Optional ``check_plan(plan)`` raises ValueError for a plan the model
    cannot run.
``plan_width``
    ``BlockPlan.heads`` / ``hidden`` are honoured (computed on sliced weights);
    ``width_units(i) -> (n_heads, n_hidden)`` says what can be sliced in block ``i`` (with grouped
    query attention ``n_heads`` counts KV groups: a kept group keeps its query heads);
    ``width_unused_slices()`` lists ``(parameter, dim, indices)`` the current plan leaves out;
    optional ``width_cost(width) -> float``: a block's training FLOPs at ``width`` as a fraction of
    the full block's (for the expected-FLOPs line).
``dropout``
    ``dropout_sites()``: the sites the model has among :data:`SITES`, each mapped to the blocks that
    have it (``()`` for ``embedding``, which is not per block); a site it lacks is absent from the
    mapping and methods report it — they never set it silently. ``dropout_rates()`` and
    ``set_dropout(p, site=None, block=None)`` (raises ``KeyError`` for an absent site).
``units``
    ``local_units(input_shape) -> Units``: ordered units whose composition computes the logits, with
    each unit's per-sample output shape (local learning, greedy to ContSup); ``input_shape`` is one
    sample's shape (``(T,)`` token ids, ``(C, L)`` / ``(C, H, W)`` arrays).
``unit_hooks``
    The same :class:`Units` description, but ``Units.callable`` is False: the modules run only
    inside the model's own ``forward`` (e.g. Hugging Face models, whose forward computes masks and
    rotary embeddings between blocks). Local learning cuts them with forward hooks that compute the
    local loss, backpropagate it and return the detached output.
``pipeline``
    The units can be split into sequential stages on different processes (module-parallel local
    learning): callable units that share no parameters across a cut.
``stages``
    ``embed(x) -> h``, ``run_blocks(h) -> h`` and ``head(h) -> logits``: ``forward`` is
    ``head(run_blocks(embed(x)))`` plus the loss (stitching, distillation, stitch init);
    ``embed_parameters()`` / ``head_parameters()``: the parameters ``embed`` / ``head`` use (a tied
    matrix appears in both). Optional ``run_block(i, h)``: block ``i`` alone, for models whose blocks
    take context from the forward besides the hidden state (masks, rotary embeddings: Hugging Face) —
    valid after this model's ``embed`` of the same batch; without it ``blocks[i](h)`` is called.
``depth_change``
    ``set_blocks(blocks)``: replace the ordered blocks (fewer, more, copies) and run the model's
    after-depth-change hook (renumber per-layer indices, update the config's layer count and its
    per-layer type lists), so the model computes with exactly ``blocks``.
``weight_roles``
    ``weight_roles() -> WeightRoles``: what each parameter is (embedding, q/k/v or fused qkv, output
    projection, MLP in/gate/out, norms; in/out axis; transposed storage; KV groups; head size) —
    for width growth and weight surgery.
``export``
    ``export_pretrained(directory)``: write the model in its ecosystem's format (``save_pretrained``).

A model explains a capability it lacks with ``why_not(name) -> str | None``; :func:`require`
puts that reason in its one-line error.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..errors import ConfigError

SITES = ("embedding", "attention", "residual", "mlp")
"""Dropout sites by name: token (+ position) embedding, attention probabilities, the attention
output before the residual add, the MLP output before the residual add."""

CAPABILITIES: dict[str, str] = {
    "blocks": "ordered blocks",
    "plan": "a block plan (which blocks run, with what residual scale)",
    "plan_width": "width slicing in the block plan (kept attention heads and MLP units)",
    "dropout": "named dropout sites (embedding, attention, residual, mlp)",
    "units": "ordered callable units with per-sample output shapes",
    "unit_hooks": "ordered units cut by forward hooks inside the model's own forward",
    "pipeline": "units that split into sequential stages on different processes",
    "stages": "embedding / blocks / head entry points",
    "depth_change": "replacing its blocks (with an after-depth-change hook)",
    "weight_roles": "a description of each block's weights (q/k/v, projections, MLP, norms)",
    "export": "export in its ecosystem's format",
}
"""Every capability a method may require, with the words :func:`require` uses for it."""


# ------------------------------------------------------------------------------------ the types
@dataclass
class BlockPlan:
    """How one block runs in a training step (see the ``plan`` capability)."""
    index: int
    scale: float = 1.0
    """Multiplier on the block's residual branches (stochastic-depth / RaPTr rescaling)."""
    heads: torch.Tensor | None = None
    """Kept attention heads (sorted LongTensor); None = all. Needs ``plan_width``."""
    hidden: torch.Tensor | None = None
    """Kept MLP hidden units (sorted LongTensor); None = all. Needs ``plan_width``."""
    width_scale: float = 1.0
    """Multiplier on a width-sliced branch's output (1/kept-fraction rescaling)."""


@dataclass
class Units:
    """A model's ordered units as local learning sees them (``units`` / ``unit_hooks``)."""
    modules: list[nn.Module]
    """In order; the last one is the model's head (it always belongs to the last local module).
    ``callable``: applying them in order to the input computes the logits."""
    shapes: list[tuple[int, ...]]
    """Each unit's output shape for one sample: (C, L) / (C, H, W) feature maps, (T, C) token states;
    the head's: its logits' trailing shape."""
    kind: str
    """``conv1d``, ``conv2d`` or ``tokens``: what local heads and context encoders are built from."""
    params: list[list[nn.Parameter]]
    """Each unit's own parameters; a parameter two units share is listed once, by the first."""
    callable: bool = True
    """False (``unit_hooks``): the modules run only inside the model's forward; a cut is a forward
    hook on ``modules[i]``."""
    tied_head_weight: nn.Parameter | None = None
    """The token-embedding matrix the head shares (local LM heads may tie to it), if any."""
    output: Callable[[Any], torch.Tensor] = field(default=lambda out: out)
    """The hidden-state tensor inside a unit's output (``unit_hooks``: blocks may return tuples)."""
    replace_output: Callable[[Any, torch.Tensor], Any] = field(default=lambda out, h: h)
    """A unit's output with its hidden state replaced by ``h`` (what a cut hook returns)."""

    @property
    def n_cuttable(self) -> int:
        return len(self.modules) - 1

    def channels(self, i: int) -> int:
        """Unit ``i``'s feature channels (the model width for token states)."""
        return self.shapes[i][-1] if self.kind == "tokens" else self.shapes[i][0]


@dataclass(frozen=True)
class Weight:
    """One weight matrix of a block: its parameter name (inside the block) and storage."""
    name: str
    """E.g. ``attn.c_attn.weight``; the bias, if any, is ``bias``."""
    out_axis: int = 0
    """Axis of the output features: 0 for ``nn.Linear`` (out × in); 1 for transposed storage
    (Hugging Face ``Conv1D``, in × out). The in-axis is the other one."""
    parts: tuple[str, ...] = ()
    """A fused projection's parts in order along ``out_axis``, equal sizes (e.g. ``("q", "k", "v")``)."""
    bias: str | None = None

    @property
    def in_axis(self) -> int:
        return 1 - self.out_axis

    @property
    def transposed(self) -> bool:
        return self.out_axis == 1


@dataclass(frozen=True)
class BlockRoles:
    """What each weight of a transformer block is. Give ``qkv`` (fused) or ``q``, ``k``, ``v``."""
    attn_out: Weight
    mlp_in: Weight
    mlp_out: Weight
    norms: tuple[str, ...]
    """Module names of the block's norms in order (each has ``weight`` and maybe ``bias``)."""
    n_head: int
    head_size: int
    n_hidden: int
    """MLP hidden units."""
    qkv: Weight | None = None
    q: Weight | None = None
    k: Weight | None = None
    v: Weight | None = None
    mlp_gate: Weight | None = None
    """A gated MLP's gate (SwiGLU); None for a plain MLP."""
    n_kv_head: int | None = None
    """Key/value heads (grouped-query attention); None = ``n_head``."""
    attention: str | None = None
    """Module name of the self-attention (its output is the attention branch, before the residual add)."""
    mlp: str | None = None
    """Module name of the MLP (its output is the MLP branch, before the residual add)."""

    @property
    def kv_groups(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.n_head // (self.n_kv_head or self.n_head)


@dataclass(frozen=True)
class WeightRoles:
    """The model's weights by role (the ``weight_roles`` capability). Names are parameter names."""
    block_prefix: str
    """Block i's parameters are named ``f"{block_prefix}.{i}.{...}"``."""
    blocks: tuple[BlockRoles, ...]
    """One per block, in order."""
    width: int
    """Width of the residual stream."""
    token_embedding: str
    position_embedding: str | None = None
    """A learned absolute position table; None (rotary, none) otherwise."""
    final_norm: str | None = None
    """Module name of the norm before the head."""
    output: str | None = None
    """The head's weight; the same parameter as ``token_embedding`` when ``tied``."""
    tied: bool = False


# ------------------------------------------------------------------------- native and adapters
class ModelProtocol:
    """Mixin for models that implement the protocol natively: declare ``CAPABILITIES`` (or override
    ``capabilities()``) and implement the methods those capabilities name (see the module docs)."""
    CAPABILITIES: frozenset[str] = frozenset()

    def capabilities(self) -> frozenset[str]:
        return frozenset(self.CAPABILITIES)

    def supports(self, name: str) -> bool:
        return name in self.capabilities()

    def why_not(self, name: str) -> str | None:
        """Why a capability the model lacks is missing (None: not implemented)."""
        return None

    # defaults of the ``blocks`` capability
    always_run: tuple[int, ...] = ()
    block_prefix: str = "blocks"


class Adapter(ModelProtocol):
    """The protocol view of a model that does not implement it itself. ``self.model`` is the
    module; subclasses implement the methods of the capabilities they declare. An adapter must not
    rename or re-register the model's parameters (parameter names are checkpoint keys)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def shape_key(self) -> tuple:
        key = getattr(self.model, "shape_key", None)
        return key() if callable(key) else ()


class _Undeclared(Adapter):
    """A module that declares no capability: every ``require`` is refused."""

    def why_not(self, name: str) -> str | None:
        looks = [a for a in ("blocks", "plan", "set_dropout", "units", "embed", "head")
                 if hasattr(self.model, a)]
        has = f"it has attributes {', '.join(looks)} but " if looks else "it "
        return (f"{has}declares no capabilities; implement capabilities() from leantrain.models.protocol "
                "or register an adapter for its class, as leantrain/models/README.md shows")


ADAPTERS: dict[type, Callable[[nn.Module], ModelProtocol]] = {}
"""Module class -> adapter factory (usually an :class:`Adapter` subclass). Looked up along the MRO."""
_views: "weakref.WeakKeyDictionary[nn.Module, ModelProtocol]" = weakref.WeakKeyDictionary()


def register_adapter(module_class: type, adapter: Callable[[nn.Module], ModelProtocol] | None = None):
    """Register ``adapter`` (called with the module, returns its protocol view) for ``module_class``
    and its subclasses. Usable as a decorator on the adapter class: ``@register_adapter(MyNet)``."""
    def wrap(a):
        ADAPTERS[module_class] = a
        _views.clear()  # views made before the registration may be stale
        return a
    return wrap(adapter) if adapter is not None else wrap


def adapt(model: nn.Module) -> ModelProtocol:
    """The model's protocol view: a registered adapter's (along the class's MRO), else the model
    itself if it declares ``capabilities()``, else a view that declares nothing. Cached per model."""
    view = _views.get(model)
    if view is None:
        factory = next((ADAPTERS[c] for c in type(model).__mro__ if c in ADAPTERS), None)
        if factory is not None:
            view = factory(model)
        elif callable(getattr(model, "capabilities", None)):
            return model  # native: nothing to cache
        else:
            view = _Undeclared(model)
        _views[model] = view
    return view


def capabilities(model: nn.Module) -> frozenset[str]:
    return frozenset(adapt(model).capabilities())


def supports(model: nn.Module, *names: str) -> bool:
    """Whether the model declares every capability in ``names``."""
    caps = capabilities(model)
    return all(n in caps for n in names)


def require(model: nn.Module, capability: str, method: str, message: str = "") -> ModelProtocol:
    """The model's protocol view if it declares ``capability``; else a one-line ConfigError:
    ``"{method}: {message}: {the model's reason}"``, ``message`` defaulting to "needs <capability>,
    which model <class> does not declare". ``method`` names the culprit (e.g. ``methods.raptr``)."""
    if capability not in CAPABILITIES:
        raise KeyError(f"unknown capability {capability!r}; known: {', '.join(CAPABILITIES)}")
    view = adapt(model)
    if capability in view.capabilities():
        return view
    reason = view.why_not(capability)
    text = message or f"needs {CAPABILITIES[capability]}, which model {type(model).__name__} does not declare"
    raise ConfigError(f"{method}: {text}" + (f": {reason}" if reason else ""))


def block_prefix(model: nn.Module) -> str:
    """Parameter-name prefix of the model's blocks (``blocks`` capability)."""
    return require(model, "blocks", "block_prefix").block_prefix


def check_dropout_site(view: ModelProtocol, site: str) -> None:
    """KeyError unless the model has dropout ``site`` (for ``set_dropout`` implementations)."""
    if site not in view.dropout_sites():
        raise KeyError(f"model {type(getattr(view, 'model', view)).__name__} has no {site!r} dropout site "
                       f"(it has: {', '.join(view.dropout_sites()) or 'none'})")


def same_shape_blocks(blocks: Iterable[nn.Module]) -> bool:
    """Whether every block has the same parameter names and shapes (copies of one another fit)."""
    shapes = {tuple((n, tuple(p.shape)) for n, p in b.named_parameters()) for b in blocks}
    return len(shapes) <= 1


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None,
                generator: torch.Generator | None) -> torch.Tensor:
    """One sampled token id per row of the last position's ``logits`` (B, V): temperature, then top-k
    (nanoGPT's rule), from ``generator`` — what every model's ``generate`` draws with."""
    logits = logits / temperature
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits[logits < v[:, [-1]]] = -float("inf")
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)


__all__ = ["SITES", "CAPABILITIES", "BlockPlan", "Units", "Weight", "BlockRoles", "WeightRoles",
           "ModelProtocol", "Adapter", "ADAPTERS", "register_adapter", "adapt", "capabilities", "supports",
           "require", "block_prefix", "check_dropout_site", "same_shape_blocks",
           "sample_next"]
