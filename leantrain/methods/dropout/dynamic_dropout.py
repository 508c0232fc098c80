"""Dynamic dropout (Yan & Shao 2024, arXiv 2411.03236): dropout rates that change over training.

Functional forms first, each usable without the trainer:

* :func:`dropout_at` — p(t) of a time schedule (constant, linear, exponential, cosine, step);
* :func:`validation_decision` — the validation rule: lower, raise or keep the rate;
* :func:`depth_multipliers` — a per-block profile (uniform, linear, exponential over depth);
* :func:`site_rates` / :func:`set_rates` — per-site, per-block rates and putting them on a model.

:class:`DynamicDropout` is the thin trainer-facing method. README.md (the method card) says which
parts follow the paper and which are our choices.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from ...config import check
from ...core import Event, Method, State
from ...errors import ConfigError
from ...models.protocol import SITES, adapt, require
from ...registry import register_method

Schedule = Literal["constant", "linear", "exponential", "cosine", "step", "validation"]
Profile = Literal["uniform", "linear", "exponential"]
Rates = dict[str, float | list[float]]
"""Per-site rates: ``embedding`` a float, the block sites one float per block."""


# ----------------------------------------------------------------------------------- functional
def dropout_at(schedule: str, t: int, T: int, p0: float, p_min: float = 0.0, k: float = 3.0,
               milestones: Sequence[tuple[float, float]] = ()) -> float:
    """The rate of a time schedule before step ``t`` of ``T`` (formulas in the method card).

    ``milestones`` (``step`` only): ``(fraction of T, rate)`` pairs in increasing order; the rate
    is ``p0`` before the first one and a milestone's rate from its fraction on.
    """
    f = min(t / T, 1.0)
    if schedule == "constant":
        return p0
    if schedule == "linear":
        return p0 - (p0 - p_min) * f
    if schedule == "exponential":
        return max(p_min, p0 * math.exp(-k * f))
    if schedule == "cosine":
        return p_min + 0.5 * (p0 - p_min) * (1 + math.cos(math.pi * f))
    if schedule == "step":
        return next((p for at, p in reversed(milestones) if f >= at), p0)
    raise ValueError(f"{schedule!r} is not a time schedule")


def validation_decision(val_loss: float, best: float | None, bad_evals: int, epsilon: float,
                        patience: int) -> tuple[int, float, int]:
    """The validation rule at one evaluation: ``(direction, best, bad_evals)``.

    direction −1 (lower the rate) if ``val_loss < best − epsilon``; +1 (raise it) at the
    ``patience``-th evaluation in a row without such an improvement, which restarts the count;
    0 otherwise. The first evaluation (``best`` None) only records the best loss.
    """
    if best is None:
        return 0, val_loss, 0
    if val_loss < best - epsilon:
        return -1, val_loss, 0
    if bad_evals + 1 >= patience:
        return 1, best, 0
    return 0, best, bad_evals + 1


def depth_multipliers(profile: str, n_blocks: int, ratio: float = 0.5) -> list[float]:
    """Per-block multipliers of the rate, non-decreasing with depth; the top block gets 1.

    uniform: 1; linear: (i+1)/L; exponential: ratio^(L−1−i).
    """
    if profile == "uniform":
        return [1.0] * n_blocks
    if profile == "linear":
        return [(i + 1) / n_blocks for i in range(n_blocks)]
    if profile == "exponential":
        return [ratio ** (n_blocks - 1 - i) for i in range(n_blocks)]
    raise ValueError(f"unknown depth profile {profile!r}")


def site_rates(base: Mapping[str, float], multipliers: Sequence[float], sites: Sequence[str] = SITES) -> Rates:
    """Each site's base rate times the depth multipliers; the embedding counts as block 0."""
    return {site: base[site] * multipliers[0] if site == "embedding" else [base[site] * m for m in multipliers]
            for site in SITES if site in sites}


def set_rates(model, rates: Rates) -> None:
    """Put per-site, per-block rates on a model that declares the protocol's ``dropout`` capability
    (e.g. leantrain's GPT); a block-site's rates go to the blocks that have that site."""
    model = adapt(model)
    sites = model.dropout_sites()
    for site, r in rates.items():
        if site == "embedding":
            model.set_dropout(r, site)
        else:
            for block in sites[site]:
                model.set_dropout(r[block], site, block)


