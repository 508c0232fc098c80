"""RaPTr (Panigrahi et al., "Efficient Stagewise Pretraining via Progressive Subnetworks", ICLR 2025):
each step trains one random subnetwork — a path of blocks, optionally a subset of each block's heads
and MLP units — whose expected size grows stage by stage to the full model."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from ...config import check
from ...core import Event, Method, State
from ...errors import ConfigError
from ...models.protocol import BlockPlan, adapt, require
from ...registry import register_method
from .subnetworks import (branch_scale, check_plan_model, fixed_blocks, kept_units, sample_path, sample_units,
                          stage_ends, stage_index, step_generator)


@dataclass
class Stage:
    length: float | None = None
    """Fraction of the steps after the warm-up that this stage lasts; null = an equal share of what
    the stages with a length leave. Lengths sum to 1."""
    path_len: int | None = None
    """Expected number of blocks run per step, fixed ones included (give this or keep_prob)."""
    keep_prob: float | None = None
    """Probability that a non-fixed block runs, in (0, 1] (give this or path_len)."""
    width: float = 1.0
    """Fraction of each run block's attention heads and MLP hidden units kept, in (0, 1]."""

    def __repr__(self) -> str:  # as a recipe writes it (shown by `leantrain methods --options`)
        return "{" + ", ".join(f"{k}: {v}" for k, v in vars(self).items() if v is not None) + "}"

    def validate(self) -> None:
        check(self.length is None or self.length > 0, "length",
              f"must be a positive fraction of the steps, got {self.length}")
        check((self.path_len is None) != (self.keep_prob is None), "path_len",
              "give exactly one of path_len and keep_prob")
        check(self.path_len is None or self.path_len > 0, "path_len", f"must be positive, got {self.path_len}")
        check(self.keep_prob is None or 0 < self.keep_prob <= 1, "keep_prob",
              f"must be in (0, 1], got {self.keep_prob}")
        check(0 < self.width <= 1, "width", f"must be in (0, 1], got {self.width}")


def _paper_stages() -> list[Stage]:
    # 6-8-10-12 of 12 blocks with the first and last fixed, equal stages (the paper's BERT schedule).
    return [Stage(keep_prob=p) for p in (0.4, 0.6, 0.8, 1.0)]


@dataclass
class RaPTrConfig:
    stages: list[Stage] = field(default_factory=_paper_stages)
    """Stages in order: {length, path_len or keep_prob, width}. Default: keep_prob 0.4-0.6-0.8-1 in
    four equal stages (= path lengths 6-8-10-12 of 12 blocks, two of them fixed)."""
    fixed: list[int] = field(default_factory=lambda: [0, -1])
    """Blocks always run (negative indices count from the top). Default: first and last."""
    sampling: Literal["bernoulli", "fixed_count"] = "bernoulli"
    """bernoulli: each non-fixed block runs with probability p; fixed_count: exactly the expected
    number of non-fixed blocks, chosen uniformly."""
    scale: Literal["none", "inverse_p", "sqrt_inverse_p"] = "none"
    """Training-time multiplier of a run non-fixed block's residual branches: 1, 1/p or 1/√p
    (identity at evaluation). Default none: the best in the 3-seed ablation of bench depth."""
    width_rescale: bool = True
    """Multiply width-sliced branch outputs by 1/width during training."""
    warmup: float = 0.0
    """Fraction of max_steps trained on the full model before the stages begin."""
    freeze_skipped_in_optimizer: bool = True
    """Skipped blocks, and the heads and MLP units width sampling leaves out, get no update that step
    (blocks: grad None, so AdamW skips them; width slices: their weights and AdamW moments are
    restored after the step). False: they get zero gradients, so AdamW momentum and weight decay
    still move them."""
    allow_partial_final: bool = False
    """Allow a final stage that is not the full model (RaPTr always ends on the full model)."""

    def validate(self) -> None:
        check(len(self.stages) > 0, "stages", "give at least one stage")
        given = sum(s.length for s in self.stages if s.length is not None)
        if all(s.length is not None for s in self.stages):
            check(abs(given - 1) < 1e-6, "stages", f"stage lengths must sum to 1, got {given:g}")
        else:
            check(given < 1 - 1e-6, "stages", f"stage lengths sum to {given:g}, leaving nothing for "
                  "the stages without one")
        check(0 <= self.warmup < 1, "warmup", f"must be in [0, 1), got {self.warmup}")
        check(len(set(self.fixed)) == len(self.fixed), "fixed", f"lists a block twice: {self.fixed}")
        last = self.stages[-1]
        check(self.allow_partial_final or (last.keep_prob in (None, 1.0) and last.width == 1.0), "stages",
              "the final stage must train the full model (keep_prob 1, width 1); "
              "set allow_partial_final: true to allow otherwise")


