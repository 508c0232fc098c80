"""Gradual stacking (StackBERT, Gong et al. 2019; gradual stacking, Reddi et al. 2023): train a
shallow model, and at each stage boundary grow it by copying existing blocks.

The recipe's model is built at its full depth (``model.n_layer`` is the final depth) and cut down
to the first stage's depth at step 0, so initialisation matches the baseline's for the blocks kept.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch

from ...config import check
from ...core import Event, Method, State
from ...errors import ConfigError, LeantrainError
from ...models.protocol import adapt, require, same_shape_blocks
from ...registry import register_method
from .subnetworks import stage_ends, stage_index


def stack_blocks(model: torch.nn.Module, depth: int, init: str) -> dict[int, int]:
    """Grow the model's blocks to ``depth`` blocks with copies of its blocks (protocol capability
    ``depth_change``: the model's ``set_blocks`` renumbers whatever needs it).

    ``copy_top`` appends copies of the top ``depth − n`` blocks in order (StackBERT's doubling when
    that is all of them; more than doubling repeats the stack); ``interleave`` inserts copies of
    blocks spread evenly over the depth, each right after its source. Original blocks keep their
    parameter objects. Returns {new index: source index before growing} for every copy.
    """
    model = adapt(model)
    n = len(model.blocks)
    k = depth - n
    if k < 0:
        raise LeantrainError(f"stacking cannot shrink the model from {n} to {depth} blocks")
    if init == "copy_top":
        order = list(range(n)) + [(n - k + j) % n for j in range(k)]
    else:
        order = sorted([*range(n), *((2 * j + 1) * n // (2 * k) for j in range(k))])
    blocks, copies, seen = [], {}, set()
    for new, src in enumerate(order):
        if src in seen:
            blocks.append(copy.deepcopy(model.blocks[src]))
            copies[new] = src
        else:
            blocks.append(model.blocks[src])
            seen.add(src)
    model.set_blocks(blocks)
    return copies


def cut_blocks(model: torch.nn.Module, depth: int) -> None:
    """Keep the model's first ``depth`` blocks (protocol capability ``depth_change``)."""
    model = adapt(model)
    model.set_blocks(list(model.blocks)[:depth])


def moment_map(model: torch.nn.Module, copies: dict[int, int]) -> dict[str, str]:
    """New parameter name -> source parameter name (pre-growth numbering), for copying AdamW state."""
    model = adapt(model)
    names, prefix = [n for n, _ in model.blocks[0].named_parameters()], model.block_prefix
    return {f"{prefix}.{new}.{n}": f"{prefix}.{src}.{n}" for new, src in copies.items() for n in names}


@dataclass
class StackingConfig:
    depths: list[int] | None = None
    """Depth of each stage, increasing, the last = model.n_layer; null = L/2, 3L/4, L (6-9-12 for
    12 blocks, the RaPTr paper's stacking baseline)."""
    lengths: list[float] | None = None
    """Fraction of max_steps each stage lasts (summing to 1); null = equal stages."""
    init: Literal["copy_top", "interleave"] = "copy_top"
    """copy_top: new blocks copy the top blocks, appended in order; interleave: each copy is
    inserted right after its source, sources spread evenly over the depth."""
    optimizer_state: Literal["reset", "copy"] = "reset"
    """AdamW state of new blocks: reset (start from zero) or copy the source block's moments."""

    def validate(self) -> None:
        d = self.depths
        check(d is None or (len(d) > 0 and d[0] > 0), "depths", f"must be positive, got {d}")
        check(d is None or all(a < b for a, b in zip(d, d[1:])), "depths",
              f"must increase from stage to stage (stacking cannot remove blocks), got {d}")
        if self.lengths is not None:
            check(all(f > 0 for f in self.lengths), "lengths", f"must be positive, got {self.lengths}")
            check(abs(sum(self.lengths) - 1) < 1e-6, "lengths", f"must sum to 1, got {sum(self.lengths):g}")
            check(d is None or len(d) == len(self.lengths), "lengths",
                  f"gives {len(self.lengths)} stages but depths gives {len(d or [])}")


@register_method
class Stacking(Method):
    """Gradual stacking: start shallow, grow depth at stage boundaries by copying blocks."""
    name = "stacking"
    Config = StackingConfig
    kind = "surgery"
    exclusive_group = "depth"

    def __init__(self, cfg=None):
        super().__init__(cfg)
        self.depth: int | None = None  # None until the first step has cut the model down
        self.full_depth = 0  # the recipe model's depth (set by check)

    def depths(self, n_layer: int) -> list[int]:
        if self.cfg.depths is not None:
            return list(self.cfg.depths)
        return sorted({max(1, round(n_layer * f)) for f in (0.5, 0.75, 1.0)})

    def stage_ends(self, n_layer: int, max_steps: int) -> list[int]:
        n = len(self.depths(n_layer))
        return stage_ends(self.cfg.lengths or [1 / n] * n, max_steps)

    def expected_block_fraction(self, model_cfg, max_steps: int) -> float:
        """Training FLOPs of the blocks over the run, as a fraction of the full model's."""
        L = model_cfg.n_layer
        ends = self.stage_ends(L, max_steps)
        steps = [b - a for a, b in zip([0, *ends], ends)]
        return sum(s * d for s, d in zip(steps, self.depths(L))) / (max_steps * L)

    def check(self, state: State) -> None:
        name = type(state.model).__name__
        for capability in ("blocks", "depth_change"):
            model = require(state.model, capability, "methods.stacking",
                            f"stacking grows depth by copying blocks, so every block must have the same shape "
                            f"and model {name} must declare replacing its blocks (capability depth_change)")
        if not same_shape_blocks(model.blocks):
            raise ConfigError(f"methods.stacking: stacking grows depth by copying blocks, so every block must have "
                              f"the same shape; model {name}'s blocks differ (use gpt)")
        L = self.full_depth = len(model.blocks)
        depths = self.depths(L)
        if depths[-1] != L:
            raise ConfigError(f"methods.stacking.depths: the last depth must be the model's n_layer={L} "
                              f"(got {depths[-1]})")
        if self.cfg.lengths is not None and len(self.cfg.lengths) != len(depths):
            raise ConfigError(f"methods.stacking.lengths: {len(self.cfg.lengths)} stages for "
                              f"{len(depths)} depths")
        ends = self.stage_ends(L, state.max_steps)
        empty = [i for i, (a, b) in enumerate(zip([0, *ends], ends)) if b <= a]
        if empty:
            raise ConfigError(f"methods.stacking: stage {empty[0]} gets no steps out of "
                              f"train.max_steps={state.max_steps}")

    def on_event(self, event: Event, state: State) -> None:
        if event is not Event.STEP_START:
            return
        model, L = adapt(state.model), self.full_depth
        target = self.depths(L)[stage_index(self.stage_ends(L, state.max_steps), state.step)]
        if self.depth is None and len(model.blocks) > target:  # first step: start shallow
            cut_blocks(model, target)
            state.request_rebuild()
        elif target > len(model.blocks):
            copies = stack_blocks(model, target, self.cfg.init)
            state.request_rebuild(moment_map(model, copies) if self.cfg.optimizer_state == "copy" else None)
        self.depth = len(model.blocks)
        state.log("stacking/depth", self.depth)

    def state_dict(self) -> dict:
        return {"depth": self.depth}

    def load_state_dict(self, state: dict) -> None:
        self.depth = state["depth"]

    def restore(self, state: State) -> None:
        # Every block has the same shape, so the first `depth` blocks give the checkpoint's structure.
        if self.depth is not None:
            cut_blocks(state.model, self.depth)