def mean_rate(rates: Rates) -> float:
    """Mean over every dropout site of every block (the embedding once), of the sites in ``rates``."""
    return statistics.fmean(([rates["embedding"]] if "embedding" in rates else [])
                            + [p for s in SITES if s != "embedding" and s in rates for p in rates[s]])


# ----------------------------------------------------------------------------------- config
@dataclass
class SiteOverride:
    """Options one dropout site takes instead of the top-level ones (unset = inherit)."""
    schedule: Literal["inherit", Schedule] = "inherit"
    """This site's schedule; inherit = the top-level schedule."""
    p0: float | None = None
    """This site's initial rate; null = the top-level p0."""
    p_min: float | None = None
    """This site's floor; null = the top-level p_min."""
    p_max: float | None = None
    """This site's ceiling; null = the top-level p_max."""


@dataclass
class SiteOverrides:
    embedding: SiteOverride = field(default_factory=SiteOverride)
    """Dropout on the token + position embedding."""
    attention: SiteOverride = field(default_factory=SiteOverride)
    """Dropout on the attention probabilities (SDPA's dropout_p), every block."""
    residual: SiteOverride = field(default_factory=SiteOverride)
    """Dropout on the attention output before the residual add, every block."""
    mlp: SiteOverride = field(default_factory=SiteOverride)
    """Dropout on the MLP output before the residual add, every block."""


@dataclass
class DynamicDropoutConfig:
    schedule: Schedule = "linear"
    """How the rate changes: constant, linear, exponential, cosine, step (milestones) over training
    steps, or validation (adjusted at each evaluation)."""
    p0: float | None = None
    """Initial rate; null = the recipe's model.dropout (the fixed-rate baseline)."""
    p_min: float = 0.0
    """Floor: where linear/cosine decay end; exponential and the validation rule stop here."""
    p_max: float = 0.5
    """Ceiling for the validation rule (p0 must lie in [p_min, p_max])."""
    k: float = 3.0
    """Exponential decay rate: p = max(p_min, p0·exp(−k·t/T))."""
    milestones: list[list[float]] = field(default_factory=list)
    """step schedule: [[at, p], ...] with increasing `at`; the rate is p0 until the first `at`,
    then each milestone's p from its `at` on."""
    milestones_in: Literal["fraction", "steps"] = "fraction"
    """Unit of the milestones' `at`: a fraction of train.max_steps, or a step count."""
    delta: float = 0.02
    """validation: change of the rate per decision."""
    epsilon: float = 0.0
    """validation: the loss must fall below best − epsilon to count as an improvement."""
    patience: int = 1
    """validation: evaluations in a row without improvement before the rate is raised."""
    depth_profile: Profile = "uniform"
    """Per-block multiplier on every site's rate: uniform (1), linear ((i+1)/L) or exponential
    (depth_ratio^(L−1−i)); the top block gets the full rate, the embedding block 0's."""
    depth_ratio: float = 0.5
    """exponential depth profile: the multiplier's ratio between neighbouring blocks."""
    sites: SiteOverrides = field(default_factory=SiteOverrides)
    """Per-site overrides of schedule, p0, p_min, p_max, e.g. {attention: {schedule: constant}}."""

    def for_site(self, site: str, default_p0: float | None = None) -> DynamicDropoutConfig:
        """The options as ``site`` sees them: its overrides applied, p0 defaulted."""
        o = getattr(self.sites, site)
        changes = {k: v for k, v in dataclasses.asdict(o).items() if v not in (None, "inherit")}
        c = dataclasses.replace(self, sites=SiteOverrides(), **changes)
        return c if c.p0 is not None else dataclasses.replace(c, p0=default_p0)

    def key_prefix(self, site: str) -> str:
        """Where errors about ``site``'s resolved options point: its overrides, if it has any."""
        return "" if getattr(self.sites, site) == SiteOverride() else f"sites.{site}."

    def validate(self) -> None:
        for key in ("p0", "p_min", "p_max"):
            _check_rate(getattr(self, key), key)
        for site in SITES:
            for key in ("p0", "p_min", "p_max"):
                _check_rate(getattr(getattr(self.sites, site), key), f"sites.{site}.{key}")
        check(self.k > 0, "k", f"must be positive, got {self.k}")
        check(self.delta >= 0, "delta", f"must be ≥ 0, got {self.delta}")
        check(self.epsilon >= 0, "epsilon", f"must be ≥ 0, got {self.epsilon}")
        check(self.patience >= 1, "patience", f"must be ≥ 1, got {self.patience}")
        check(0 < self.depth_ratio <= 1, "depth_ratio", f"must be in (0, 1], got {self.depth_ratio}")
        check_bounds(self, "")
        for site in SITES:
            check_bounds(self.for_site(site), self.key_prefix(site))
        if any(self.for_site(s).schedule == "step" for s in SITES):
            self._check_milestones()

    def _check_milestones(self) -> None:
        check(bool(self.milestones), "milestones", "the step schedule needs milestones [[at, p], ...]")
        for i, m in enumerate(self.milestones):
            check(len(m) == 2, f"milestones[{i}]", f"expected [at, p], got {m}")
            _check_rate(m[1], f"milestones[{i}]")
            if self.milestones_in == "fraction":
                check(0 <= m[0] <= 1, f"milestones[{i}]", f"`at` must be a fraction in [0, 1], got {m[0]}")
            else:
                check(m[0] >= 0 and float(m[0]).is_integer(), f"milestones[{i}]",
                      f"`at` must be a step number ≥ 0, got {m[0]}")
        ats = [m[0] for m in self.milestones]
        check(ats == sorted(set(ats)), "milestones", f"`at` must increase strictly, got {ats}")


