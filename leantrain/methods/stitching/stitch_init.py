"""Stitch-layer initialisation: least squares on activations (SN-Net) or from the distillation
projections (Learngene Pool's learned init)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ...errors import ConfigError
from ...models import protocol
from ...models.gpt import GPT
from .family import StitchedFamily
from .routes import parse_stitch_key


def least_squares(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W (C_b × C_a), b (C_b) minimising ‖X·Wᵀ + b − Y‖² over all tokens: A = pinv([X, 1])·Y.

    ``x``: (..., C_a), ``y``: (..., C_b) with the same leading shape. Solved in float64: on one batch
    [X, 1] is often badly conditioned, and float32 loses the fit."""
    x2 = x.reshape(-1, x.size(-1)).double()
    y2 = y.reshape(-1, y.size(-1)).double()
    if x2.size(0) != y2.size(0):
        raise ValueError(f"least squares needs as many tokens on both sides: {x2.size(0)} vs {y2.size(0)}")
    ones = torch.ones(x2.size(0), 1, dtype=x2.dtype, device=x2.device)
    a = torch.linalg.pinv(torch.cat([x2, ones], dim=1)) @ y2  # (C_a + 1) × C_b
    return a[:-1].T.to(x.dtype).contiguous(), a[-1].to(x.dtype)


@torch.no_grad()
def block_inputs(model: GPT, idx: torch.Tensor) -> list[torch.Tensor]:
    """Hidden states entering blocks 0..L−1 of ``model`` (eval mode), and the last block's output
    at index L: ``out[k]`` is what the stack expects before block k, ``out[j + 1]`` what block j gives."""
    was_training = model.training
    model.eval()
    view = protocol.require(model, "stages", "stitch init")
    try:
        x = view.embed(idx)
        out = [x]
        run_block = getattr(view, "run_block", None)  # blocks that take the forward's context (hf)
        for i, block in enumerate(view.blocks):
            x = block(x) if run_block is None else run_block(i, x)
            out.append(x)
    finally:
        model.train(was_training)
    return out


def stitch_positions(family: StitchedFamily) -> dict[str, list[tuple[int, int, int, int]]]:
    """For every stitch layer, the distinct places it joins two stacks in some configuration:
    (front stack, front stop, end stack, end start)."""
    places: dict[str, dict] = {k: {} for k in family.stitches}
    for r in family.routes:
        for key, a, b in zip(r.stitches, r.segments, r.segments[1:]):
            places[key][(a.stack, a.stop, b.stack, b.start)] = None
    return {k: list(v) for k, v in places.items()}


@torch.no_grad()
def init_least_squares(family: StitchedFamily, idx: torch.Tensor) -> None:
    """SN-Net's init from one batch of token ids ``idx``: at each place a stitch layer serves, solve
    [X, 1]·A ≈ Y with X the front stack's output of its last block run and Y the input the end stack
    expects at its first block run; average W and b over the places the layer is shared by."""
    acts = [block_inputs(stack, idx) for stack in family.stacks]
    for key, places in stitch_positions(family).items():
        fits = [least_squares(acts[a][stop], acts[b][start]) for a, stop, b, start in places]
        family.stitches[key].set_weights(torch.stack([w for w, _ in fits]).mean(0),
                                         torch.stack([b for _, b in fits]).mean(0))


def learned_stitch_weight(front: Sequence[torch.Tensor],
                          end: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """Learngene Pool's learned init of a stitch from a narrow instance to a wider one.

    ``front``: the narrow model's hidden-state distillation projections (weights C_front × D_teacher,
    teacher → student). Their mean, transposed, maps the narrow space back to the teacher's (the
    reference code's Tiny→Base init, the Base model having the teacher's width). If the wider model is
    narrower than the teacher, ``end`` (its own projections) carries the result on: P̄_end·P̄_frontᵀ."""
    w = torch.stack(list(front)).mean(0).T  # D_teacher × C_front
    if end is not None:
        w = torch.stack(list(end)).mean(0) @ w  # C_end × C_front
    return w


@torch.no_grad()
def init_learned(family: StitchedFamily, projections: Mapping[int, Sequence[torch.Tensor]],
                 teacher_width: int) -> None:
    """Initialise every stitch layer of a Learngene Pool from the distillation projections of its
    stacks (``projections[stack]``: that auxiliary model's hidden-state projection weights); bias 0."""
    def of(stack: int) -> Sequence[torch.Tensor]:
        if stack not in projections:
            raise ConfigError(f"learned stitch init needs the distillation projections of "
                              f"{family.labels[stack]}; use least squares instead")
        return projections[stack]

    for key, layer in family.stitches.items():
        a, b, _ = parse_stitch_key(key)
        end = None if family.width(b) == teacher_width else of(b)
        w = learned_stitch_weight(of(a), end)
        layer.set_weights(w, torch.zeros_like(layer.bias))
