"""A nanoGPT-style character/token GPT whose blocks methods can skip, slice, rescale or replace.

Reads top to bottom like nanoGPT's model.py: pre-LayerNorm blocks, causal self-attention through
``scaled_dot_product_attention``, GELU MLP, tied input/output embeddings. Two additions for
training-efficiency methods, both inert by default:

* ``GPT.plan`` (training mode only): a list of :class:`BlockPlan` saying which blocks run, with
  what residual-branch scale, on which attention heads and MLP hidden units. Blocks not in the plan
  are not computed at all; sliced heads/units are computed on sliced weights, so FLOPs really fall.
  Evaluation (``model.eval()``) always runs the full model.
* Every dropout site is a plain float read at run time: ``embedding`` (token+position embedding),
  ``attention`` (attention probabilities, passed to SDPA as ``dropout_p``), ``residual`` (attention
  output) and ``mlp`` (MLP output), per block. ``set_dropout`` changes them; p = 0 skips the work.

The GPT implements the model protocol natively (:mod:`leantrain.models.protocol`; capabilities in
``GPT.CAPABILITIES``): methods reach it only through those calls.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import check
from ..registry import register_model
from .protocol import (SITES, BlockPlan, BlockRoles, ModelProtocol, Units, Weight, WeightRoles, check_dropout_site,
                       sample_next)


@dataclass
class GPTConfig:
    n_layer: int = 4
    """Number of transformer blocks."""
    n_head: int = 4
    """Attention heads per block (must divide n_embd)."""
    n_embd: int = 128
    """Model width."""
    block_size: int = 64
    """Context length in tokens."""
    vocab_size: int | None = None
    """Vocabulary size; null = taken from the data."""
    dropout: float = 0.0
    """Initial rate at every dropout site (methods may change it at run time)."""
    bias: bool = False
    """Bias in Linear and LayerNorm layers (nanoGPT: False is a bit better and faster)."""

    def validate(self) -> None:
        for key in ("n_layer", "n_head", "n_embd", "block_size"):
            check(getattr(self, key) > 0, key, f"must be positive, got {getattr(self, key)}")
        check(self.n_embd % self.n_head == 0, "n_embd",
              f"{self.n_embd} is not divisible by n_head={self.n_head}")
        check(self.vocab_size is None or self.vocab_size > 0, "vocab_size", "must be positive")
        check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")

    def adapt_to_data(self, info) -> None:
        """Take the vocabulary size from the data (``info``: a :class:`leantrain.data.DataInfo`)."""
        if self.vocab_size is None:
            self.vocab_size = info.vocab_size
        check(self.vocab_size >= info.vocab_size, "model.vocab_size",
              f"{self.vocab_size} is smaller than the data's {info.vocab_size} tokens")


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's cannot drop only the bias before 2.1)."""

    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


def _left_out(n: int, kept: torch.Tensor) -> torch.Tensor:
    """The sorted indices of range(n) that are not in ``kept``."""
    mask = torch.ones(n, dtype=torch.bool, device=kept.device)
    mask[kept] = False
    return mask.nonzero().flatten()


def _dropout(x, p: float, training: bool):
    return F.dropout(x, p, True) if training and p > 0 else x


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.n_embd = cfg.n_head, cfg.n_embd
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.p_attn = cfg.dropout   # attention-probability dropout, handed to SDPA
        self.p_resid = cfg.dropout  # dropout on the attention output

    def head_indices(self, heads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``heads``' channels of the attention output (= c_proj columns) and their q/k/v rows of c_attn."""
        C = self.n_embd
        hd = C // self.n_head
        cols = (heads[:, None] * hd + torch.arange(hd, device=heads.device)).flatten()
        return cols, torch.cat([cols, cols + C, cols + 2 * C])

    def unused_slices(self, heads: torch.Tensor) -> list[tuple[nn.Parameter, int, torch.Tensor]]:
        """(parameter, dim, indices) that a step keeping only ``heads`` leaves out."""
        cols, rows = self.head_indices(_left_out(self.n_head, heads))
        out = [(self.c_attn.weight, 0, rows), (self.c_proj.weight, 1, cols)]
        return out + ([(self.c_attn.bias, 0, rows)] if self.c_attn.bias is not None else [])

    def forward(self, x, heads: torch.Tensor | None = None, width_scale: float = 1.0):
        B, T, C = x.shape
        hd = C // self.n_head
        if heads is None:
            q, k, v = self.c_attn(x).split(C, dim=2)
            nh = self.n_head
        else:
            # Slice the q/k/v rows of the kept heads so the matmuls shrink with the head count.
            cols, rows = self.head_indices(heads)
            w = self.c_attn.weight.index_select(0, rows)
            b = self.c_attn.bias.index_select(0, rows) if self.c_attn.bias is not None else None
            q, k, v = F.linear(x, w, b).split(len(cols), dim=2)
            nh = len(heads)
        q, k, v = (t.view(B, T, nh, hd).transpose(1, 2) for t in (q, k, v))
        p = self.p_attn if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, nh * hd)
        if heads is None:
            y = self.c_proj(y)
        else:
            y = F.linear(y, self.c_proj.weight.index_select(1, cols), self.c_proj.bias)
            y = y * width_scale if width_scale != 1.0 else y
        return _dropout(y, self.p_resid, self.training)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.p_mlp = cfg.dropout

    def unused_slices(self, hidden: torch.Tensor) -> list[tuple[nn.Parameter, int, torch.Tensor]]:
        """(parameter, dim, indices) that a step keeping only the ``hidden`` units leaves out."""
        units = _left_out(self.c_fc.out_features, hidden)
        out = [(self.c_fc.weight, 0, units), (self.c_proj.weight, 1, units)]
        return out + ([(self.c_fc.bias, 0, units)] if self.c_fc.bias is not None else [])

    def forward(self, x, hidden: torch.Tensor | None = None, width_scale: float = 1.0):
        if hidden is None:
            y = self.c_proj(F.gelu(self.c_fc(x)))
        else:
            b = self.c_fc.bias.index_select(0, hidden) if self.c_fc.bias is not None else None
            h = F.gelu(F.linear(x, self.c_fc.weight.index_select(0, hidden), b))
            y = F.linear(h, self.c_proj.weight.index_select(1, hidden), self.c_proj.bias)
            y = y * width_scale if width_scale != 1.0 else y
        return _dropout(y, self.p_mlp, self.training)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = LayerNorm(cfg.n_embd, cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = LayerNorm(cfg.n_embd, cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x, plan: BlockPlan | None = None):
        if plan is None:
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))
        s = plan.scale
        x = x + s * self.attn(self.ln_1(x), plan.heads, plan.width_scale)
        return x + s * self.mlp(self.ln_2(x), plan.hidden, plan.width_scale)