def _check_rate(p: float | None, key: str) -> None:
    check(p is None or 0 <= p < 1, key, f"a dropout rate must be in [0, 1), got {p}")


def check_bounds(c: DynamicDropoutConfig, where: str, p0_from: str = "") -> None:
    """p_min ≤ p0 ≤ p_max for one site's resolved options."""
    check(c.p_min <= c.p_max, f"{where}p_min", f"{c.p_min} exceeds p_max={c.p_max}")
    check(c.p0 is None or c.p_min <= c.p0 <= c.p_max, f"{where}p0",
          f"{c.p0}{p0_from} is outside [p_min, p_max] = [{c.p_min}, {c.p_max}]")


# ----------------------------------------------------------------------------------- the method
@register_method
class DynamicDropout(Method):
    """Dropout rates scheduled over training and depth, or steered by the validation loss."""
    name = "dynamic_dropout"
    Config = DynamicDropoutConfig
    kind = "schedule"

    def __init__(self, cfg: DynamicDropoutConfig | None = None):
        super().__init__(cfg)
        self.sites: dict[str, DynamicDropoutConfig] = {}
        """Each site's resolved options (set by ``check``, which first sees the model)."""
        self.p: dict[str, float] = {}
        """The validation rule's current rate, per site that uses it."""
        self.best: float | None = None
        self.bad_evals = 0
        self.rates: Rates | None = None
        """The rates last put on the model."""
        self.absent: list[str] = []
        """Sites the model does not have (reported at the start, never set)."""

    def check(self, state: State) -> None:
        model = require(state.model, "dropout", f"methods.{self.name}",
                        f"schedules dropout rates, but model {type(state.model).__name__} has no dropout "
                        "sites to schedule")
        where = f"methods.{self.name}."
        present = model.dropout_sites()
        self.absent = [s for s in SITES if s not in present]
        for s in self.absent:
            if getattr(self.cfg.sites, s) != SiteOverride():
                raise ConfigError(f"{where}sites.{s}: model {type(state.model).__name__} has no {s} dropout "
                                  f"site (it has: {', '.join(present) or 'none'})")
        base = getattr(state.recipe.model, "dropout", 0.0)
        self.sites = {s: self.cfg.for_site(s, default_p0=base) for s in SITES if s in present}
        for s, c in self.sites.items():
            from_model = self.cfg.p0 is None and getattr(self.cfg.sites, s).p0 is None
            check_bounds(c, where + self.cfg.key_prefix(s), " (from model.dropout)" if from_model else "")
        self.p = {s: c.p0 for s, c in self.sites.items() if c.schedule == "validation"}
        t = state.recipe.train
        if self.p and t.eval_interval >= t.max_steps:
            raise ConfigError(f"{where}schedule: the validation rule reacts to evaluations during "
                              f"training, but train.eval_interval={t.eval_interval} ≥ "
                              f"train.max_steps={t.max_steps} gives none; lower train.eval_interval")
        last = max((at for at, _ in self.cfg.milestones), default=0)
        if self.cfg.milestones_in == "steps" and last > t.max_steps:
            raise ConfigError(f"{where}milestones: step {last:g} is beyond train.max_steps={t.max_steps}")

    def rates_at(self, t: int, T: int, n_blocks: int) -> Rates:
        """Every site's rate before step ``t`` of ``T`` (validation sites: the rule's current rate)."""
        base = {}
        for s, c in self.sites.items():
            milestones = [(at / T if c.milestones_in == "steps" else at, p) for at, p in c.milestones]
            base[s] = self.p[s] if s in self.p else dropout_at(c.schedule, t, T, c.p0, c.p_min, c.k, milestones)
        return site_rates(base, depth_multipliers(self.cfg.depth_profile, n_blocks, self.cfg.depth_ratio),
                          list(self.sites))

    @staticmethod
    def n_blocks(model) -> int:
        """Blocks the per-block rates run over: the model's blocks, or the blocks its sites name."""
        model = adapt(model)
        if model.supports("blocks"):
            return len(model.blocks)
        return 1 + max((b for blocks in model.dropout_sites().values() for b in blocks), default=0)

    def on_event(self, event: Event, state: State) -> None:
        if event is Event.FIT_START and self.absent and state.rank == 0:
            print(f"{self.name}: model {type(state.model).__name__} has no {', '.join(self.absent)} dropout "
                  f"site{'s' if len(self.absent) > 1 else ''}; scheduling {', '.join(self.sites)}", flush=True)
        if event is Event.STEP_START or (event is Event.FIT_START and self.rates is None):
            self.rates = self.rates_at(state.step, state.max_steps, self.n_blocks(state.model))
        if event in (Event.FIT_START, Event.STEP_START):  # FIT_START: also the resumed rates
            set_rates(state.model, self.rates)
            state.log(f"{self.name}/p", mean_rate(self.rates))
        elif event is Event.EVAL_END:
            self._log_sites(state)
            if self.p:
                self._validation_update(state.val_loss)

    def flop_key(self, state: State) -> tuple[bool, ...]:
        # SDPA runs a different kernel with attention dropout on (on CPU: the math path instead of
        # the fused one, which recomputes in backward), so its FLOPs are measured separately.
        return tuple(p > 0 for p in self.rates.get("attention", ()))

    def _validation_update(self, val_loss: float) -> None:
        direction, self.best, self.bad_evals = validation_decision(
            val_loss, self.best, self.bad_evals, self.cfg.epsilon, self.cfg.patience)
        for s, p in self.p.items():
            c = self.sites[s]
            # Rounded so that repeated ±delta lands exactly on 0 (where dropout is skipped).
            self.p[s] = min(c.p_max, max(c.p_min, round(p + direction * c.delta, 12)))

    def _log_sites(self, state: State) -> None:
        """The rates the last training step used, per site (and per block if depth-profiled)."""
        for site, r in self.rates.items():
            if site == "embedding":
                state.log(f"{self.name}/p/{site}", r)
                continue
            state.log(f"{self.name}/p/{site}", statistics.fmean(r))
            if self.cfg.depth_profile != "uniform":
                for i, p in enumerate(r):
                    state.log(f"{self.name}/p/{site}/{i}", p)

    def state_dict(self) -> dict:
        return {"rates": self.rates, "p": self.p, "best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict) -> None:
        self.rates, self.best, self.bad_evals = state["rates"], state["best"], state["bad_evals"]
        self.p = {s: state["p"].get(s, p) for s, p in self.p.items()}