def stage_keep_prob(stage: Stage, n_fixed: int, n_layer: int) -> float:
    """Probability that a non-fixed block runs: E[#run] = |fixed| + p·(L − |fixed|)."""
    if stage.keep_prob is not None:
        return stage.keep_prob
    return 1.0 if n_layer == n_fixed else (stage.path_len - n_fixed) / (n_layer - n_fixed)


def block_cost(n_embd: int, n_head: int, block_size: int, width: float) -> float:
    """Training FLOPs of a block sliced to ``width``, as a fraction of the full block's (matmuls as
    ``measure.analytic_gpt_flops`` counts them: dense ×3 for forward + backward, attention ×3.5)."""
    C, T = n_embd, block_size
    heads = kept_units(n_head, width) / n_head
    hidden = kept_units(4 * C, width) / (4 * C)
    sliced = 3 * (8 * C * C * heads + 16 * C * C * hidden) + 3.5 * 4 * T * C * heads
    return sliced / (3 * 24 * C * C + 3.5 * 4 * T * C)


def sample_plan(n_layer: int, n_head: int, n_hidden: int, fixed: list[int], keep_prob: float,
                width: float, *, sampling: str, scale: str, width_rescale: bool,
                generator: torch.Generator, device: torch.device | None = None) -> list[BlockPlan]:
    """One step's subnetwork: which blocks run, their branch scale, and their kept heads/units."""
    fixed = fixed_blocks(fixed, n_layer)
    plans = []
    for i in sample_path(n_layer, fixed, keep_prob, sampling, generator):
        plans.append(BlockPlan(
            i, scale=1.0 if i in fixed else branch_scale(keep_prob, scale),
            heads=sample_units(n_head, width, generator, device),
            hidden=sample_units(n_hidden, width, generator, device),
            width_scale=1.0 / width if width_rescale else 1.0))
    return plans


