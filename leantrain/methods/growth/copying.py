"""Copy-based growth: StackBERT, G_stack, Net2Net, bert2BERT's FPI and AKI.

Width grows by index maps (:class:`WidthMaps`): a target unit copies a source unit. In FPI/Net2Net
an out-dimension copies rows, an in-dimension copies columns divided by the number of copies of
their unit, so the duplicated activations re-sum to the source's value. Depth grows by copying
blocks. All functions return the target's tensors keyed like ``GPT.named_parameters()``.
"""
from __future__ import annotations

import torch

from ...errors import ConfigError
from ...models.gpt import GPT, GPTConfig
from .layout import (ATTN_OUT, FINAL_NORM, MLP_IN, MLP_OUT, NORM_1, NORM_2, POSITION, QKV, TOKEN, Tensors,
                     WidthMaps, check_growth, copy_maps, get_block, non_block, put_block, source_tensors)


# ------------------------------------------------------------------------------------- width
def _in_expand(w: torch.Tensor, cols: torch.Tensor, divide: bool) -> torch.Tensor:
    """Copy columns by ``cols``; FPI divides each by its unit's number of copies."""
    w = w[:, cols]
    return w / torch.bincount(cols)[cols].to(w) if divide else w


def _linear(w: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, divide: bool,
            w_next: torch.Tensor | None = None) -> torch.Tensor:
    """Widen a Linear weight (out × in). With ``w_next`` (AKI) the new rows come from the next
    block's in-expanded weight instead of this one's."""
    u = _in_expand(w, cols, divide)
    if w_next is None:
        return u[rows]
    n = w.shape[0]
    return torch.cat([u, _in_expand(w_next, cols, divide)[rows[n:]]])


def _vector(b: torch.Tensor, rows: torch.Tensor, b_next: torch.Tensor | None = None) -> torch.Tensor:
    if b_next is None:
        return b[rows]
    return torch.cat([b, b_next[rows[b.shape[0]:]]])


def _perturb(u: torch.Tensor, n_rows: int, n_cols: int, noise: float,
             generator: torch.Generator | None) -> torch.Tensor:
    """Net2Net's symmetry breaking: noise (std ``noise`` × the weight's std) on the new units' entries."""
    if noise == 0:
        return u
    new = torch.ones_like(u, dtype=torch.bool)
    new[:n_rows, :n_cols] = False
    eps = torch.randn(u.shape, generator=generator).to(u)
    return u + new * eps * (noise * u.std())


def split_qkv(block: Tensors) -> Tensors:
    """The block with c_attn's weight and bias split into the Linears ``q``, ``k``, ``v``."""
    d = block[f"{ATTN_OUT}.weight"].shape[0]
    out = {k: v for k, v in block.items() if not k.startswith(f"{QKV}.")}
    for kind in ("weight", "bias"):
        if f"{QKV}.{kind}" in block:
            out |= {f"{part}.{kind}": t for part, t in zip("qkv", block[f"{QKV}.{kind}"].split(d))}
    return out


def join_qkv(block: Tensors) -> Tensors:
    out = {k: v for k, v in block.items() if k[:2] not in ("q.", "k.", "v.")}
    for kind in ("weight", "bias"):
        if f"q.{kind}" in block:
            out[f"{QKV}.{kind}"] = torch.cat([block[f"{part}.{kind}"] for part in "qkv"])
    return out


def widen_block(block: Tensors, maps: WidthMaps, l: int, divide: bool = True, above: Tensors | None = None,
                noise: float = 0.0, generator: torch.Generator | None = None) -> Tensors:
    """Block ``l`` at the target width. ``above``: the next block's tensors, whose in-expanded rows
    give the new out-units (AKI). LayerNorms copy along the residual stream."""
    e, hid = maps.embd, maps.hidden[l]
    linears = {"q": (maps.q[l], e), "k": (maps.k[l], e), "v": (maps.v[l], e),  # name: (row map, column map)
               ATTN_OUT: (e, maps.v[l]), MLP_IN: (hid, e), MLP_OUT: (e, hid)}
    b = split_qkv(block)
    up = split_qkv(above) if above is not None else {}
    out = {}
    for name, (rows, cols) in linears.items():
        w = b[f"{name}.weight"]
        out[f"{name}.weight"] = _perturb(_linear(w, rows, cols, divide, up.get(f"{name}.weight")),
                                         *w.shape, noise, generator)
        if f"{name}.bias" in b:
            out[f"{name}.bias"] = _vector(b[f"{name}.bias"], rows, up.get(f"{name}.bias"))
    for key in (f"{NORM_1}.weight", f"{NORM_1}.bias", f"{NORM_2}.weight", f"{NORM_2}.bias"):
        if key in b:
            out[key] = b[key][e]
    return join_qkv(out)


def copy_width(tensors: Tensors, n_layer: int, maps: WidthMaps, divide: bool = True, aki: bool = False,
               noise: float = 0.0, generator: torch.Generator | None = None) -> Tensors:
    """The source at the target width (same depth).

    ``divide`` (FPI, Net2Net): in-dimensions are divided by their copy counts, and so is the final
    LayerNorm (γ, β) — it feeds only the tied head, whose in-dimension is the token embedding and must stay a
    plain copy. Without ``divide`` every copy is plain (LiGO's one-hot maps). ``aki``: new rows of
    block l come from block l+1 (the top block from itself).
    """
    e = maps.embd
    out = {TOKEN: tensors[TOKEN][:, e], POSITION: tensors[POSITION][:, e]}
    scale = torch.bincount(e)[e].to(tensors[f"{FINAL_NORM}.weight"]) if divide else 1.0
    for key in (f"{FINAL_NORM}.weight", f"{FINAL_NORM}.bias"):
        if key in tensors:
            out[key] = tensors[key][e] / scale
    for l in range(n_layer):
        above = get_block(tensors, min(l + 1, n_layer - 1)) if aki else None
        put_block(out, l, widen_block(get_block(tensors, l), maps, l, divide, above, noise, generator))
    return out


