"""One route through a stitched model family, as a plain standalone language model.

A route is: token + position embedding of the first segment's width → segments, each a run of GPT
blocks of one width (and head count), joined by *stitch layers* (token-wise ``Linear(C_a → C_b)``
with bias) → final LayerNorm + head of the last segment's width. An SN-Net stitch of a small and a
large anchor is a 2-segment route, an SN-Net v2 large→small→large route has 3, an anchor alone has 1.

This is what ``leantrain export`` writes for one configuration of a family (SN-Net, Learngene Pool):
it is rebuilt from its small config alone, with no pool code. The blocks and LayerNorm are GPT's own
(:mod:`leantrain.models.gpt`), so the weights of a family's stacks load into it unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import check
from ..registry import register_model
from .gpt import GPT, Block, GPTConfig, LayerNorm, _dropout
from .protocol import ModelProtocol


@dataclass
class StitchedGPTConfig:
    n_layer: list[int] = field(default_factory=lambda: [2, 2])
    """Blocks in each segment, in order (one entry per segment; a single entry is a plain GPT)."""
    n_head: list[int] = field(default_factory=lambda: [2, 4])
    """Attention heads of each segment's blocks (each must divide that segment's n_embd)."""
    n_embd: list[int] = field(default_factory=lambda: [64, 128])
    """Width of each segment; a stitch layer Linear(n_embd[i] → n_embd[i+1]) joins segments i and i+1."""
    block_size: int = 64
    """Context length in tokens."""
    vocab_size: int | None = None
    """Vocabulary size; null = taken from the data."""
    dropout: float = 0.0
    """Rate at every dropout site (embedding, attention, residual, MLP)."""
    bias: bool = False
    """Bias in the blocks' Linear and LayerNorm layers (stitch layers always have a bias)."""
    tie_head: bool = False
    """The output head shares the token-embedding matrix (needs n_embd[0] == n_embd[-1]); true when
    the route starts and ends in the same stack, as an anchor alone does."""

    def validate(self) -> None:
        n = len(self.n_layer)
        check(n > 0, "n_layer", "needs at least one segment")
        check(len(self.n_head) == n, "n_head", f"has {len(self.n_head)} entries for {n} segments")
        check(len(self.n_embd) == n, "n_embd", f"has {len(self.n_embd)} entries for {n} segments")
        for i, (L, h, c) in enumerate(zip(self.n_layer, self.n_head, self.n_embd)):
            check(L > 0, f"n_layer[{i}]", f"must be positive, got {L}")
            check(h > 0 and c > 0, f"n_embd[{i}]", f"width {c} and heads {h} must be positive")
            check(c % h == 0, f"n_embd[{i}]", f"{c} is not divisible by n_head[{i}]={h}")
        check(self.block_size > 0, "block_size", f"must be positive, got {self.block_size}")
        check(self.vocab_size is None or self.vocab_size > 0, "vocab_size", "must be positive")
        check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        check(not self.tie_head or self.n_embd[0] == self.n_embd[-1], "tie_head",
              f"the first and last widths differ ({self.n_embd[0]} vs {self.n_embd[-1]})")

    def adapt_to_data(self, info) -> None:
        """Take the vocabulary size from the data (``info``: a :class:`leantrain.data.DataInfo`)."""
        if self.vocab_size is None:
            self.vocab_size = info.vocab_size
        check(self.vocab_size >= info.vocab_size, "model.vocab_size",
              f"{self.vocab_size} is smaller than the data's {info.vocab_size} tokens")

    def segment_config(self, i: int) -> GPTConfig:
        """The GPT config whose blocks segment ``i`` is made of."""
        return GPTConfig(n_layer=self.n_layer[i], n_head=self.n_head[i], n_embd=self.n_embd[i],
                         block_size=self.block_size, vocab_size=self.vocab_size, dropout=self.dropout,
                         bias=self.bias)


