"""Growth through the model protocol's weight roles: every operator on any model that declares
``blocks``, ``depth_change`` and ``weight_roles`` (the Hugging Face GPT-2, Llama, Qwen2, BERT and ViT
adapters), with no per-family code.

:class:`RoleLayout` reads a model once: for every parameter (named as ``named_parameters()`` names it,
tied matrices once) and every axis, which *space* the axis indexes — the residual stream ``embd``, a
block's query / key / value channels ``q`` / ``k`` / ``v``, the attention output's input channels
``o_in``, the MLP's hidden units ``hid`` (gate and up projections share it) — or none (the axis does
not grow: vocabulary, positions, labels, image channels). Block weights get their spaces from their
roles (``Weight.out_axis`` covers ``Conv1D``'s transposed storage, ``parts`` a fused q|k|v); the
parameters outside the blocks get theirs from their module's kind: an embedding table's columns, a
linear layer's rows (out) and columns (in), a convolution's output channels, a norm's vector and a
bare parameter's last axis are on the residual stream when their size is the model's width.

Width growth is then one rule for every family: index maps per space (:class:`Maps`), whole heads at
a fixed head size (grouped-query attention: key/value heads map, each keeps its query heads, so the
ratio stays), applied axis by axis (:func:`widen`); FPI divides in-axes by their copy counts, and the
final norm when the head is tied to the embedding. Depth growth renames block indices; the target
model's own after-depth-change hook already numbered its layers and its config.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn

from ...errors import ConfigError, LeantrainError
from ...models import protocol
from .layout import Tensors, TrainedOperator, unit_map
from .msg import MaskValue

SPACES = ("embd", "q", "k", "v", "o_in", "hid")


@dataclass(frozen=True)
class Axis:
    spaces: tuple[str, ...] = ()
    """The spaces this axis indexes, concatenated (one, or q|k|v for a fused projection); () = fixed."""
    block: int | None = None
    """Block of the per-block spaces (None for ``embd``)."""
    is_in: bool = False
    """An input axis of a matrix (FPI divides it by the copy counts)."""


@dataclass
class BlockDims:
    n_head: int
    n_kv_head: int
    head_size: int
    n_hidden: int

    @property
    def groups(self) -> int:
        return self.n_head // self.n_kv_head

    def size(self, space: str) -> int:
        return {"q": self.n_head * self.head_size, "o_in": self.n_head * self.head_size,
                "k": self.n_kv_head * self.head_size, "v": self.n_kv_head * self.head_size,
                "hid": self.n_hidden}[space]


def is_norm(module: nn.Module) -> bool:
    """LayerNorm or RMSNorm (torch's, or a library's ``*Norm`` with a 1-d weight)."""
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        return True
    w = getattr(module, "weight", None)
    return type(module).__name__.endswith("Norm") and isinstance(w, torch.Tensor) and w.dim() == 1


def norm_kind(module: nn.Module) -> str:
    """``layer`` (mean-centred) or ``rms``."""
    return "layer" if isinstance(module, nn.LayerNorm) else "rms"


def norm_eps(module: nn.Module) -> float:
    for attr in ("eps", "variance_epsilon", "epsilon"):
        v = getattr(module, attr, None)
        if isinstance(v, float):
            return v
    return 1e-5


@dataclass
class RoleLayout:
    """One model's parameters with their axes' spaces (see the module docs)."""
    roles: protocol.WeightRoles
    shapes: dict[str, torch.Size]
    axes: dict[str, tuple[Axis, ...]]
    kinds: dict[str, str]
    """``linear`` (a matrix of a block role or a Linear/Conv layer), ``norm``, ``bias``, ``other``."""
    block_of: dict[str, tuple[int, str]]
    """Block parameters: name -> (block index, name inside the block)."""
    role_of: dict[str, str] = field(default_factory=dict)
    """Block parameters: name inside the block -> its role (``q``, ``attn_out``, ``norm0``, ...; ``/b``: bias)."""
    dims: list[BlockDims] = field(default_factory=list)

    @property
    def width(self) -> int:
        return self.roles.width

    @property
    def n_layer(self) -> int:
        return len(self.roles.blocks)

    @property
    def prefix(self) -> str:
        return self.roles.block_prefix

    def space_size(self, space: str, block: int | None) -> int:
        return self.width if space == "embd" else self.dims[min(block, len(self.dims) - 1)].size(space)

    def block_name(self, j: int, inner: str) -> str:
        return f"{self.prefix}.{j}.{inner}"

    def block_inner(self, l: int) -> list[str]:
        """Names inside block ``l`` (its parameters, in order)."""
        return [inner for name, (b, inner) in self.block_of.items() if b == l]

    def summary(self) -> dict:
        """What the MSG masks and a resumed run need of the source (JSON-able)."""
        return {"width": self.width, "n_layer": self.n_layer,
                "attn_channels": [d.n_head * d.head_size for d in self.dims],
                "hidden": [d.n_hidden for d in self.dims], "n_head": [d.n_head for d in self.dims],
                "n_kv_head": [d.n_kv_head for d in self.dims], "head_size": [d.head_size for d in self.dims]}


def _weights(roles: protocol.BlockRoles):
    """(role, Weight, out spaces, in spaces) for each matrix the block roles name."""
    out = []
    if roles.qkv is not None:
        out.append(("qkv", roles.qkv, ("q", "k", "v"), ("embd",)))
    for r in ("q", "k", "v"):
        w = getattr(roles, r)
        if w is not None:
            out.append((r, w, (r,), ("embd",)))
    out.append(("attn_out", roles.attn_out, ("embd",), ("o_in",)))
    if roles.mlp_gate is not None:
        out.append(("mlp_gate", roles.mlp_gate, ("hid",), ("embd",)))
    out.append(("mlp_in", roles.mlp_in, ("hid",), ("embd",)))
    out.append(("mlp_out", roles.mlp_out, ("embd",), ("hid",)))
    return out


def role_layout(model: nn.Module, what: str = "growth") -> RoleLayout:
    """The model's :class:`RoleLayout`; a one-line LeantrainError for a parameter no rule covers."""
    view = protocol.require(model, "weight_roles", what)
    roles = view.weight_roles()
    params = dict(model.named_parameters())
    shapes = {n: p.shape for n, p in params.items()}
    axes: dict[str, tuple[Axis, ...]] = {}
    kinds: dict[str, str] = {}
    block_of: dict[str, tuple[int, str]] = {}
    role_of: dict[str, str] = {}
    dims = []
    width = roles.width
    for l, br in enumerate(roles.blocks):
        dims.append(BlockDims(br.n_head, br.n_kv_head or br.n_head, br.head_size, br.n_hidden))
        pre = f"{roles.block_prefix}.{l}."
        for role, w, outs, ins in _weights(br):
            ax = [Axis(), Axis()]
            ax[w.out_axis] = Axis(outs, l)
            ax[w.in_axis] = Axis(ins, l, is_in=True)
            axes[pre + w.name], kinds[pre + w.name], role_of[w.name] = tuple(ax), "linear", role
            if w.bias is not None:
                axes[pre + w.bias], kinds[pre + w.bias], role_of[w.bias] = (Axis(outs, l),), "bias", role + "/b"
        for k, norm in enumerate(br.norms):
            for kind in ("weight", "bias"):
                name = f"{pre}{norm}.{kind}"
                if name in params:
                    axes[name], kinds[name] = (Axis(("embd",)),), "norm" if kind == "weight" else "bias"
                    role_of[f"{norm}.{kind}"] = f"norm{k}" + ("/b" if kind == "bias" else "")
        for name in params:
            if name.startswith(pre):
                block_of[name] = (l, name[len(pre):])
                if name not in axes:
                    raise LeantrainError(f"growth: block parameter {name} has no weight role "
                                         f"({type(model).__name__}.weight_roles() does not describe it)")
    for name, p in params.items():
        if name in axes:
            continue
        mod_name, _, attr = name.rpartition(".")
        module = model.get_submodule(mod_name) if mod_name else model
        axes[name], kinds[name] = _outside_axes(name, module, attr, p, width)
    return RoleLayout(roles, shapes, axes, kinds, block_of, role_of, dims)