class Embed(nn.Module):
    """A GPT's token + position embedding as a local-learning unit (the modules stay the GPT's own)."""

    def __init__(self, gpt):
        super().__init__()
        self.gpt = [gpt]  # a list: not a submodule, its parameters stay registered on the GPT

    def forward(self, idx):
        return self.gpt[0].embed(idx)


class LMHead(nn.Module):
    """A GPT's final LayerNorm + LM head as a local-learning unit."""

    def __init__(self, gpt):
        super().__init__()
        self.gpt = [gpt]

    def forward(self, h):
        return self.gpt[0].head(h)


class GPT(nn.Module, ModelProtocol):
    """nanoGPT's model; implements the model protocol natively (every capability but `pipeline`,
    `unit_hooks` and `export`)."""
    CAPABILITIES = frozenset({"blocks", "plan", "plan_width", "dropout", "units", "stages", "depth_change",
                              "weight_roles"})

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        assert cfg.vocab_size is not None, "vocab_size must be set (the trainer takes it from the data)"
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = LayerNorm(cfg.n_embd, cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying (Press & Wolf 2017)
        self.p_emb = cfg.dropout
        self.plan: list[BlockPlan] | None = None
        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections: keeps the residual stream's variance flat.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding else n

    # -- the three stages, public so step strategies (local learning, stitching) can reuse them
    def embed(self, idx):
        T = idx.size(1)
        assert T <= self.config.block_size, f"sequence of {T} exceeds block_size {self.config.block_size}"
        pos = torch.arange(T, device=idx.device)
        return _dropout(self.wte(idx) + self.wpe(pos), self.p_emb, self.training)

    def run_blocks(self, x):
        if self.plan is None or not self.training:
            for block in self.blocks:
                x = block(x)
            return x
        for bp in self.plan:
            x = self.blocks[bp.index](x, bp)
        return x

    def head(self, x):
        return self.lm_head(self.ln_f(x))

    def embed_parameters(self) -> list[nn.Parameter]:
        return [self.wte.weight, self.wpe.weight]

    def head_parameters(self) -> list[nn.Parameter]:
        return [*self.ln_f.parameters(), self.lm_head.weight]

    def forward(self, idx, targets=None):
        logits = self.head(self.run_blocks(self.embed(idx)))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    # -- run-time controls used by methods
    def width_unused_slices(self) -> list[tuple[nn.Parameter, int, torch.Tensor]]:
        """(parameter, dim, indices) of the weights the current plan's width slicing leaves out:
        they get exactly zero gradient this step. Blocks the plan skips entirely are not listed."""
        out = []
        for b in self.plan or ():
            block = self.blocks[b.index]
            if b.heads is not None:
                out += block.attn.unused_slices(b.heads)
            if b.hidden is not None:
                out += block.mlp.unused_slices(b.hidden)
        return out

    def shape_key(self) -> tuple:
        """What determines a training step's FLOPs besides the batch shape (for FLOP caching)."""
        c = self.config
        base = (len(self.blocks), c.n_embd, c.n_head)
        if self.plan is None:
            return base
        return base + tuple((None if b.heads is None else len(b.heads),
                             None if b.hidden is None else len(b.hidden)) for b in self.plan)

    # -- the model protocol (leantrain.models.protocol) beyond plan, blocks, embed/run_blocks/head
    def why_not(self, name: str) -> str | None:
        if name == "pipeline":
            return "its output head shares the token embedding with the first unit"
        return None

    def width_units(self, i: int) -> tuple[int, int]:
        """What block ``i``'s plan can slice: (attention heads, MLP hidden units)."""
        return self.config.n_head, 4 * self.config.n_embd

    def width_cost(self, width: float) -> float:
        """A block's training FLOPs at ``width`` as a fraction of the full block's (matmuls as
        ``measure.analytic_gpt_flops`` counts them: dense ×3 for forward + backward, attention ×3.5)."""
        C, T, H = self.config.n_embd, self.config.block_size, self.config.n_head
        heads = min(H, max(1, round(width * H))) / H
        hidden = min(4 * C, max(1, round(width * 4 * C))) / (4 * C)
        sliced = 3 * (8 * C * C * heads + 16 * C * C * hidden) + 3.5 * 4 * T * C * heads
        return sliced / (3 * 24 * C * C + 3.5 * 4 * T * C)

    def local_units(self, input_shape: tuple[int, ...]) -> Units:
        """Embedding, every block, final LayerNorm + head; token states (T, n_embd) in between."""
        T, C = self.config.block_size, self.config.n_embd
        modules = [Embed(self), *self.blocks, LMHead(self)]
        params = [[self.wte.weight, self.wpe.weight], *[list(b.parameters()) for b in self.blocks],
                  list(self.ln_f.parameters())]  # lm_head is tied to wte: the embedding owns it
        return Units(modules, [(T, C)] * (len(modules) - 1) + [(T, self.config.vocab_size)], "tokens", params,
                     tied_head_weight=self.wte.weight)

    def set_blocks(self, blocks) -> None:
        """Replace the ordered blocks. GPT blocks hold no layer index and the forward runs every block
        it holds, so nothing needs renumbering; ``config.n_layer`` stays the recipe's (full) depth —
        the run's recipe, which checkpoints record, is not rewritten by a schedule."""
        self.blocks = nn.ModuleList(blocks)

    def weight_roles(self) -> WeightRoles:
        return gpt_weight_roles(self.config, len(self.blocks))

    def dropout_sites(self) -> dict[str, tuple[int, ...]]:
        every = tuple(range(len(self.blocks)))
        return {"embedding": (), "attention": every, "residual": every, "mlp": every}

    def dropout_rates(self) -> dict[str, float | list[float]]:
        return {"embedding": self.p_emb,
                "attention": [b.attn.p_attn for b in self.blocks],
                "residual": [b.attn.p_resid for b in self.blocks],
                "mlp": [b.mlp.p_mlp for b in self.blocks]}

    def set_dropout(self, p: float, site: str | None = None, block: int | None = None) -> None:
        """Set the dropout rate of one site (or all), in one block (or all)."""
        assert 0.0 <= p < 1.0, f"dropout rate must be in [0, 1), got {p}"
        if site is not None:
            check_dropout_site(self, site)
        sites = SITES if site is None else (site,)
        if "embedding" in sites and block is None:
            self.p_emb = p
        blocks = self.blocks if block is None else [self.blocks[block]]
        for b in blocks:
            if "attention" in sites:
                b.attn.p_attn = p
            if "residual" in sites:
                b.attn.p_resid = p
            if "mlp" in sites:
                b.mlp.p_mlp = p

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None):
        for _ in range(max_new_tokens):
            ctx = idx[:, -self.config.block_size:]
            logits, _ = self(ctx)
            nxt = sample_next(logits[:, -1, :], temperature, top_k, generator)
            idx = torch.cat((idx, nxt), dim=1)
        return idx


