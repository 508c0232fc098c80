"""The depth-dropping baselines RaPTr is compared with. Both draw one mask per step for the whole
batch (per-sample masks would save no compute), skip dropped blocks entirely, and scale kept
branches by 1/p_ℓ (DropPath).

* Stochastic depth (Huang et al. 2016): a constant rate, p_ℓ = 1 − (ℓ/L)(1 − p_L) (``linear``) or
  p_ℓ = p_L (``uniform``, LayerDrop).
* Progressive layer dropping, PLD (Zhang & He 2020; DeepSpeed ``progressive_layer_drop.py``): a
  global keep ratio θ(t) = (1 − θ̄)e^{−γt} + θ̄ that *falls* over training, p_ℓ = 1 − (ℓ/L)(1 − θ(t)).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ...config import check
from ...core import Event, Method, State
from ...models.protocol import adapt
from ...registry import register_method
from .subnetworks import check_plan_model, layer_drop_plan, step_generator


def depth_keep_probs(n_layer: int, last_keep: float, profile: str = "linear") -> list[float]:
    """Keep probability of blocks ℓ = 1..L: linear from ≈1 down to ``last_keep``, or uniform."""
    if profile == "uniform":
        return [last_keep] * n_layer
    return [1 - (l / n_layer) * (1 - last_keep) for l in range(1, n_layer + 1)]


def pld_theta(step: int, theta_bar: float, gamma: float) -> float:
    """PLD's global keep ratio at ``step``: 1 at the start, decaying to θ̄."""
    return (1 - theta_bar) * math.exp(-gamma * step) + theta_bar


class _LayerDrop(Method):
    kind = "schedule"
    find_unused_parameters = True
    exclusive_group = "depth"

    def keep_probs(self, n_layer: int, step: int) -> list[float]:
        raise NotImplementedError

    def expected_block_fraction(self, model_cfg, max_steps: int) -> float:
        """Expected training FLOPs of the blocks over the run, as a fraction of the full model's."""
        L = model_cfg.n_layer
        return sum(sum(self.keep_probs(L, t)) / L for t in range(max_steps)) / max_steps

    def check(self, state: State) -> None:
        check_plan_model(state.model, self.name)

    def on_event(self, event: Event, state: State) -> None:
        if event is Event.STEP_START:
            model = adapt(state.model)
            probs = self.keep_probs(len(model.blocks), state.step)
            gen = step_generator(state.recipe.train.seed, state.step, self.name)
            model.plan = layer_drop_plan(probs, gen, model.always_run)
            state.log(f"{self.name}/path_len", len(model.plan))
        elif event is Event.FIT_END:
            adapt(state.model).plan = None


@dataclass
class StochasticDepthConfig:
    drop_rate: float = 0.5
    """Drop probability of the last block (linear profile) or of every block (uniform): 1 − p_L."""
    profile: Literal["linear", "uniform"] = "linear"
    """linear: p_ℓ = 1 − (ℓ/L)·drop_rate (Huang et al.); uniform: every block p_L (LayerDrop)."""

    def validate(self) -> None:
        check(0 <= self.drop_rate < 1, "drop_rate", f"must be in [0, 1), got {self.drop_rate}")


@register_method
class StochasticDepth(_LayerDrop):
    """Stochastic depth: skip blocks at a constant rate (one mask per step), kept branches scaled by 1/p."""
    name = "stochastic_depth"
    Config = StochasticDepthConfig

    def keep_probs(self, n_layer: int, step: int) -> list[float]:
        return depth_keep_probs(n_layer, 1 - self.cfg.drop_rate, self.cfg.profile)


@dataclass
class PLDConfig:
    theta_bar: float = 0.5
    """θ̄: the global keep ratio that θ(t) decays to, in (0, 1]."""
    gamma: float = 0.001
    """γ: decay rate of θ(t) per optimizer step."""

    def validate(self) -> None:
        check(0 < self.theta_bar <= 1, "theta_bar", f"must be in (0, 1], got {self.theta_bar}")
        check(self.gamma >= 0, "gamma", f"must be ≥ 0, got {self.gamma}")


@register_method
class ProgressiveLayerDrop(_LayerDrop):
    """Progressive layer dropping (PLD): drop more, and deeper, blocks as training proceeds."""
    name = "pld"
    Config = PLDConfig

    def keep_probs(self, n_layer: int, step: int) -> list[float]:
        # One θ per step, used both to draw the mask and to scale (DeepSpeed's example mixes two).
        return depth_keep_probs(n_layer, pld_theta(step, self.cfg.theta_bar, self.cfg.gamma))

    def on_event(self, event: Event, state: State) -> None:
        super().on_event(event, state)
        if event is Event.STEP_START:
            state.log("pld/theta", pld_theta(state.step, self.cfg.theta_bar, self.cfg.gamma))
