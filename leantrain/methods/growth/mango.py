"""Mango (Pan et al., NeurIPS 2023): every target weight a linear function of all source weights,
through a tensor-ring matrix-product operator (TR-MPO) with four small cores.

A layer's weights are viewed as B = 12 blocks of D×D [ours — the paper concatenates W_Q, W_K, W_V,
W_O, W_IN, W_OUT but gives no split]: Q, K, V, O, then W_IN (c_fc, 4D×D) as four row blocks and
W_OUT (mlp.c_proj, D×4D) as four column blocks. Entry M[b, i, o, l] is block b's weight from input
i to output o in layer l. With ring rank R and cores S_B ∈ ℝ^{R×B×B×R}, S_I, S_O ∈ ℝ^{R×D₁×D₂×R},
S_L ∈ ℝ^{R×L₁×L₂×R}, the operator is

    M₂[b₂,i₂,o₂,l₂] = Σ M₁[b₁,i₁,o₁,l₁] · Tr(S_B[:,b₁,b₂,:] S_I[:,i₁,i₂,:] S_O[:,o₁,o₂,:] S_L[:,l₁,l₂,:]),

computed core by core (:func:`tr_mpo`); the full operator is never built. R = 1 reduces to four
mode products. Parameters outside M [ours]: embeddings, LayerNorms and biases grow with one
trainable residual width map P ∈ ℝ^{D₁×D₂} and (per-layer vectors) a depth map Q ∈ ℝ^{L₁×L₂}; the
final LayerNorm also gets a trainable per-dimension scale s ∈ ℝ^{D₂} (the tied head's compensation).

Function-preserving init [ours, ``init="function_preserving"``]: the same copy mapping, but every
target layer that is not the first copy of its source layer (a *new* block) starts as an identity —
its output projections (W_O, W_OUT and their biases) are gated to zero by a trainable per-(block,
layer) gate G ∈ ℝ^{B×L₂} (and one per bias vector), 1 elsewhere; new blocks keep copies of their
input-side weights (Q, K, V, W_IN), so the gate's gradient is not zero. The core noise then goes to
the off-diagonal bond entries only (none at R = 1), which change the function by O(noise²) only.
With an integer width factor and ``mapping="cyclic"`` (or no width change) the grown model's logits
equal the source's at init (R = 1: up to float rounding).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ...errors import ConfigError
from ...models.gpt import GPT, GPTConfig
from .layout import (ATTN_OUT, FINAL_NORM, MLP_IN, MLP_OUT, NON_BLOCK, NORM_1, NORM_2, POSITION, PREFIX, QKV, TOKEN,
                     GrowthOperator, Tensors, WidthMaps, chunked, check_growth, head_channels, head_size,
                     selection, source_tensors, unit_map)

BLOCKS = ("q", "k", "v", "o", "in0", "in1", "in2", "in3", "out0", "out1", "out2", "out3")
OUTPUT_BLOCKS = ("o", "out0", "out1", "out2", "out3")
"""Blocks that write into the residual stream: zero in a block that is to start as an identity."""
OUTPUT_VECTORS = (f"{ATTN_OUT}.bias", f"{MLP_OUT}.bias")
INITS = ("copy", "function_preserving")


def to_blocks(tensors: Tensors, cfg: GPTConfig) -> torch.Tensor:
    """The layers' weight matrices as M ∈ ℝ^{B×D×D×L}, M[b, i, o, l] = W_b[o, i] in layer l."""
    d, layers = cfg.n_embd, []
    for l in range(cfg.n_layer):
        p = f"{PREFIX}.{l}."
        mats = [*tensors[p + f"{QKV}.weight"].split(d), tensors[p + f"{ATTN_OUT}.weight"],
                *tensors[p + f"{MLP_IN}.weight"].split(d), *tensors[p + f"{MLP_OUT}.weight"].split(d, dim=1)]
        layers.append(torch.stack([w.T for w in mats]))
    return torch.stack(layers, dim=-1)


def from_blocks(m: torch.Tensor) -> list[Tensors]:
    """Every layer's weight matrices (names inside a block) from M ∈ ℝ^{B×D×D×L}.

    One permute and ``unbind`` rather than a select per (block, layer): a select's backward
    allocates a zero tensor the size of M, once per select — 96 of them at 12 blocks × 8 layers,
    which made the operator's backward many times slower than the target's."""
    layers = []
    for layer in m.permute(3, 0, 2, 1).unbind(0):  # [B, O, I] per layer: W_b = M[b, :, :, l]ᵀ
        w = layer.unbind(0)
        layers.append({f"{QKV}.weight": torch.cat(w[0:3]), f"{ATTN_OUT}.weight": w[3],
                       f"{MLP_IN}.weight": torch.cat(w[4:8]), f"{MLP_OUT}.weight": torch.cat(w[8:12], dim=1)})
    return layers