def gpt_weight_roles(c: GPTConfig, n_blocks: int | None = None) -> WeightRoles:
    """The weight roles (model protocol) of a GPT with config ``c`` and ``n_blocks`` blocks
    (default ``c.n_layer``): fused q/k/v in ``nn.Linear`` storage, GELU MLP, LayerNorms, tied head."""
    bias = (lambda name: name + ".bias") if c.bias else (lambda name: None)
    roles = BlockRoles(
        qkv=Weight("attn.c_attn.weight", parts=("q", "k", "v"), bias=bias("attn.c_attn")),
        attn_out=Weight("attn.c_proj.weight", bias=bias("attn.c_proj")),
        mlp_in=Weight("mlp.c_fc.weight", bias=bias("mlp.c_fc")),
        mlp_out=Weight("mlp.c_proj.weight", bias=bias("mlp.c_proj")),
        norms=("ln_1", "ln_2"), n_head=c.n_head, head_size=c.n_embd // c.n_head, n_hidden=4 * c.n_embd,
        attention="attn", mlp="mlp")
    return WeightRoles(block_prefix="blocks", blocks=(roles,) * (c.n_layer if n_blocks is None else n_blocks),
                       width=c.n_embd, token_embedding="wte.weight", position_embedding="wpe.weight",
                       final_norm="ln_f", output="lm_head.weight", tied=True)


@register_model("gpt", config=GPTConfig)
def gpt(cfg: GPTConfig) -> GPT:
    return GPT(cfg)
