"""Stitch-layer initialisation: least squares on activations (SN-Net; the default of both families)
or through the distillation projections (Learngene Pool's learned init, solved with a pseudo-inverse
in both instances' own bases)."""
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


def projection_stitch(front: Sequence[torch.Tensor], end: Sequence[torch.Tensor],
                      front_bias: Sequence[torch.Tensor] | None = None,
                      end_bias: Sequence[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Learngene Pool's learned init of a stitch from one instance to another, through the ancestry's
    space, in the instances' *own* bases.

    ``front`` / ``end``: each instance's hidden-state distillation projections (weights C × D_teacher,
    teacher → instance, trained so that h_instance ≈ P·h_teacher + c). With their means P̄_a, c̄_a and
    P̄_b, c̄_b: h_teacher ≈ P̄_a⁺(h_a − c̄_a) (P̄_a⁺ the pseudo-inverse: a real inverse on P̄_a's range,
    where a transpose is not), so h_b ≈ W·h_a + b with W = P̄_b·P̄_a⁺ and b = c̄_b − W·c̄_a. The end
    instance is an auxiliary model trained from its own init even when it is as wide as the ancestry,
    so its own projections are always used. Returns (W: C_b × C_a, b: C_b); solved in float64."""
    def mean(ts, rows):  # the projections' mean in float64 (no biases: zero)
        return torch.zeros(rows, dtype=torch.float64) if ts is None else torch.stack(list(ts)).mean(0).double()

    pa, pb = mean(front, None), mean(end, None)
    w = pb @ torch.linalg.pinv(pa)
    b = mean(end_bias, pb.size(0)).to(w.device) - w @ mean(front_bias, pa.size(0)).to(w.device)
    dtype = front[0].dtype
    return w.to(dtype).contiguous(), b.to(dtype)


@torch.no_grad()
def init_learned(family: StitchedFamily, projections: Mapping[int, Sequence[torch.Tensor]],
                 biases: Mapping[int, Sequence[torch.Tensor]] | None = None) -> None:
    """Initialise every stitch layer of a Learngene Pool from the distillation projections of its
    stacks (``projections[stack]``: that auxiliary model's hidden-state projection weights,
    ``biases[stack]`` their biases; none: zero) by :func:`projection_stitch`."""
    def of(table, stack: int) -> Sequence[torch.Tensor] | None:
        if table is None:
            return None
        if stack not in table:
            raise ConfigError(f"learned stitch init needs the distillation projections of "
                              f"{family.labels[stack]}; use least squares instead")
        return table[stack]

    for key, layer in family.stitches.items():
        a, b, _ = parse_stitch_key(key)
        w, bias = projection_stitch(of(projections, a), of(projections, b), of(biases, a), of(biases, b))
        layer.set_weights(w, bias)
