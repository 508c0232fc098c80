"""Reading a family's results: its Pareto front (least FLOPs and loss), how many configurations
another one of the same family beats on both, and picking one configuration for a budget."""
from __future__ import annotations

from collections.abc import Sequence

from ...errors import LeantrainError


def dominated(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For each (cost, loss): is some other point no worse on both and better on one? Pass the
    configurations of one family to count those dominated within it (SN-Net v2's finding: stitches
    costlier than an anchor yet worse)."""
    return [any(c2 <= c and l2 <= l and (c2 < c or l2 < l) for c2, l2 in points) for c, l in points]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points, by ascending cost."""
    dom = dominated(points)
    return sorted((i for i, d in enumerate(dom) if not d), key=lambda i: points[i])


def pick_within_budget(flops: Sequence[int], params: Sequence[int],
                       losses: Sequence[float | None] | None = None,
                       max_flops: float | None = None, max_params: int | None = None) -> int:
    """The configuration to deploy under a budget: among those within ``max_flops`` and
    ``max_params``, the lowest validation loss if every one has one, else the costliest (most FLOPs).
    Raises LeantrainError naming the budget when none fits."""
    fits = [i for i in range(len(flops)) if (max_flops is None or flops[i] <= max_flops)
            and (max_params is None or params[i] <= max_params)]
    if not fits:
        if max_flops is not None and min(flops) > max_flops:
            raise LeantrainError(f"no configuration fits --max-flops {max_flops:g}: the cheapest needs "
                                 f"{min(flops):g} FLOPs")
        if max_params is not None and min(params) > max_params:
            raise LeantrainError(f"no configuration fits --max-params {max_params}: the smallest has "
                                 f"{min(params)} parameters")
        raise LeantrainError(f"no configuration fits both --max-flops {max_flops:g} and "
                             f"--max-params {max_params}")
    if losses is not None and all(losses[i] is not None for i in fits):
        return min(fits, key=lambda i: (losses[i], flops[i], i))
    return max(fits, key=lambda i: (flops[i], -i))