def tr_mpo(m1: torch.Tensor, s_b: torch.Tensor, s_i: torch.Tensor, s_o: torch.Tensor,
           s_l: torch.Tensor) -> torch.Tensor:
    """M₂ = TR-MPO(M₁): contract one core at a time, close the ring with a trace (bond a)."""
    t = torch.einsum("BIOL,aBbc->aIOLbc", m1, s_b)
    t = torch.einsum("aIOLbc,cIid->aOLbid", t, s_i)
    t = torch.einsum("aOLbid,dOoe->aLbioe", t, s_o)
    return torch.einsum("aLbioe,eLla->biol", t, s_l)


def vector_names(cfg: GPTConfig) -> list[str]:
    """A block's D-vectors outside M (LayerNorms, biases; c_attn and c_fc biases in D-chunks)."""
    names = [f"{NORM_1}.weight", f"{NORM_2}.weight"]
    if cfg.bias:
        names += [f"{NORM_1}.bias", f"{NORM_2}.bias", *(f"{QKV}.bias.{k}" for k in range(3)), f"{ATTN_OUT}.bias",
                  *(f"{MLP_IN}.bias.{k}" for k in range(4)), f"{MLP_OUT}.bias"]
    return names


def _vectors(tensors: Tensors, cfg: GPTConfig) -> torch.Tensor:
    """V ∈ ℝ^{K×D×L}: the vectors of :func:`vector_names` for every layer."""
    d, layers = cfg.n_embd, []
    for l in range(cfg.n_layer):
        p = f"{PREFIX}.{l}."
        vecs = [tensors[p + f"{NORM_1}.weight"], tensors[p + f"{NORM_2}.weight"]]
        if cfg.bias:
            vecs += [tensors[p + f"{NORM_1}.bias"], tensors[p + f"{NORM_2}.bias"], *tensors[p + f"{QKV}.bias"].split(d),
                     tensors[p + f"{ATTN_OUT}.bias"], *tensors[p + f"{MLP_IN}.bias"].split(d),
                     tensors[p + f"{MLP_OUT}.bias"]]
        layers.append(torch.stack(vecs))
    return torch.stack(layers, dim=-1)


def _unvector(v: torch.Tensor, cfg: GPTConfig) -> list[Tensors]:
    """Every layer's vectors from V ∈ ℝ^{K×D×L} (``unbind``, as in :func:`from_blocks`)."""
    return [_layer_vectors(dict(zip(vector_names(cfg), layer.unbind(0))), cfg) for layer in v.unbind(-1)]


def _layer_vectors(vecs: Tensors, cfg: GPTConfig) -> Tensors:
    out = {f"{NORM_1}.weight": vecs[f"{NORM_1}.weight"], f"{NORM_2}.weight": vecs[f"{NORM_2}.weight"]}
    if cfg.bias:
        out |= {f"{NORM_1}.bias": vecs[f"{NORM_1}.bias"], f"{NORM_2}.bias": vecs[f"{NORM_2}.bias"],
                f"{QKV}.bias": torch.cat([vecs[f"{QKV}.bias.{k}"] for k in range(3)]),
                f"{ATTN_OUT}.bias": vecs[f"{ATTN_OUT}.bias"],
                f"{MLP_IN}.bias": torch.cat([vecs[f"{MLP_IN}.bias.{k}"] for k in range(4)]),
                f"{MLP_OUT}.bias": vecs[f"{MLP_OUT}.bias"]}
    return out


def mango_maps(src: GPTConfig, tgt: GPTConfig, g: torch.Tensor) -> WidthMaps:
    """The copy maps Mango's init reproduces: one head-whole map g for the residual stream and every
    block's attention channels, chunked over the MLP's four D-blocks (see :func:`fpi`)."""
    hidden = chunked(g, src.n_embd, 4)
    return WidthMaps(g, [g] * src.n_layer, [g] * src.n_layer, [g] * src.n_layer, [hidden] * src.n_layer)


