"""A model's ordered units as local learning sees them, and how to cut them into modules.

Units applied in order compute the model's logits; a model describes them through the model protocol
(:class:`leantrain.models.protocol.Units`, capability ``units``): a ResNet's are its stem, every block
and its head; a GPT's its embedding, every block and its head (final LayerNorm + LM head). The
last unit is the model's own head: it always belongs to the last module, so a model with n units
can be cut into 1 ≤ K ≤ n − 1 modules. A cut is the index of the unit after which a module ends.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ...errors import ConfigError
from ...measure import saved_tensor_bytes
from ...models.protocol import Units, adapt, require


UnitView = Units
"""A model's ordered units (:class:`leantrain.models.protocol.Units`)."""


def unit_view(model: nn.Module, input_shape: tuple[int, ...]) -> Units:
    """The model's ordered units through the model protocol: capability ``units`` (callable: a
    ResNet's stem, blocks and head; a GPT's embedding, blocks and head) or ``unit_hooks`` (run by the
    model's own forward, cut by forward hooks: ``Units.callable`` is False)."""
    view = adapt(model)
    if not view.supports("units") and view.supports("unit_hooks"):
        return view.local_units(tuple(input_shape))  # cut by forward hooks inside the model's forward
    view = require(model, "units", "methods.local",
                   f"local learning needs a model made of ordered units (resnet, gpt); {type(model).__name__} "
                   "does not declare them")
    return view.local_units(tuple(input_shape))


# ----------------------------------------------------------------------------------- cuts
def equal_cuts(n_units: int, k: int) -> list[int]:
    """K − 1 cut indices splitting ``n_units`` cuttable units into K runs of (nearly) equal length —
    for ResNet-32 (16 units) and K = 4: after units 3, 7, 11 (stage-1 block 2, stage-2 block 1,
    stage-3 block 0), the InfoPro reference split."""
    return [round(n_units * j / k) - 1 for j in range(1, k)]


def balanced_cuts(costs: Sequence[float], k: int) -> list[int]:
    """K − 1 cuts that minimise the largest module's summed cost (contiguous modules; exact dynamic
    programme over the n units), e.g. measured activation bytes per unit."""
    n = len(costs)
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(k + 1)]  # best[j][i]: first i units in j modules
    back = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0.0
    for j in range(1, k + 1):
        for i in range(j, n + 1):
            for m in range(j - 1, i):
                cost = max(best[j - 1][m], prefix[i] - prefix[m])
                if cost < best[j][i]:
                    best[j][i], back[j][i] = cost, m
    cuts, i = [], n
    for j in range(k, 0, -1):
        i = back[j][i]
        cuts.append(i - 1)
    return sorted(cuts)[1:]  # the first "cut" is before unit 0


@torch.no_grad()
def unit_activation_bytes(view: UnitView, x: torch.Tensor) -> list[int]:
    """Bytes each cuttable unit saves for backward on batch ``x`` (measured, in isolation)."""
    out = []
    h = x
    params = [p for unit_params in view.params for p in unit_params]
    for unit in view.modules[:-1]:
        h = h.detach()
        with torch.enable_grad(), saved_tensor_bytes(params) as rec:
            if h.is_floating_point():
                h.requires_grad_(True)
            y = unit(h)
        out.append(rec.bytes)
        h = y
    return out


def unit_seconds(view: UnitView, x: torch.Tensor, repeats: int = 5) -> list[float]:
    """Median seconds of each cuttable unit's forward + backward on batch ``x`` (measured in isolation):
    the cost a pipeline stage pays, overheads included."""
    import statistics
    import time
    out, h = [], x
    for unit in view.modules[:-1]:
        h = h.detach().requires_grad_(h.is_floating_point())
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            y = unit(h)
            y.float().sum().backward()
            times.append(time.perf_counter() - t0)
        for p in unit.parameters():
            p.grad = None
        out.append(statistics.median(times))
        h = y
    return out


def check_cuts(cuts: Sequence[int], n_units: int) -> None:
    if any(not 0 <= c < n_units - 1 for c in cuts):
        bad = next(c for c in cuts if not 0 <= c < n_units - 1)
        raise ConfigError(f"methods.local.cuts: unit {bad} is out of range (cuts end a module after units "
                          f"0..{n_units - 2}: the model has {n_units} cuttable units)")
    if any(b <= a for a, b in zip(cuts, cuts[1:])):
        raise ConfigError(f"methods.local.cuts: {list(cuts)} must increase strictly")
