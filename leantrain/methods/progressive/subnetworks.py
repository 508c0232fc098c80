"""The functional core shared by RaPTr and the depth baselines: per-step generators, stage
boundaries, and sampling which blocks (and which heads / hidden units) a training step runs."""
from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Iterable, Sequence

import torch

from ...models.protocol import BlockPlan, ModelProtocol, require


def step_generator(seed: int, step: int, salt: str) -> torch.Generator:
    """A generator determined by (seed, step, salt) alone: the mask is the same on every DDP rank,
    needs no saved state and replays exactly on resume."""
    digest = hashlib.sha256(f"{salt}:{seed}:{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def stage_ends(lengths: Sequence[float], steps: int, start: int = 0) -> list[int]:
    """End step (exclusive) of each stage when fractions ``lengths`` (summing to 1) share the
    ``steps`` steps that begin at ``start``. Cumulative rounding: the last stage ends exactly."""
    ends, total = [], 0.0
    for fraction in lengths:
        total += fraction
        ends.append(start + round(total * steps))
    ends[-1] = start + steps
    return ends


def stage_index(ends: Sequence[int], step: int) -> int:
    """The stage that step ``step`` (0-based) belongs to; steps past the end stay in the last."""
    return min(bisect.bisect_right(ends, step), len(ends) - 1)


def fixed_blocks(fixed: Iterable[int], n_layer: int, always_run: Iterable[int] = ()) -> list[int]:
    """Normalise possibly negative block indices (``-1`` = the last block), plus the blocks the model
    can never skip (the protocol's ``always_run``, e.g. a ResNet's downsampling blocks)."""
    return sorted({i % n_layer for i in fixed} | set(always_run))


def check_plan_model(model, method: str) -> ModelProtocol:
    """The model's protocol view, after refusing a model that does not declare ordered blocks and a
    block plan (capabilities ``blocks`` and ``plan``): having attributes of those names is not enough."""
    for capability in ("blocks", "plan"):
        require(model, capability, f"methods.{method}",
                f"skips blocks through a block plan, which model {type(model).__name__} does not declare "
                "(gpt and resnet do)")
    return require(model, "plan", f"methods.{method}")


def sample_path(n_layer: int, fixed: Sequence[int], keep_prob: float, sampling: str,
                generator: torch.Generator) -> list[int]:
    """Sorted indices of the blocks one step runs: the ``fixed`` ones, plus each other block

    * ``bernoulli``: independently with probability ``keep_prob`` (RaPTr's definition);
    * ``fixed_count``: exactly keep_prob·(#other blocks) of them, uniformly without replacement (a
      fractional count is rounded up with probability equal to its fractional part, so the expected
      count, hence the expected FLOPs, is the same as with ``bernoulli``).
    """
    free = [i for i in range(n_layer) if i not in fixed]
    if sampling == "bernoulli":
        draws = torch.rand(len(free), generator=generator).tolist()
        kept = [i for i, u in zip(free, draws) if u < keep_prob]
    else:
        count = keep_prob * len(free)
        if abs(count - round(count)) < 1e-9:  # path_len → keep_prob → count must stay an integer
            count = round(count)
        whole = math.floor(count)
        n = whole + int(torch.rand((), generator=generator).item() < count - whole)
        kept = [free[j] for j in torch.randperm(len(free), generator=generator)[:n].tolist()]
    return sorted([*fixed, *kept])


def sample_units(n: int, fraction: float, generator: torch.Generator,
                 device: torch.device | None = None) -> torch.Tensor | None:
    """A sorted random subset of ``kept_units(n, fraction)`` of ``n`` units; None if all are kept."""
    k = kept_units(n, fraction)
    if k == n:
        return None
    return torch.randperm(n, generator=generator)[:k].sort().values.to(device)


def kept_units(n: int, fraction: float) -> int:
    return min(n, max(1, round(fraction * n)))


def branch_scale(keep_prob: float, rule: str) -> float:
    """Training-time multiplier of a kept residual branch whose keep probability is ``keep_prob``."""
    return {"none": 1.0, "inverse_p": 1.0 / keep_prob, "sqrt_inverse_p": keep_prob ** -0.5}[rule]


def layer_drop_plan(keep_probs: Sequence[float], generator: torch.Generator,
                    always_run: Iterable[int] = ()) -> list[BlockPlan]:
    """Stochastic depth / PLD for one step: block i runs with probability ``keep_probs[i]`` and, if
    it runs, its branches are scaled by 1/keep_probs[i] (DropPath), so the expectation is unchanged.
    ``always_run`` blocks (which the model cannot skip) run every step, unscaled."""
    probs = [1.0 if i in set(always_run) else p for i, p in enumerate(keep_probs)]
    draws = torch.rand(len(probs), generator=generator).tolist()
    return [BlockPlan(i, scale=1.0 / p) for i, (p, u) in enumerate(zip(probs, draws)) if u < p]