def _outside_axes(name: str, module: nn.Module, attr: str, p: torch.Tensor, width: int):
    """A parameter outside the blocks: its axes from its module's kind (see the module docs)."""
    e, ein = Axis(("embd",)), Axis(("embd",), is_in=True)
    fixed = Axis()
    on = lambda n, a=e: a if n == width else fixed  # noqa: E731
    if isinstance(module, nn.Embedding):
        return (fixed, on(p.shape[1])), "other"
    if is_norm(module):
        return (on(p.shape[0]),), "norm" if attr == "weight" else "bias"
    if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
        transposed = type(module).__name__ == "Conv1D"  # Conv1D stores (in, out)
        if attr == "bias":
            return (on(p.shape[0]),), "bias"
        out_ax, in_ax = (1, 0) if transposed else (0, 1)
        ax = [fixed, fixed]
        ax[out_ax], ax[in_ax] = on(p.shape[out_ax]), on(p.shape[in_ax], ein)
        return tuple(ax), "linear"
    if isinstance(module, nn.modules.conv._ConvNd):
        if attr == "bias":
            return (on(p.shape[0]),), "bias"
        return (on(p.shape[0]), on(p.shape[1], ein), *[fixed] * (p.dim() - 2)), "linear"
    # a bare parameter (class token, position table, a head's output bias): its last axis
    return (*[fixed] * (p.dim() - 1), on(p.shape[-1])), "bias" if attr == "bias" else "other"


