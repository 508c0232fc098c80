"""LiGO (Wang et al., ICLR 2023; code VITA-Group/LiGO ``ligo.py``): a learned linear growth
operator, depth ∘ width, with bert2BERT-style tying.

Depth [code]: target block j's module m is Σ_l w[j, m, l] · W_l over all source blocks, with
separate coefficients per module (ln_1, q, k, v, o, ln_2, fc, proj) and for weights and biases.
Width [code]: a learnable C ∈ ℝ^{(D₂−D₁)×D₁} per map, A = [I; C] — old coordinates kept, new ones
learned combinations of old ones: a Linear's in-dimension becomes [W, W·C_inᵀ], its out-dimension
[W; C_out·W]; biases and LayerNorms use their out-map, embeddings the residual map.
Tying [code]: one residual-stream map (embeddings, every LayerNorm, in-dim of q/k/v/fc, out-dim of
o/proj); per target block separate out-maps for q, k, v and fc; o's in-map is v's out-map, proj's
in-map is fc's out-map. For our GPT [ours]: the final LayerNorm uses the residual map (it feeds
the head tied to the token embedding, which uses it too); q, k, v are the three parts of c_attn.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn

from ...errors import ConfigError
from ...models.gpt import GPT, GPTConfig
from .layout import (ATTN_OUT, MLP_IN, MLP_OUT, NON_BLOCK, NORM_1, NORM_2, POSITION, PREFIX, QKV, TOKEN, FINAL_NORM,
                     GrowthOperator, Tensors, check_growth, source_tensors)

MODULES = ("ln_1", "q", "k", "v", "o", "ln_2", "fc", "proj")
DEPTH_INITS = ("stackbert", "stackbert_noisy", "interlace", "rand")
WIDTH_INITS = ("rand", "sel")


def grow_in(w: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    """In-dimension (columns) [W, W·Cᵀ]."""
    return w if c is None else torch.cat([w, w @ c.T], dim=1)


def grow_out(w: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    """Out-dimension (rows, or a vector's entries) [W; C·W]."""
    return w if c is None else torch.cat([w, c @ w])


def _source_stack(tensors: Tensors, cfg: GPTConfig, module: str, kind: str) -> torch.Tensor | None:
    """Module ``module``'s weight or bias in every source block, stacked on a leading L₁ axis."""
    d = cfg.n_embd
    name = {"ln_1": NORM_1, "ln_2": NORM_2, "q": QKV, "k": QKV, "v": QKV,
            "o": ATTN_OUT, "fc": MLP_IN, "proj": MLP_OUT}[module]
    key = f"{name}.{kind}"
    if f"{PREFIX}.0.{key}" not in tensors:
        return None
    ts = [tensors[f"{PREFIX}.{l}.{key}"] for l in range(cfg.n_layer)]
    if module in ("q", "k", "v"):
        ts = [t.split(d)["qkv".index(module)] for t in ts]
    return torch.stack(ts)


def depth_coefficients(n_tgt: int, n_src: int, scheme: str, noise: float,
               generator: torch.Generator | None) -> torch.Tensor:
    """Coefficients w[j, l] (rows sum to 1). ``stackbert``: one-hot at j mod L₁; ``stackbert_noisy``:
    plus U(0, noise), renormalised; ``interlace``: one-hot at ⌊j·L₁/L₂⌋ (LiGO's ⌊j/2⌋ for doubling,
    generalised [ours]); ``rand``: uniform, normalised."""
    j = torch.arange(n_tgt)
    w = torch.zeros(n_tgt, n_src)
    if scheme == "rand":
        w = torch.rand(n_tgt, n_src, generator=generator)
    elif scheme in ("stackbert", "stackbert_noisy"):
        if scheme == "stackbert_noisy":
            w = torch.rand(n_tgt, n_src, generator=generator) * noise
        w[j, j % n_src] = 1.0
    elif scheme == "interlace":
        w[j, j * n_src // n_tgt] = 1.0
    else:
        raise ConfigError(f"depth_init: expected one of {', '.join(DEPTH_INITS)}, got {scheme!r}")
    return w / w.sum(1, keepdim=True)


def width_coefficients(n_src: int, n_tgt: int, scheme: str,
                       generator: torch.Generator | None) -> torch.Tensor | None:
    """C ∈ ℝ^{(n_tgt−n_src)×n_src} (None when the dimension does not grow). ``rand``: rows uniform,
    normalised to sum 1; ``sel``: rows one-hot at a random source unit (a plain copy)."""
    if n_tgt == n_src:
        return None
    if scheme == "rand":
        c = torch.rand(n_tgt - n_src, n_src, generator=generator)
        return c / c.sum(1, keepdim=True)
    if scheme == "sel":
        c = torch.zeros(n_tgt - n_src, n_src)
        c[torch.arange(n_tgt - n_src), torch.randint(0, n_src, (n_tgt - n_src,), generator=generator)] = 1.0
        return c
    raise ConfigError(f"width_init: expected one of {', '.join(WIDTH_INITS)}, got {scheme!r}")


def _param(t: torch.Tensor | None) -> nn.Parameter | None:
    return None if t is None else nn.Parameter(t)


class LiGOOperator(GrowthOperator):
    """LiGO's learned growth operator from a trained ``source`` GPT to the ``target`` config.

    Defaults follow the reference: ``depth_init="stackbert_noisy"`` (noise 0.03), ``width_init="rand"``.
    The head count is free (the maps mix channels); ``sel`` + ``stackbert`` is a plain copy growth.
    """

    def __init__(self, source: GPT, target: GPTConfig,
                 depth_init: Literal["stackbert", "stackbert_noisy", "interlace", "rand"] = "stackbert_noisy",
                 width_init: Literal["rand", "sel"] = "rand", noise: float = 0.03,
                 generator: torch.Generator | None = None):
        src = source.config
        super().__init__(src, target)
        check_growth(src, target, "ligo", keep_head_size=False)
        tensors = source_tensors(source)
        d1, d2, l1, l2 = src.n_embd, target.n_embd, src.n_layer, target.n_layer
        self.width_embd = _param(width_coefficients(d1, d2, width_init, generator))
        per_block = lambda n: nn.ParameterList(  # noqa: E731 — one out-map per target block
            [width_coefficients(n * d1, n * d2, width_init, generator) for _ in range(l2)]) if d2 > d1 else None
        self.width_q, self.width_k, self.width_v = per_block(1), per_block(1), per_block(1)
        self.width_fc = per_block(4)
        depth = lambda: depth_coefficients(l2, l1, depth_init, noise, generator)  # noqa: E731
        self.depth_weight = nn.Parameter(torch.stack([depth() for _ in MODULES], dim=1))  # [L₂, module, L₁]
        self.depth_bias = nn.Parameter(torch.stack([depth() for _ in MODULES], dim=1)) if src.bias else None
        ref = tensors[TOKEN]
        for m in MODULES:
            for kind in ("weight", "bias"):
                stack = _source_stack(tensors, src, m, kind)
                if stack is not None:
                    self.register_buffer(f"src_{m}_{kind}", stack, persistent=False)
        for role, key in NON_BLOCK:
            if key in tensors:
                self.register_buffer(f"src_{role}", tensors[key], persistent=False)
        self.to(device=ref.device, dtype=ref.dtype)

    def _mixed(self, j: int, module: str, kind: str) -> torch.Tensor:
        w = (self.depth_weight if kind == "weight" else self.depth_bias)[j, MODULES.index(module)]
        return torch.tensordot(w, getattr(self, f"src_{module}_{kind}"), dims=1)

    def _block(self, j: int) -> Tensors:
        e = self.width_embd
        q, k, v, fc = ((None if maps is None else maps[j])
                       for maps in (self.width_q, self.width_k, self.width_v, self.width_fc))
        mix = lambda module, kind="weight": self._mixed(j, module, kind)  # noqa: E731
        out = {f"{NORM_1}.weight": grow_out(mix("ln_1"), e), f"{NORM_2}.weight": grow_out(mix("ln_2"), e),
               f"{QKV}.weight": torch.cat([grow_out(grow_in(mix(m), e), c) for m, c in
                                                (("q", q), ("k", k), ("v", v))]),
               f"{ATTN_OUT}.weight": grow_out(grow_in(mix("o"), v), e),
               f"{MLP_IN}.weight": grow_out(grow_in(mix("fc"), e), fc),
               f"{MLP_OUT}.weight": grow_out(grow_in(mix("proj"), fc), e)}
        if self.depth_bias is not None:
            out |= {f"{NORM_1}.bias": grow_out(mix("ln_1", "bias"), e), f"{NORM_2}.bias": grow_out(mix("ln_2", "bias"), e),
                    f"{QKV}.bias": torch.cat([grow_out(mix(m, "bias"), c) for m, c in
                                                   (("q", q), ("k", k), ("v", v))]),
                    f"{ATTN_OUT}.bias": grow_out(mix("o", "bias"), e),
                    f"{MLP_IN}.bias": grow_out(mix("fc", "bias"), fc),
                    f"{MLP_OUT}.bias": grow_out(mix("proj", "bias"), e)}
        return out

    def forward(self) -> Tensors:
        e = self.width_embd
        out = {TOKEN: grow_in(self.src_token, e), POSITION: grow_in(self.src_position, e),
               f"{FINAL_NORM}.weight": grow_out(self.src_final_norm_weight, e)}
        if self.target.bias:
            out[f"{FINAL_NORM}.bias"] = grow_out(self.src_final_norm_bias, e)
        for j in range(self.target.n_layer):
            out.update({f"{PREFIX}.{j}.{k}": v for k, v in self._block(j).items()})
        return out