# ------------------------------------------------------------------------------------- depth
def stack_depth(tensors: Tensors, order: list[int]) -> Tensors:
    """Target block j = source block order[j] (copies); embeddings and final LayerNorm unchanged."""
    out = dict(non_block(tensors))
    for j, src in enumerate(order):
        put_block(out, j, {k: v.clone() for k, v in get_block(tensors, src).items()})
    return out


def stack_order(n_src: int, n_tgt: int) -> list[int]:
    """StackBERT / G_stack order: target block j copies source block j mod n_src."""
    return [j % n_src for j in range(n_tgt)]


def stackbert(source: GPT, target: GPTConfig) -> Tensors:
    """StackBERT: double the depth, block i copied into slot i + L (Gong et al. 2019, ``double.py``)."""
    src = source.config
    check_growth(src, target, "stackbert", keep_width=True)
    if target.n_layer != 2 * src.n_layer:
        raise ConfigError(f"model.n_layer: stackbert doubles the source's {src.n_layer} blocks, so the "
                          f"target needs n_layer={2 * src.n_layer}, got {target.n_layer} (gstack copies g times)")
    return stack_depth(source_tensors(source), stack_order(src.n_layer, target.n_layer))


def gstack(source: GPT, target: GPTConfig) -> Tensors:
    """G_stack: copy the whole stack g = L₂/L₁ times, target block i = source block i mod L₁ (Du et
    al. 2024). Width unchanged; not function-preserving."""
    src = source.config
    check_growth(src, target, "gstack", keep_width=True, depth_multiple=True)
    return stack_depth(source_tensors(source), stack_order(src.n_layer, target.n_layer))


def fpi(source: GPT, target: GPTConfig, mapping: str = "random", maps: WidthMaps | None = None,
        generator: torch.Generator | None = None) -> Tensors:
    """bert2BERT's function-preserving initialisation: FPI width (whole heads copied), then depth by
    stacking (block j = block j mod L₁)."""
    src = source.config
    check_growth(src, target, "fpi")
    maps = maps or copy_maps(src, target, mapping, generator)
    wide = copy_width(source_tensors(source), src.n_layer, maps, divide=True)
    return stack_depth(wide, stack_order(src.n_layer, target.n_layer))


def aki(source: GPT, target: GPTConfig, mapping: str = "random", maps: WidthMaps | None = None,
        generator: torch.Generator | None = None) -> Tensors:
    """bert2BERT's advanced knowledge initialisation: as FPI, but every new output unit of block l
    (rows of q/k/v, c_proj, c_fc, mlp.c_proj and their biases) is taken from block l+1's
    in-expanded weights (the top block uses itself). Breaks FPI's symmetry; not function-preserving."""
    src = source.config
    check_growth(src, target, "aki")
    maps = maps or copy_maps(src, target, mapping, generator)
    wide = copy_width(source_tensors(source), src.n_layer, maps, divide=True, aki=True)
    return stack_depth(wide, stack_order(src.n_layer, target.n_layer))


def interleaved_sources(n_src: int, n_new: int) -> list[int]:
    """Source blocks spread evenly over the depth, one per new block (each new block follows its
    source); doubling puts one after every block."""
    return [(2 * j + 1) * n_src // (2 * n_new) for j in range(n_new)]


def net2net(source: GPT, target: GPTConfig, noise: float = 0.0, mapping: str = "random",
            generator: torch.Generator | None = None) -> Tensors:
    """Net2WiderNet + Net2DeeperNet (Chen, Goodfellow, Shlens 2016) for a pre-LN GPT.

    Wider: FPI's copy-and-divide maps; ``noise`` > 0 adds N(0, (noise·std W)²) to the new units'
    entries of every Linear weight to break symmetry (then the function is only approximately kept).
    Deeper: each new block is inserted right after a source block, as a copy of it whose output
    projections (attention and MLP ``c_proj``, weights and biases) are zero — an identity block.
    """
    src = source.config
    check_growth(src, target, "net2net")
    maps = copy_maps(src, target, mapping, generator)
    wide = copy_width(source_tensors(source), src.n_layer, maps, divide=True, noise=noise, generator=generator)
    out = dict(non_block(wide))
    new_after = interleaved_sources(src.n_layer, target.n_layer - src.n_layer)
    j = 0
    for i in range(src.n_layer):
        put_block(out, j, get_block(wide, i))
        j += 1
        for _ in range(new_after.count(i)):
            block = {k: v.clone() for k, v in get_block(wide, i).items()}
            for key in (f"{ATTN_OUT}.weight", f"{ATTN_OUT}.bias", f"{MLP_OUT}.weight", f"{MLP_OUT}.bias"):
                if key in block:
                    block[key] = torch.zeros_like(block[key])
            put_block(out, j, block)
            j += 1
    return out