# ------------------------------------------------------------------------------------ checks
def check_role_growth(src: RoleLayout, tgt: RoleLayout, op: str, *, keep_head_size: bool = True,
                      keep_width: bool = False, depth_multiple: bool = False) -> None:
    """One-line ConfigError unless ``op`` can grow ``src`` into ``tgt`` (the same family, nothing
    shrinks, fixed axes equal, whole heads at the source's head size, the grouped-query ratio kept)."""
    if src.prefix != tgt.prefix:
        raise ConfigError(f"methods.grow.source: the source's blocks are {src.prefix}, the target's "
                          f"{tgt.prefix}: grow maps a model into one of the same family")
    if not src.n_layer or not tgt.n_layer:
        raise ConfigError("methods.grow.source: a model without blocks cannot grow")
    inner_s, inner_t = sorted(src.block_inner(0)), sorted(tgt.block_inner(0))
    outside_s = sorted(n for n in src.shapes if n not in src.block_of)
    outside_t = sorted(n for n in tgt.shapes if n not in tgt.block_of)
    if inner_s != inner_t or outside_s != outside_t:
        diff = sorted(set(inner_s) ^ set(inner_t)) + sorted(set(outside_s) ^ set(outside_t))
        raise ConfigError(f"methods.grow.source: the source's parameters differ from the target's "
                          f"({', '.join(diff[:4])}): grow maps a model into one of the same family and layout")
    if tgt.n_layer < src.n_layer:
        raise ConfigError(f"model: {op} cannot shrink the source's {src.n_layer} layers to {tgt.n_layer}")
    if tgt.width < src.width:
        raise ConfigError(f"model: {op} cannot shrink the source's width {src.width} to {tgt.width}")
    for name in outside_s:
        _check_axes(src, tgt, name, name, op)
    for inner in inner_s:
        _check_axes(src, tgt, src.block_name(0, inner), tgt.block_name(0, inner), op)
    d0 = src.dims[0]
    for t in tgt.dims:
        if t.n_hidden < d0.n_hidden:
            raise ConfigError(f"model: {op} cannot shrink the source's {d0.n_hidden} MLP units to {t.n_hidden}")
        if t.n_head < d0.n_head or t.n_kv_head < d0.n_kv_head:
            raise ConfigError(f"model: {op} cannot shrink the source's {d0.n_head} attention heads "
                              f"({d0.n_kv_head} key/value) to {t.n_head} ({t.n_kv_head})")
        if keep_head_size and t.head_size != d0.head_size:
            raise ConfigError(f"model: {op} grows width by adding whole heads at the source's head size "
                              f"{d0.head_size} (rotary embeddings fix it); the target's is {t.head_size}: "
                              f"use {tgt.width // d0.head_size} heads for width {tgt.width}")
        if keep_head_size and t.groups != d0.groups:
            raise ConfigError(f"model: {op} grows query and key/value heads in the source's ratio "
                              f"{d0.n_head}:{d0.n_kv_head}; the target has {t.n_head}:{t.n_kv_head}")
    if keep_width and (tgt.width != src.width or any(t.size("q") != d0.size("q") or t.n_hidden != d0.n_hidden
                                                    for t in tgt.dims)):
        raise ConfigError(f"model: {op} grows depth only; the target's width {tgt.width} (heads, MLP units) "
                          f"must equal the source's {src.width}")
    if depth_multiple and tgt.n_layer % src.n_layer:
        raise ConfigError(f"model: {op} copies the whole stack, so the target's {tgt.n_layer} layers must be "
                          f"a multiple of the source's {src.n_layer}")


def _check_axes(src: RoleLayout, tgt: RoleLayout, ns: str, nt: str, op: str) -> None:
    a, b = src.shapes[ns], tgt.shapes[nt]
    for k, ax in enumerate(src.axes[ns]):
        if not ax.spaces and a[k] != b[k]:
            raise ConfigError(f"model: {op} keeps {ns.split('.', 1)[-1]}'s axis {k} (size {a[k]}), the target "
                              f"has {b[k]} (vocabulary, positions, labels and image channels must match the source)")


# -------------------------------------------------------------------------------------- maps
@dataclass
class Maps:
    """Target unit -> source unit, per space: ``maps[("embd", None)]``, ``maps[(space, block)]``
    (channels). The first entries are the identity (the source's units keep their place)."""
    maps: dict[tuple[str, int | None], torch.Tensor]

    def get(self, space: str, block: int | None) -> torch.Tensor:
        return self.maps[(space, None if space == "embd" else block)]