@register_method
class RaPTr(Method):
    """RaPTr: train a random subnetwork per step (blocks, heads, MLP units), growing by stage to the full model."""
    name = "raptr"
    Config = RaPTrConfig
    kind = "schedule"
    find_unused_parameters = True
    exclusive_group = "depth"

    def __init__(self, cfg: RaPTrConfig | None = None):
        super().__init__(cfg)
        self._frozen = []  # width-dropped slices saved after backward, put back after the optimizer step

    # -- the schedule --------------------------------------------------------------------------
    def stage_ends(self, max_steps: int) -> list[int]:
        """End steps of the warm-up (stage 0, possibly empty) and of every stage."""
        warm = round(self.cfg.warmup * max_steps)
        return [warm] + stage_ends(self.lengths(), max_steps - warm, warm)

    def lengths(self) -> list[float]:
        """Each stage's fraction of the post-warm-up steps, stages without a length sharing the rest."""
        stages = self.cfg.stages
        missing = sum(s.length is None for s in stages)
        share = (1 - sum(s.length or 0.0 for s in stages)) / max(missing, 1)
        return [share if s.length is None else s.length for s in stages]

    def expected_block_fraction(self, model_cfg, max_steps: int) -> float:
        """Expected training FLOPs of the blocks over the run, as a fraction of the full model's
        (a GPT config: blocks of equal cost, width slicing costed by ``block_cost``)."""
        L = model_cfg.n_layer
        return self._fraction(L, fixed_blocks(self.cfg.fixed, L), max_steps,
                              lambda w: block_cost(model_cfg.n_embd, model_cfg.n_head, model_cfg.block_size, w))

    def _fraction(self, L: int, fixed: list[int], max_steps: int, cost=lambda width: 1.0) -> float:
        """Expected share of the L blocks run per step over the run, each weighted by ``cost(width)``."""
        ends = self.stage_ends(max_steps)
        total = ends[0]  # the warm-up runs the full model
        for stage, start, end in zip(self.cfg.stages, ends, ends[1:]):
            p = stage_keep_prob(stage, len(fixed), L)
            blocks = len(fixed) + p * (L - len(fixed))
            total += (end - start) * blocks / L * cost(stage.width)
        return total / max_steps

    def check(self, state: State) -> None:
        model = check_plan_model(state.model, "raptr")
        L, cfg = len(model.blocks), self.cfg
        bad = [i for i in cfg.fixed if not -L <= i < L]
        if bad:
            raise ConfigError(f"methods.raptr.fixed: block {bad[0]} does not exist (the model has {L})")
        if len(fixed_blocks(cfg.fixed, L)) != len(cfg.fixed):
            raise ConfigError(f"methods.raptr.fixed: {cfg.fixed} names a block twice in a {L}-block model")
        narrow = [i for i, s in enumerate(cfg.stages) if s.width < 1]
        if narrow:
            require(state.model, "plan_width", f"methods.raptr.stages[{narrow[0]}].width",
                    f"width sampling keeps a subset of attention heads and MLP units, which model "
                    f"{type(state.model).__name__} does not support; use width 1 (depth only)")
        fixed = fixed_blocks(cfg.fixed, L, model.always_run)
        for i, s in enumerate(cfg.stages):
            where = f"methods.raptr.stages[{i}].path_len"
            if s.path_len is not None and not len(fixed) <= s.path_len <= L:
                always = len(fixed) - len(cfg.fixed)
                why = f" ({always} of them always run: their shortcut changes shape)" if always else ""
                raise ConfigError(f"{where}: {s.path_len} is outside [{len(fixed)} fixed blocks{why}, {L} blocks]")
        if cfg.stages[-1].path_len not in (None, L) and not cfg.allow_partial_final:
            raise ConfigError(f"methods.raptr.stages: the final stage must train the full model (path_len "
                              f"{L}); set allow_partial_final: true to allow otherwise")
        ends = self.stage_ends(state.max_steps)
        empty = [i for i, (a, b) in enumerate(zip(ends, ends[1:])) if b <= a]
        if empty:
            raise ConfigError(f"methods.raptr.stages[{empty[0]}] gets no steps out of "
                              f"train.max_steps={state.max_steps}")

    # -- events --------------------------------------------------------------------------------
    def on_event(self, event: Event, state: State) -> None:
        if event is Event.FIT_START and state.rank == 0:
            print(self.describe(state), flush=True)
        elif event is Event.STEP_START:
            self.set_plan(state)
        elif event is Event.AFTER_BACKWARD:
            if self.cfg.freeze_skipped_in_optimizer:
                model = adapt(state.model)
                slices = model.width_unused_slices() if model.supports("plan_width") else []
                self._frozen = snapshot(slices, state.optimizer)
            else:
                zero_skipped_grads(state.model)
        elif event is Event.STEP_END and self._frozen:
            restore(self._frozen)
            self._frozen = []
        elif event is Event.FIT_END:
            adapt(state.model).plan = None

    def set_plan(self, state: State) -> None:
        model, cfg = adapt(state.model), self.cfg
        stage = stage_index(self.stage_ends(state.max_steps), state.step)  # 0 = warm-up
        L = len(model.blocks)
        fixed = fixed_blocks(cfg.fixed, L, model.always_run)
        p = 1.0 if stage == 0 else stage_keep_prob(cfg.stages[stage - 1], len(fixed), L)
        width = 1.0 if stage == 0 else cfg.stages[stage - 1].width
        if p == 1.0 and width == 1.0:
            model.plan = None  # the full model: nothing to sample
        else:
            gen = step_generator(state.recipe.train.seed, state.step, self.name)
            heads, hidden = model.width_units(0) if width < 1 else (1, 1)
            model.plan = sample_plan(L, heads, hidden, fixed, p, width,
                                     sampling=cfg.sampling, scale=cfg.scale, width_rescale=cfg.width_rescale,
                                     generator=gen, device=next(state.model.parameters()).device)
        state.log("raptr/stage", stage)
        state.log("raptr/path_len", L if model.plan is None else len(model.plan))

    def describe(self, state: State) -> str:
        model = adapt(state.model)
        L = len(model.blocks)
        fixed = fixed_blocks(self.cfg.fixed, L, model.always_run)
        n_fixed = len(fixed)
        ends = self.stage_ends(state.max_steps)
        parts = [f"{b - a} steps at path {n_fixed + stage_keep_prob(s, n_fixed, L) * (L - n_fixed):.3g}"
                 + (f" × width {s.width:.3g}" if s.width < 1 else "")
                 for s, a, b in zip(self.cfg.stages, ends, ends[1:])]
        warm = f"{ends[0]} full-model warm-up steps, " if ends[0] else ""
        if callable(getattr(model, "width_cost", None)):  # blocks of equal cost (GPT): a FLOP fraction
            what = f"expected FLOP fraction of the blocks {self._fraction(L, fixed, state.max_steps, model.width_cost):.3f}"
        else:
            what = f"expected fraction of blocks run {self._fraction(L, fixed, state.max_steps):.3f}"
        return f"raptr: {what} (embedding and head excluded); {warm}{', '.join(parts)} of {L} blocks"


@torch.no_grad()
def snapshot(slices, optimizer: torch.optim.Optimizer) -> list[tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]]:
    """Copies of the (parameter, dim, indices) slices and of the same slices of the parameter's
    optimizer state tensors (AdamW's moments), to be put back by ``restore`` after the step."""
    saved = []
    for p, dim, idx in slices:
        if len(idx) == 0:
            continue
        state = optimizer.state.get(p, {})
        for t in [p] + [v for v in state.values() if torch.is_tensor(v) and v.shape == p.shape]:
            saved.append((t, dim, idx, t.index_select(dim, idx)))
    return saved


@torch.no_grad()
def restore(saved) -> None:
    for t, dim, idx, values in saved:
        t.index_copy_(dim, idx, values)


def zero_skipped_grads(model: torch.nn.Module) -> None:
    """Give the blocks this step skipped zero gradients, so AdamW's momentum and decay still move them."""
    model = adapt(model)
    if model.plan is None:
        return
    run = {bp.index for bp in model.plan}
    for i, block in enumerate(model.blocks):
        if i not in run:
            for p in block.parameters():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
