"""Which configuration a training step runs: uniform (SN-Net v1, Learngene Pool) or FLOPs-binned
(SN-Net v2). The draw depends only on (seed, step): the same on every DDP rank, nothing to checkpoint,
exact on resume."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..progressive.subnetworks import step_generator

SALT = "stitching"


def flops_bins(flops: Sequence[float], n_bins: int, ids: Sequence[int] | None = None) -> list[list[int]]:
    """Group configurations ``ids`` (default: all) by FLOPs, SN-Net v2's way: in ascending FLOPs, a
    new group starts when a configuration costs more than ``step`` above the group's first, with
    ``step`` = (max − min) / n_bins, so there are at most ``n_bins`` groups, none empty."""
    ids = list(range(len(flops))) if ids is None else list(ids)
    if n_bins < 1 or not ids:
        raise ValueError(f"need n_bins ≥ 1 and at least one configuration, got {n_bins} and {len(ids)}")
    order = sorted(ids, key=lambda i: (flops[i], i))
    step = (flops[order[-1]] - flops[order[0]]) / n_bins
    bins: list[list[int]] = []
    for i in order:
        if bins and flops[i] - flops[bins[-1][0]] <= step:
            bins[-1].append(i)
        else:
            bins.append([i])
    return bins


def sample_config(bins: Sequence[Sequence[int]], seed: int, step: int, salt: str = SALT) -> int:
    """Pick a bin uniformly, then a configuration in it uniformly; uniform sampling over all
    configurations is the one-bin case ``[ids]``."""
    g = step_generator(seed, step, salt)
    chosen = bins[int(torch.randint(len(bins), (1,), generator=g))]
    return chosen[int(torch.randint(len(chosen), (1,), generator=g))]
