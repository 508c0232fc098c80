"""Operator sizes for a source → target pair, counted on the real operator modules.

    python -m leantrain.methods.growth.sizes 4 64 8 128        # n_layer n_embd of source, then target

prints a Markdown table: trainable parameters of Mango (per ring rank) and LiGO, the dense linear
operator they factorise, and the target model itself (head size 16, vocab 65, no bias).
"""
from __future__ import annotations

import sys

import torch

from ...models.gpt import GPT, GPTConfig
from .layout import dense_operator_size
from .ligo import LiGOOperator
from .mango import MangoOperator


def operator_sizes(src: GPTConfig, tgt: GPTConfig, ranks=(1, 2, 4, 8)) -> list[tuple[str, int]]:
    """(operator, trainable parameters) rows, dense operator and target model last."""
    torch.manual_seed(0)
    source = GPT(src)
    rows = [(f"Mango R={r}", MangoOperator(source, tgt, rank=r).num_parameters()) for r in ranks]
    rows.append(("LiGO", LiGOOperator(source, tgt).num_parameters()))
    rows.append(("dense operator (B·D₁²·L₁)·(B·D₂²·L₂)", dense_operator_size(src, tgt)))
    with torch.device("meta"):
        rows.append(("target GPT (for scale)", GPT(tgt).num_params(non_embedding=False)))
    return rows


def main(argv: list[str]) -> None:
    l1, d1, l2, d2 = map(int, argv)
    make = lambda l, d: GPTConfig(n_layer=l, n_embd=d, n_head=d // 16, vocab_size=65)  # noqa: E731
    print(f"| {l1}×{d1} → {l2}×{d2} | parameters |\n|---|---:|")
    for name, n in operator_sizes(make(l1, d1), make(l2, d2)):
        print(f"| {name} | {n:,} |")


if __name__ == "__main__":
    main(sys.argv[1:])