class MangoOperator(GrowthOperator):
    """Mango's TR-MPO growth operator from a trained ``source`` GPT to the ``target`` config.

    Init [ours]: step 0 reproduces FPI width growth with one head-whole map g (S_I = the divided
    selection matrix, S_O = the selection matrix, S_B = identity) and StackBERT depth (S_L one-hot at
    l₂ mod L₁), split evenly over the R diagonal bond channels (each core × R^(-1/4), so the R ring
    terms sum to the copy); every core entry then gets N(0, noise²) — without it the off-diagonal
    bond entries would get no gradient. Requires the source's head size (g copies whole heads).
    ``init="function_preserving"``: see the module docstring (new blocks start as identities).
    """

    def __init__(self, source: GPT, target: GPTConfig, rank: int = 1, noise: float = 1e-3,
                 mapping: str = "random", generator: torch.Generator | None = None, init: str = "copy"):
        src = source.config
        super().__init__(src, target)
        check_growth(src, target, "mango")
        if rank < 1:
            raise ConfigError(f"rank: must be ≥ 1, got {rank}")
        if init not in INITS:
            raise ConfigError(f"init: must be one of {', '.join(INITS)}, got {init!r}")
        self.rank, self.init = rank, init
        tensors = source_tensors(source)
        d1, l1, l2 = src.n_embd, src.n_layer, target.n_layer
        self.g = head_channels(unit_map(src.n_head, target.n_head, mapping, generator), head_size(src))
        copy_in, copy_out = selection(self.g, d1, divide=True), selection(self.g, d1)
        depth = selection(torch.arange(l2) % l1, l1)

        preserving = init == "function_preserving"

        def core(base: torch.Tensor) -> nn.Parameter:
            c = torch.zeros(rank, *base.shape, rank)
            for a in range(rank):
                c[a, :, :, a] = base * rank ** -0.25
            eps = noise * torch.randn(c.shape, generator=generator)
            if preserving:  # off-diagonal bonds only: one of them alone cannot close the ring
                eps[torch.arange(rank), ..., torch.arange(rank)] = 0.0
            return nn.Parameter(c + eps)

        self.s_b = core(torch.eye(len(BLOCKS)))
        self.s_i, self.s_o, self.s_l = core(copy_in), core(copy_out), core(depth)
        self.width = nn.Parameter(copy_out.clone())   # P: embeddings, LayerNorms, biases
        self.depth = nn.Parameter(depth.clone())      # Q: per-layer vectors
        self.head_scale = nn.Parameter(1.0 / torch.bincount(self.g)[self.g].float())  # s: final LayerNorm
        if preserving:  # G: new blocks (not a source layer's first copy) write nothing into the stream
            new = torch.ones(l2, dtype=torch.bool)
            new[[int((torch.arange(l2) % l1 == l).nonzero()[0]) for l in range(l1)]] = False
            gate = torch.ones(len(BLOCKS), l2)
            gate[[BLOCKS.index(b) for b in OUTPUT_BLOCKS]] = torch.where(new, 0.0, 1.0)
            names = vector_names(target)
            vgate = torch.ones(len(names), l2)
            for k, name in enumerate(names):
                if name in OUTPUT_VECTORS:
                    vgate[k] = torch.where(new, 0.0, 1.0)
            self.gate, self.vector_gate = nn.Parameter(gate), nn.Parameter(vgate)
            self.new_blocks = [int(l) for l in new.nonzero().flatten()]
        else:
            self.gate = self.vector_gate = None
            self.new_blocks = []
        ref = tensors[TOKEN]
        self.register_buffer("m1", to_blocks(tensors, src), persistent=False)
        self.register_buffer("v1", _vectors(tensors, src), persistent=False)
        for role, key in NON_BLOCK:
            if key in tensors:
                self.register_buffer(f"src_{role}", tensors[key], persistent=False)
        self.to(device=ref.device, dtype=ref.dtype)

    def forward(self) -> Tensors:
        m2 = tr_mpo(self.m1, self.s_b, self.s_i, self.s_o, self.s_l)
        v2 = torch.einsum("kdl,de,lm->kem", self.v1, self.width, self.depth)
        if self.gate is not None:
            m2 = m2 * self.gate[:, None, None, :]
            v2 = v2 * self.vector_gate[:, None, :]
        out = {TOKEN: self.src_token @ self.width, POSITION: self.src_position @ self.width,
               f"{FINAL_NORM}.weight": (self.src_final_norm_weight @ self.width) * self.head_scale}
        if self.target.bias:
            out[f"{FINAL_NORM}.bias"] = (self.src_final_norm_bias @ self.width) * self.head_scale
        for l, (mats, vecs) in enumerate(zip(from_blocks(m2), _unvector(v2, self.target))):
            out.update({f"{PREFIX}.{l}.{k}": v for k, v in (mats | vecs).items()})
        return out