def head_maps(src: BlockDims, tgt: BlockDims, mapping: str, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(query channel map, key/value channel map): key/value heads map by ``mapping``; each target
    query head copies the source query head at the same place in the copied key/value group."""
    hs, r = src.head_size, src.groups
    kv = unit_map(src.n_kv_head, tgt.n_kv_head, mapping, generator)
    q = (kv[:, None] * r + torch.arange(r)).flatten()
    ch = lambda heads: (heads[:, None] * hs + torch.arange(hs)).flatten()  # noqa: E731
    return ch(q), ch(kv)


def copy_maps(src: RoleLayout, tgt: RoleLayout, mapping: str = "random", generator=None) -> Maps:
    """Whole-head maps (FPI, AKI, Net2Net, MSG), one set per source block: q and o_in share the query
    map, k and v the key/value map (a copied head keeps its attention pattern)."""
    m = {("embd", None): unit_map(src.width, tgt.width, mapping, generator)}
    for l, d in enumerate(src.dims):
        t = tgt.dims[min(l, tgt.n_layer - 1)]
        q, kv = head_maps(d, t, mapping, generator)
        m |= {("q", l): q, ("o_in", l): q, ("k", l): kv, ("v", l): kv,
              ("hid", l): unit_map(d.n_hidden, t.n_hidden, mapping, generator)}
    return Maps(m)


def axis_map(src: RoleLayout, ax: Axis, maps: Maps, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, new) along one axis of a source tensor of size ``n``: source position of each target
    position, and which target positions are new units."""
    if not ax.spaces:
        return torch.arange(n), torch.zeros(n, dtype=torch.bool)
    idx, new, offset = [], [], 0
    for s in ax.spaces:
        g = maps.get(s, ax.block)
        n_src = src.space_size(s, ax.block)
        idx.append(offset + g)
        new.append(torch.arange(len(g)) >= n_src)
        offset += n_src
    return torch.cat(idx), torch.cat(new)


def _counts(idx: torch.Tensor) -> torch.Tensor:
    return torch.bincount(idx)[idx]


def widen(src: RoleLayout, name: str, t: torch.Tensor, maps: Maps, divide: bool = False) -> torch.Tensor:
    """Source tensor ``name`` at the target width: every growing axis gathered by its map (FPI:
    input axes divided by their units' copy counts)."""
    for k, ax in enumerate(src.axes[name]):
        if not ax.spaces:
            continue
        idx, _ = axis_map(src, ax, maps, t.shape[k])
        t = t.index_select(k, idx.to(t.device))
        if divide and ax.is_in:
            shape = [1] * t.dim()
            shape[k] = -1
            t = t / _counts(idx).to(t).view(shape)
    return t


def new_mask(src: RoleLayout, name: str, shape: torch.Size, maps: Maps) -> torch.Tensor:
    """Boolean tensor of the target shape: True where an entry involves a new unit on any axis."""
    out = torch.zeros(shape, dtype=torch.bool)
    for k, ax in enumerate(src.axes[name]):
        _, new = axis_map(src, ax, maps, src.shapes[name][k])
        view = [1] * len(shape)
        view[k] = -1
        out = out | new.view(view)
    return out


def source_tensors(model: nn.Module) -> Tensors:
    return {n: p.detach() for n, p in model.named_parameters()}


def rename_block(src: RoleLayout, name: str, j: int) -> str:
    _, inner = src.block_of[name]
    return src.block_name(j, inner)


# ------------------------------------------------------------------------------ copy operators
def copy_width(src: RoleLayout, tensors: Tensors, maps: Maps, divide: bool = True, aki: bool = False,
               noise: float = 0.0, generator=None) -> Tensors:
    """The source at the target width (same depth, same names). ``divide``: FPI (and, with a head tied
    to the embedding, the final norm divided by the copy counts — the head's input axis is the
    embedding's, which must stay a plain copy). ``aki``: a block's new output units come from the next
    block (the top block from itself). ``noise``: Net2Net's N(0, (noise·std W)²) on the new entries of
    the blocks' matrices."""
    out: Tensors = {}
    for name, t in tensors.items():
        w = widen(src, name, t, maps, divide)
        if name in src.block_of and aki and src.kinds[name] in ("linear", "bias"):
            l, inner = src.block_of[name]
            above = tensors[src.block_name(min(l + 1, src.n_layer - 1), inner)]
            w_next = widen(src, name, above, maps, divide)
            out_axes = [k for k, ax in enumerate(src.axes[name]) if ax.spaces and not ax.is_in]
            for k in out_axes:
                _, new = axis_map(src, src.axes[name][k], maps, t.shape[k])
                view = [1] * w.dim()
                view[k] = -1
                w = torch.where(new.to(w.device).view(view), w_next, w)
        if noise and name in src.block_of and src.kinds[name] == "linear":
            mask = new_mask(src, name, w.shape, maps).to(w.device)
            eps = torch.randn(w.shape, generator=generator).to(w)
            w = w + mask * eps * (noise * t.std())
        out[name] = w
    if divide and src.roles.tied and src.roles.final_norm is not None:
        e = _counts(maps.get("embd", None))
        for kind in ("weight", "bias"):
            name = f"{src.roles.final_norm}.{kind}"
            if name in out:
                out[name] = out[name] / e.to(out[name])
    return out


def stack(src: RoleLayout, tensors: Tensors, order: list[int]) -> Tensors:
    """Target block j = (widened) source block order[j]; everything outside the blocks unchanged."""
    out = {n: t for n, t in tensors.items() if n not in src.block_of}
    for j, i in enumerate(order):
        for inner in src.block_inner(i):
            out[src.block_name(j, inner)] = tensors[src.block_name(i, inner)].clone()
    return out


def stack_order(n_src: int, n_tgt: int) -> list[int]:
    return [j % n_src for j in range(n_tgt)]


def interleaved_sources(n_src: int, n_new: int) -> list[int]:
    return [(2 * j + 1) * n_src // (2 * n_new) for j in range(n_new)]


def grow_copy(op: str, src: RoleLayout, tgt: RoleLayout, tensors: Tensors, *, mapping: str = "random",
              noise: float = 0.0, g: int | None = None, generator=None, maps: Maps | None = None) -> Tensors:
    """fpi, aki, stackbert, gstack, net2net on role-described models (see ``copying.py`` for the
    operators; the same rules, addressed by roles)."""
    if op in ("stackbert", "gstack"):
        check_role_growth(src, tgt, op, keep_width=True, depth_multiple=op == "gstack")
        if op == "stackbert" and tgt.n_layer != 2 * src.n_layer:
            raise ConfigError(f"model: stackbert doubles the source's {src.n_layer} blocks, so the target needs "
                              f"{2 * src.n_layer} layers, got {tgt.n_layer} (gstack copies g times)")
        if op == "gstack" and g is not None and g * src.n_layer != tgt.n_layer:
            raise ConfigError(f"methods.grow.g: {g} copies of the source's {src.n_layer} blocks make "
                              f"{g * src.n_layer}, the target has {tgt.n_layer} layers")
        return stack(src, tensors, stack_order(src.n_layer, tgt.n_layer))
    check_role_growth(src, tgt, op)
    maps = maps or copy_maps(src, tgt, mapping, generator)
    wide = copy_width(src, tensors, maps, divide=True, aki=op == "aki", noise=noise if op == "net2net" else 0.0,
                      generator=generator)
    if op != "net2net":
        return stack(src, wide, stack_order(src.n_layer, tgt.n_layer))
    # Net2DeeperNet: each new block right after its source, a copy with zero output projections
    new_after = interleaved_sources(src.n_layer, tgt.n_layer - src.n_layer)
    zero = set()
    for br in src.roles.blocks[:1]:
        for w in (br.attn_out, br.mlp_out):
            zero |= {w.name} | ({w.bias} if w.bias else set())
    out = {n: t for n, t in wide.items() if n not in src.block_of}
    j = 0
    for i in range(src.n_layer):
        for copy in range(1 + new_after.count(i)):
            for inner in src.block_inner(i):
                t = wide[src.block_name(i, inner)]
                out[src.block_name(j, inner)] = torch.zeros_like(t) if copy and inner in zero else t.clone()
            j += 1
    return out


# ---------------------------------------------------------------------------------------- MSG
def msg_order(n_src: int, n_tgt: int) -> list[int]:
    """Source block of each new block (MSG's order, as ``msg.msg_block_order``)."""
    top = n_tgt % n_src
    return list(range(n_src)) * (n_tgt // n_src - 1) + list(range(n_src - top, n_src))


def msg_grow(src: RoleLayout, tgt: RoleLayout, tensors: Tensors, std: float = 0.02,
             new_blocks: Literal["copy", "random"] = "copy", generator=None) -> tuple[Tensors, list[int]]:
    """MSG's target tensors (the source's entries in the old slice, new entries N(0, std), norm
    weights 1, biases 0; new blocks on top, copies of grown source blocks or random) and the source
    block of every target block (-1: random)."""
    check_role_growth(src, tgt, "msg")
    maps = copy_maps(src, tgt, "cyclic")
    out: Tensors = {}
    for name, t in tensors.items():
        w = widen(src, name, t, maps)
        mask = new_mask(src, name, w.shape, maps).to(w.device)
        out[name] = torch.where(mask, _fresh(src.kinds[name], w, std, generator), w)
    order = list(range(src.n_layer))
    for j, i in enumerate(msg_order(src.n_layer, tgt.n_layer), start=src.n_layer):
        for inner in src.block_inner(i):
            t = out[src.block_name(i, inner)]
            name = src.block_name(i, inner)
            out[src.block_name(j, inner)] = t.clone() if new_blocks == "copy" else _fresh(src.kinds[name], t, std,
                                                                                          generator)
        order.append(i if new_blocks == "copy" else -1)
    return out, order


def _fresh(kind: str, like: torch.Tensor, std: float, generator) -> torch.Tensor:
    if kind == "bias":
        return torch.zeros_like(like)
    if kind == "norm":
        return torch.ones_like(like)
    return (torch.randn(like.shape, generator=generator) * std).to(like)


def masked_norm(x: torch.Tensor, m: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """A LayerNorm / RMSNorm with statistics over the dimensions weighted by ``m``, output × ``m``."""
    n, eps = m.sum(), norm_eps(module)
    dtype = x.dtype
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    mf = m.to(xf.dtype)
    if norm_kind(module) == "layer":
        mu = (xf * mf).sum(-1, keepdim=True) / n
        var = ((xf - mu).square() * mf).sum(-1, keepdim=True) / n
        y = (xf - mu) * torch.rsqrt(var + eps)
    else:
        y = xf * torch.rsqrt((xf.square() * mf).sum(-1, keepdim=True) / n + eps)
    y = y.to(dtype)
    if getattr(module, "weight", None) is not None:
        y = y * module.weight
    if getattr(module, "bias", None) is not None:
        y = y + module.bias
    return y * m


class RoleMasks(MaskValue):
    """MSG's forward-time masks on a role-described target (forward hooks; see ``msg.MSGMasks``):
    the residual stream entering the first block and every write to it (attention and MLP output
    projections) × (1…1, c…c); every norm of the residual width with masked statistics, output × m;
    new heads' and MLP units' outputs × c (pre-hooks on the output projections); a new block computes
    x + c·(F(x) − x). ``source`` is :meth:`RoleLayout.summary` of the source."""

    def __init__(self, source: dict, value: float = 0.0):
        super().__init__(value)
        self.source = source

    def attach(self, model: nn.Module) -> None:
        if self.handles:
            raise RuntimeError("RoleMasks is already attached")
        view = protocol.require(model, "weight_roles", "methods.grow")
        roles = view.weight_roles()
        blocks = view.blocks
        s, hook = self.source, self.handles.append
        d1 = s["width"]
        if roles.width > d1:
            hook(blocks[0].register_forward_pre_hook(self._block_input, with_kwargs=True))
            for m in model.modules():
                if is_norm(m) and getattr(m, "weight", None) is not None and m.weight.shape[0] == roles.width:
                    hook(m.register_forward_hook(self._norm))
        for l, br in enumerate(roles.blocks[:s["n_layer"]]):
            block = blocks[l]
            for w, n_old in ((br.attn_out, s["attn_channels"][l]), (br.mlp_out, s["hidden"][l])):
                mod = block.get_submodule(w.name.rpartition(".")[0])
                axis_size = mod.weight.shape[w.in_axis]
                if axis_size > n_old:
                    hook(mod.register_forward_pre_hook(lambda mod, args, n=n_old: (self._units(args[0], n),
                                                                                   *args[1:])))
                if roles.width > d1:
                    hook(mod.register_forward_hook(lambda mod, args, out: out * self.mask(d1, out)))
        for j in range(s["n_layer"], len(blocks)):
            hook(blocks[j].register_forward_hook(self._new_block, with_kwargs=True))

    def _units(self, x, n_old):
        return x * self.mask(n_old, x)

    def _block_input(self, module, args, kwargs):
        if args:
            return (args[0] * self.mask(self.source["width"], args[0]), *args[1:]), kwargs
        h = kwargs["hidden_states"]
        return args, {**kwargs, "hidden_states": h * self.mask(self.source["width"], h)}

    def _norm(self, module, args, out):
        x = args[0]
        return masked_norm(x, self.mask(self.source["width"], x), module)

    def _new_block(self, module, args, kwargs, out):
        x = args[0] if args else kwargs["hidden_states"]
        if isinstance(out, tuple):
            return (x + self.value * (out[0] - x), *out[1:])
        return x + self.value * (out - x)

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


# --------------------------------------------------------------------------------------- LiGO
def _grow_axis(t: torch.Tensor, k: int, c: torch.Tensor | None) -> torch.Tensor:
    """Along axis ``k``: [T; C·T] (LiGO's grow_in / grow_out are the same along their axis)."""
    if c is None:
        return t
    new = torch.tensordot(t, c, dims=([k], [1])).movedim(-1, k)
    return torch.cat([t, new], dim=k)


def _coefficients(n_src: int, n_tgt: int, scheme: str, generator) -> torch.Tensor | None:
    from .ligo import width_coefficients
    return width_coefficients(n_src, n_tgt, scheme, generator)


class RoleLiGO(TrainedOperator):
    """LiGO on a role-described model (see ``ligo.py`` for the operator and its tying). Per target
    block: out-maps for q, k, v and the MLP's hidden units (gate and up share it); o's input map is
    v's out-map (with grouped-query attention, whose v has fewer channels than o's input, o gets its
    own); one residual map for everything on the stream. Depth: per target block, role and
    weight/bias, coefficients over the source blocks."""

    def __init__(self, src: RoleLayout, tgt: RoleLayout, tensors: Tensors,
                 depth_init: str = "stackbert_noisy", width_init: str = "rand", noise: float = 0.03,
                 generator=None):
        super().__init__()
        from .ligo import depth_coefficients
        check_role_growth(src, tgt, "ligo", keep_head_size=False)
        self.src, self.tgt = src, tgt
        l1, l2 = src.n_layer, tgt.n_layer
        coef = lambda space, j: _coefficients(src.space_size(space, 0), tgt.space_size(space, j),  # noqa: E731
                                              width_init, generator)
        self.width_embd = _param(coef("embd", None) if tgt.width > src.width else None)
        spaces = ["q", "k", "v", "hid"]
        self.tie_o = all(d.groups == 1 for d in src.dims) and all(d.groups == 1 for d in tgt.dims)
        if not self.tie_o:
            spaces.append("o_in")
        self.width = nn.ParameterDict()
        self._keys: dict[str, tuple[str, int]] = {}
        for s in spaces:
            for j in range(l2):
                c = coef(s, j)
                if c is not None:
                    self.width[f"{s}{j}"] = nn.Parameter(c)
                    self._keys[f"{s}{j}"] = (s, j)
        self.modules_ = sorted({r.split("/")[0] for r in src.role_of.values()})
        depth = lambda: depth_coefficients(l2, l1, depth_init, noise, generator)  # noqa: E731
        self.depth_weight = nn.Parameter(torch.stack([depth() for _ in self.modules_], dim=1))
        has_bias = any(r.endswith("/b") for r in src.role_of.values())
        self.depth_bias = nn.Parameter(torch.stack([depth() for _ in self.modules_], dim=1)) if has_bias else None
        self._names = {}
        for i, inner in enumerate(src.block_inner(0)):
            stacked = torch.stack([tensors[src.block_name(l, inner)] for l in range(l1)])
            self.register_buffer(f"blk{i}", stacked, persistent=False)
            self._names[inner] = f"blk{i}"
        self._outside = {}
        for i, name in enumerate(n for n in tensors if n not in src.block_of):
            self.register_buffer(f"out{i}", tensors[name], persistent=False)
            self._outside[name] = f"out{i}"
        ref = next(iter(tensors.values()))
        self.to(device=ref.device, dtype=ref.dtype)

    def _c(self, space: str, j: int | None):
        if space == "embd":
            return self.width_embd
        if space == "o_in" and self.tie_o:
            space = "v"
        return self.width[f"{space}{j}"] if f"{space}{j}" in self.width else None

    def _grow(self, t: torch.Tensor, axes: tuple[Axis, ...], j: int | None) -> torch.Tensor:
        for k, ax in enumerate(axes):
            if not ax.spaces:
                continue
            if len(ax.spaces) == 1:
                t = _grow_axis(t, k, self._c(ax.spaces[0], j))
            else:  # fused q|k|v: grow each part with its map
                sizes = [self.src.space_size(s, 0) for s in ax.spaces]
                t = torch.cat([_grow_axis(p, k, self._c(s, j)) for p, s in zip(t.split(sizes, dim=k), ax.spaces)],
                              dim=k)
        return t

    def forward(self) -> Tensors:
        src = self.src
        out = {name: self._grow(getattr(self, buf), src.axes[name], None) for name, buf in self._outside.items()}
        for j in range(self.tgt.n_layer):
            for inner, buf in self._names.items():
                role = src.role_of[inner]
                bias = role.endswith("/b")
                coeff = (self.depth_bias if bias else self.depth_weight)[j, self.modules_.index(role.split("/")[0])]
                mixed = torch.tensordot(coeff, getattr(self, buf), dims=1)
                out[self.tgt.block_name(j, inner)] = self._grow(mixed, src.axes[src.block_name(0, inner)], j)
        return out

    def copy_maps(self) -> dict[tuple[str, int], torch.Tensor]:
        """With one-hot width maps (``width_init="sel"``): the copy maps they are, per target block."""
        one_hot = lambda c: torch.cat([torch.arange(c.shape[1]), c.detach().argmax(1).cpu()])  # noqa: E731
        out = {self._keys[k]: one_hot(c) for k, c in self.width.items()}
        if self.width_embd is not None:
            out[("embd", None)] = one_hot(self.width_embd)
        if self.tie_o:
            out |= {("o_in", j): m for (s, j), m in list(out.items()) if s == "v"}
        return out


# -------------------------------------------------------------------------------------- Mango
def shared_maps(src: RoleLayout, tgt: RoleLayout, mapping: str, generator) -> Maps:
    """Whole-head copy maps that every block shares (Mango's cores are not per layer)."""
    one = copy_maps(src, tgt, mapping, generator)
    return Maps({(s, b): one.get(s, 0) for (s, b) in one.maps if s == "embd" or b == 0} |
                {(s, l): one.get(s, 0) for l in range(max(src.n_layer, tgt.n_layer)) for s in SPACES if s != "embd"})


def _selection(g: torch.Tensor, n_src: int, divide: bool = False) -> torch.Tensor:
    s = torch.zeros(n_src, len(g), dtype=torch.float64)  # cast with the operator
    s[g, torch.arange(len(g))] = 1.0
    return s / torch.bincount(g, minlength=n_src)[:, None] if divide else s


class RoleMango(TrainedOperator):
    """Mango's TR-MPO (see ``mango.py``) on a role-described model. The paper's B = 12 blocks of D×D
    assume one width everywhere; here the block matrices are grouped by their (in-space, out-space)
    pair — with grouped-query attention q|o, k|v, gate|up and down have different shapes — and each
    group G gets the ring M₂ᴳ = TR-MPO(M₁ᴳ; S_Bᴳ, S_in, S_out, S_L) with cores shared by every group
    that reads a space: one input core and one output core per space (residual, query, key/value
    channels, MLP units), one depth core S_L [ours]. Vectors (norms, biases) and the parameters
    outside the blocks grow by trainable width maps per space (input axes by their own, the FPI
    divided one) and a depth map; with a tied head the final norm gets a trainable scale.

    Init [ours, as the GPT operator's]: FPI width with one whole-head map per space shared by all
    blocks and StackBERT depth, split over the R diagonal bond channels; then N(0, noise²) on every
    core entry."""

    def __init__(self, src: RoleLayout, tgt: RoleLayout, tensors: Tensors, rank: int = 1, noise: float = 1e-3,
                 mapping: str = "random", generator=None):
        super().__init__()
        check_role_growth(src, tgt, "mango")
        if rank < 1:
            raise ConfigError(f"rank: must be ≥ 1, got {rank}")
        if any(d != src.dims[0] for d in src.dims) or any(d != tgt.dims[0] for d in tgt.dims):
            raise ConfigError("model: mango shares its cores over the layers, so every block must have the "
                              "same heads and MLP units")
        self.src, self.tgt, self.rank = src, tgt, rank
        self.maps = shared_maps(src, tgt, mapping, generator)
        l1, l2 = src.n_layer, tgt.n_layer
        depth = _selection(torch.arange(l2) % l1, l1)

        def core(base: torch.Tensor) -> nn.Parameter:  # built in float64, then cast with the operator
            c = torch.zeros(rank, *base.shape, rank, dtype=torch.float64)
            for a in range(rank):
                c[a, :, :, a] = base * rank ** -0.25
            return nn.Parameter(c + noise * torch.randn(c.shape, generator=generator).double())

        key = lambda s: "kv" if s in ("k", "v") else ("q" if s == "o_in" else s)  # noqa: E731
        self._key = key
        g = {key(s): self.maps.get(s, 0) for s in SPACES}
        n1 = {key(s): src.space_size(s, 0) for s in SPACES}
        self.s_in = nn.ParameterDict({k: core(_selection(g[k], n1[k], divide=True)) for k in g})
        self.s_out = nn.ParameterDict({k: core(_selection(g[k], n1[k])) for k in g})
        self.s_l = core(depth)
        # block matrices grouped by (in space, out space): the names inside a block, in order
        self.groups: dict[str, list[str]] = {}
        for inner in src.block_inner(0):
            name = src.block_name(0, inner)
            if src.kinds[name] != "linear":
                continue
            axes = src.axes[name]
            o = next(k for k, a in enumerate(axes) if not a.is_in)
            gk = f"{'+'.join(key(s) for s in axes[1 - o].spaces)}__{'+'.join(key(s) for s in axes[o].spaces)}"
            self.groups.setdefault(gk, []).append(inner)
        self.s_b = nn.ParameterDict({gk: core(torch.eye(len(names))) for gk, names in self.groups.items()})
        for gk, names in self.groups.items():
            self.register_buffer(f"m1_{gk}", torch.stack([torch.stack(
                [self._as_in_out(src.block_name(l, n), tensors[src.block_name(l, n)]) for n in names])
                for l in range(l1)], dim=-1), persistent=False)
        # vectors and the parameters outside the blocks
        self.width = nn.ParameterDict({k: nn.Parameter(_selection(g[k], n1[k])) for k in g})
        self.width_in = nn.Parameter(_selection(g["embd"], n1["embd"], divide=True))
        self.depth = nn.Parameter(depth.clone())
        self.vectors = [n for n in src.block_inner(0) if src.kinds[src.block_name(0, n)] != "linear"]
        for i, n in enumerate(self.vectors):
            self.register_buffer(f"v1_{i}", torch.stack([tensors[src.block_name(l, n)] for l in range(l1)], dim=-1),
                                 persistent=False)
        self._outside = [n for n in tensors if n not in src.block_of]
        for i, n in enumerate(self._outside):
            self.register_buffer(f"out_{i}", tensors[n], persistent=False)
        self.tied_norm = None
        if src.roles.tied and src.roles.final_norm is not None:
            self.tied_norm = src.roles.final_norm
            self.head_scale = nn.Parameter(1.0 / _counts(g["embd"]).double())
        ref = next(iter(tensors.values()))
        self.to(device=ref.device, dtype=ref.dtype)

    def _as_in_out(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """A block matrix as [in, out] (Mango's M[b, i, o, l] = W_b[o, i])."""
        o = next(k for k, a in enumerate(self.src.axes[name]) if not a.is_in)
        return t if o == 1 else t.T

    def _from_in_out(self, name: str, t: torch.Tensor) -> torch.Tensor:
        return self._as_in_out(name, t)  # a transpose is its own inverse

    def _vector(self, t: torch.Tensor, spaces: tuple[str, ...], maps) -> torch.Tensor:
        """Grow axis 0 of ``t`` (a vector, or a vector × layers) by the space maps, part by part."""
        if not spaces:
            return t
        sizes = [self.src.space_size(s, 0) for s in spaces]
        return torch.cat([torch.tensordot(maps[self._key(s)], p, dims=([0], [0])) for p, s in
                          zip(t.split(sizes), spaces)])

    def _m2(self, gk: str) -> torch.Tensor:
        from .mango import tr_mpo
        ins, outs = gk.split("__")
        return tr_mpo(getattr(self, f"m1_{gk}"), self.s_b[gk], self._core(self.s_in, ins, True),
                      self._core(self.s_out, outs, False), self.s_l)

    def _core(self, cores, spaces: str, divide: bool) -> torch.Tensor:
        """A (fused) axis' core: the parts' cores block-diagonal along the in/out axes."""
        parts = spaces.split("+")
        if len(parts) == 1:
            return cores[parts[0]]
        cs = [cores[p] for p in parts]
        r = self.rank
        n1, n2 = sum(c.shape[1] for c in cs), sum(c.shape[2] for c in cs)
        out = cs[0].new_zeros(r, n1, n2, r)
        i = o = 0
        for c in cs:
            out[:, i:i + c.shape[1], o:o + c.shape[2], :] = c
            i, o = i + c.shape[1], o + c.shape[2]
        return out

    def forward(self) -> Tensors:
        src, tgt = self.src, self.tgt
        out: Tensors = {}
        for gk, names in self.groups.items():
            m2 = self._m2(gk)  # [B, I₂, O₂, L₂]
            for b, inner in enumerate(names):
                for j, w in enumerate(m2[b].unbind(-1)):
                    out[tgt.block_name(j, inner)] = self._from_in_out(src.block_name(0, inner), w)
        for i, n in enumerate(self.vectors):
            spaces = src.axes[src.block_name(0, n)][0].spaces
            v = self._vector(getattr(self, f"v1_{i}"), spaces, self.width) @ self.depth  # [n₂, L₂]
            for j, vj in enumerate(v.unbind(-1)):
                out[tgt.block_name(j, n)] = vj
        for i, n in enumerate(self._outside):
            t = getattr(self, f"out_{i}")
            for k, ax in enumerate(src.axes[n]):
                if ax.spaces:
                    w = self.width_in if ax.is_in else self.width["embd"]
                    t = torch.tensordot(t, w, dims=([k], [0])).movedim(-1, k)
            if self.tied_norm is not None and n.startswith(self.tied_norm + "."):
                t = t * self.head_scale
            out[n] = t
        return out


def _param(t):
    return None if t is None else nn.Parameter(t)


__all__ = ["RoleLayout", "role_layout", "check_role_growth", "Maps", "copy_maps", "copy_width", "widen",
           "grow_copy", "stack", "msg_grow", "RoleMasks", "masked_norm", "RoleLiGO", "RoleMango", "shared_maps",
           "is_norm"]