class StitchedGPT(nn.Module, ModelProtocol):
    CAPABILITIES = frozenset({"stages"})

    def __init__(self, cfg: StitchedGPTConfig):
        super().__init__()
        assert cfg.vocab_size is not None, "vocab_size must be set (the trainer takes it from the data)"
        self.config = cfg
        first, last = cfg.n_embd[0], cfg.n_embd[-1]
        self.wte = nn.Embedding(cfg.vocab_size, first)
        self.wpe = nn.Embedding(cfg.block_size, first)
        self.segments = nn.ModuleList(
            nn.ModuleList(Block(cfg.segment_config(i)) for _ in range(cfg.n_layer[i]))
            for i in range(len(cfg.n_layer)))
        self.stitches = nn.ModuleList(nn.Linear(a, b) for a, b in zip(cfg.n_embd, cfg.n_embd[1:]))
        self.ln_f = LayerNorm(last, cfg.bias)
        self.lm_head = nn.Linear(last, cfg.vocab_size, bias=False)
        if cfg.tie_head:
            self.lm_head.weight = self.wte.weight
        self.p_emb = cfg.dropout
        self.apply(GPT._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled residual init, over the route's depth
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * sum(cfg.n_layer)))

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding else n

    def embed(self, idx):
        T = idx.size(1)
        assert T <= self.config.block_size, f"sequence of {T} exceeds block_size {self.config.block_size}"
        pos = torch.arange(T, device=idx.device)
        return _dropout(self.wte(idx) + self.wpe(pos), self.p_emb, self.training)

    def run_blocks(self, x):
        for i, segment in enumerate(self.segments):
            if i > 0:
                x = self.stitches[i - 1](x)
            for block in segment:
                x = block(x)
        return x

    def head(self, x):
        return self.lm_head(self.ln_f(x))

    # -- the model protocol (leantrain.models.protocol): a deployed route, trained as a family
    def why_not(self, name: str) -> str | None:
        return ("a stitched route is a deployed configuration of a family; train the family "
                "(snnet, learngene_pool) instead")

    def embed_parameters(self) -> list[nn.Parameter]:
        return [self.wte.weight, self.wpe.weight]

    def head_parameters(self) -> list[nn.Parameter]:
        return [*self.ln_f.parameters(), self.lm_head.weight]

    @torch.no_grad()
    def load_route(self, first: GPT, segments, stitches, last: GPT) -> None:
        """Copy one route of a family into this model: the embeddings of ``first``, each segment's
        blocks (``segments``: lists of GPT blocks), the stitch layers' ``(weight, bias)`` and the final
        LayerNorm and head of ``last``."""
        self.wte.load_state_dict(first.wte.state_dict())
        self.wpe.load_state_dict(first.wpe.state_dict())
        for target, blocks in zip(self.segments, segments):
            for dst, src in zip(target, blocks):
                dst.load_state_dict(src.state_dict())
        for dst, (weight, bias) in zip(self.stitches, stitches):
            dst.weight.copy_(weight)
            dst.bias.copy_(bias)
        self.ln_f.load_state_dict(last.ln_f.state_dict())
        self.lm_head.weight.copy_(last.lm_head.weight)  # tied: the same matrix as wte, copied once more

    def forward(self, idx, targets=None):
        logits = self.head(self.run_blocks(self.embed(idx)))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    def shape_key(self) -> tuple:
        """What determines a training step's FLOPs besides the batch shape (for FLOP caching)."""
        c = self.config
        return (tuple(c.n_layer), tuple(c.n_embd), tuple(c.n_head))

    # The sampling loop needs only ``config.block_size`` and ``forward``: GPT's serves as it is.
    generate = GPT.generate


@register_model("stitched_gpt", config=StitchedGPTConfig, task="lm")
def stitched_gpt(cfg: StitchedGPTConfig) -> StitchedGPT:
    return StitchedGPT(cfg)
