"""Dynamic dropout: schedule maths against independent formulas, every site really changes,
p = 0 does no dropout work, the validation rule, bad input, exact resume."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import leantrain.core.trainer as trainer_module
from leantrain import ConfigError, Event, Method, Recipe, Trainer
from leantrain.cli import main
from leantrain.core.evaluation import EvalResult
from leantrain.methods.dropout import (DynamicDropout, DynamicDropoutConfig, depth_multipliers, dropout_at,
                                       validation_decision)

from .conftest import read_metrics, tiny

T = 12  # the tiny recipe's max_steps


def recipe(model_dropout=0.1, train=None, **opts):
    return Recipe.from_dict(tiny(model={"dropout": model_dropout}, train=train or {},
                                 methods=[{"name": "dynamic_dropout", **opts}]))


def fit(r, out, methods=(), **kw):
    return Trainer(r, out, methods=list(methods), verbose=False, progress=False, **kw)


class Spy(Method):
    """Records, per training step, the model's dropout rates and how many dropout masks were drawn."""
    name = "spy"

    def __init__(self, counter=None):
        super().__init__()
        self.rates, self.masks, self.counter, self._start = [], [], counter, 0

    def on_event(self, event, state):
        if event is Event.STEP_START:
            self.rates.append(state.model.dropout_rates())
            self._start = self.counter.bernoulli if self.counter else 0
        elif event is Event.STEP_END and self.counter:
            self.masks.append(self.counter.bernoulli - self._start)


class CountBernoulli(TorchDispatchMode):
    """Counts dropout-mask draws (aten.bernoulli_), which every dropout with p > 0 dispatches."""
    bernoulli = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket is torch.ops.aten.bernoulli_:
            self.bernoulli += 1
        return func(*args, **(kwargs or {}))


# ------------------------------------------------------------------------------ the maths
@pytest.mark.parametrize("t", [0, 3, 6, 9, 11, 12])
def test_time_schedules_match_the_spec_formulas(t):
    p0, p_min, k = 0.3, 0.05, 2.0
    frac = t / T
    assert dropout_at("constant", t, T, p0, p_min) == p0
    assert dropout_at("linear", t, T, p0, p_min) == pytest.approx(p_min + (p0 - p_min) * (1 - frac))
    assert dropout_at("exponential", t, T, p0, p_min, k=k) == pytest.approx(max(p_min, p0 * math.e ** (-k * frac)))
    # cos² form of ½(1 + cos 2x): an independent way to write the cosine schedule
    assert dropout_at("cosine", t, T, p0, p_min) == pytest.approx(
        p_min + (p0 - p_min) * math.cos(math.pi * t / (2 * T)) ** 2)
    step = dropout_at("step", t, T, p0, milestones=[(0.25, 0.2), (0.75, 0.0)])
    assert step == {0: 0.3, 3: 0.2, 6: 0.2, 9: 0.0, 11: 0.0, 12: 0.0}[t]


def test_exponential_stops_at_the_floor_and_schedules_end_at_p_min():
    assert dropout_at("exponential", 12, 12, 0.3, 0.1, k=3.0) == 0.1  # 0.3·e⁻³ ≈ 0.015 < floor
    assert dropout_at("linear", 12, 12, 0.3, 0.0) == 0.0
    assert dropout_at("cosine", 12, 12, 0.3, 0.0) == 0.0
    with pytest.raises(ValueError):
        dropout_at("validation", 0, 12, 0.3)


def test_depth_profiles():
    assert depth_multipliers("uniform", 4) == [1, 1, 1, 1]
    assert depth_multipliers("linear", 4) == [0.25, 0.5, 0.75, 1.0]
    assert depth_multipliers("exponential", 4, ratio=0.5) == [0.125, 0.25, 0.5, 1.0]


def test_validation_rule_lowers_on_improvement_raises_after_patience():
    best, bad, out = None, 0, []
    for loss in [4.0, 3.0, 3.1, 3.05, 3.2, 2.9, 2.95]:
        d, best, bad = validation_decision(loss, best, bad, epsilon=0.0, patience=2)
        out.append(d)
    # first eval only sets best; improvement; 1st bad; 2nd bad → raise; bad (count restarted); better; bad
    assert out == [0, -1, 0, 1, 0, -1, 0] and best == 2.9
    # an improvement smaller than epsilon does not count
    assert validation_decision(2.95, 3.0, 0, epsilon=0.1, patience=1) == (1, 3.0, 0)


# ------------------------------------------------------------------------------ through the trainer
def steps_rates(tmp_path, r, counter=None):
    spy = Spy(counter)
    fit(r, tmp_path, [spy]).fit()
    return spy


@pytest.mark.parametrize("schedule, opts", [
    ("linear", {"p0": 0.3, "p_min": 0.05}),
    ("exponential", {"p0": 0.3, "p_min": 0.05, "k": 2.0}),
    ("cosine", {"p0": 0.3}),
    ("step", {"p0": 0.3, "milestones": [[3, 0.2], [9, 0.0]], "milestones_in": "steps"}),
])
def test_every_site_follows_the_schedule_each_step(tmp_path, schedule, opts):
    spy = steps_rates(tmp_path, recipe(schedule=schedule, **opts))
    milestones = [(0.25, 0.2), (0.75, 0.0)]
    for t, rates in enumerate(spy.rates):
        p = dropout_at(schedule, t, T, opts["p0"], opts.get("p_min", 0.0), opts.get("k", 3.0), milestones)
        assert rates == {"embedding": p, "attention": [p] * 4, "residual": [p] * 4, "mlp": [p] * 4}, t


def test_attention_probability_dropout_changes_during_training(tmp_path, monkeypatch):
    seen = []
    real = F.scaled_dot_product_attention

    def spy(*a, **kw):
        seen.append(kw["dropout_p"])
        return real(*a, **kw)
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    r = recipe(schedule="linear", p0=0.3, train={"eval_interval": 12, "eval_iters": 1})
    fit(r, tmp_path).fit()
    train_calls = seen[4:-4]  # 4 blocks: the step-0 and final evaluations pass 0 (eval mode)
    assert seen[:4] == seen[-4:] == [0.0] * 4
    assert train_calls == [pytest.approx(0.3 * (1 - t / T)) for t in range(T) for _ in range(4)]


def test_zero_rate_skips_the_dropout_work(tmp_path):
    counter = CountBernoulli()
    r = recipe(schedule="step", p0=0.2, milestones=[[0.5, 0.0]], train={"eval_interval": 12})
    with counter:
        spy = steps_rates(tmp_path, r, counter)
    # 1 embedding + 4 blocks × (attention, residual, mlp) masks per step while p > 0, none at p = 0
    assert spy.masks == [13] * 6 + [0] * 6


def test_steps_with_and_without_attention_dropout_are_measured_separately(tmp_path):
    # SDPA runs another kernel when dropout_p > 0, so the two step kinds get their own FLOP count
    r = recipe(schedule="step", p0=0.2, milestones=[[0.5, 0.0]], train={"eval_interval": 12})
    assert fit(r, tmp_path).fit()["step_shapes"] == 2
    assert fit(recipe(schedule="constant", p0=0.2), tmp_path / "constant").fit()["step_shapes"] == 1


def test_depth_profile_and_per_site_overrides(tmp_path):
    sites = {"attention": {"schedule": "constant", "p0": 0.1}, "embedding": {"p0": 0.0}}
    spy = steps_rates(tmp_path, recipe(schedule="linear", p0=0.4, depth_profile="linear", sites=sites))
    m = [0.25, 0.5, 0.75, 1.0]
    for t, rates in enumerate(spy.rates):
        p = 0.4 * (1 - t / T)
        assert rates["embedding"] == 0.0
        assert rates["attention"] == pytest.approx([0.1 * x for x in m])
        assert rates["residual"] == rates["mlp"] == pytest.approx([p * x for x in m])
    rows = [row for row in read_metrics(tmp_path) if "val_loss" in row]
    assert rows[-1]["dynamic_dropout/p/attention/3"] == 0.1
    assert rows[-1]["dynamic_dropout/p/mlp/0"] == pytest.approx(0.25 * 0.4 * (1 - 11 / T))


def test_p0_defaults_to_model_dropout_and_mean_rate_is_logged(tmp_path):
    spy = steps_rates(tmp_path, recipe(model_dropout=0.25, schedule="constant"))
    assert all(r["mlp"] == [0.25] * 4 and r["embedding"] == 0.25 for r in spy.rates)
    rows = read_metrics(tmp_path)
    assert all(row["dynamic_dropout/p"] == 0.25 for row in rows)
    assert rows[-1]["dynamic_dropout/p/attention"] == 0.25 and "dynamic_dropout/p/attention/0" not in rows[-1]


def test_validation_rule_in_the_trainer(tmp_path, monkeypatch):
    losses = iter([4.0, 3.0, 3.1, 3.2, 2.0])  # evaluations at steps 0, 3, 6, 9, 12
    monkeypatch.setattr(trainer_module, "evaluate",
                        lambda *args: EvalResult(loss=next(losses), loss_se=0.0, n=1))
    r = recipe(schedule="validation", p0=0.2, delta=0.05, p_max=0.28, train={"eval_interval": 3})
    spy = steps_rates(tmp_path, r)
    emb = [x["embedding"] for x in spy.rates]
    # steps 0-2: p0; after 3.0 (improved): 0.15; after 3.1: raised to 0.2; after 3.2: 0.25
    assert emb == [0.2] * 3 + [0.15] * 3 + [0.2] * 3 + [0.25] * 3
    rows = [row for row in read_metrics(tmp_path) if "val_loss" in row]
    assert [row["dynamic_dropout/p/embedding"] for row in rows] == [0.2, 0.2, 0.15, 0.2, 0.25]


def test_validation_rule_stays_within_bounds_and_reaches_exact_zero():
    method = DynamicDropout(DynamicDropoutConfig(schedule="validation", p0=0.1, delta=0.02, p_max=0.14))
    r = recipe(schedule="validation")
    state = Trainer(r, None, methods=[], verbose=False, progress=False).state
    method.check(state)
    method.on_event(Event.FIT_START, state)
    for loss in [10.0 - i for i in range(8)]:  # always improving: 0.1 → 0 in 5 decisions
        state.val_loss = loss
        method.on_event(Event.EVAL_END, state)
    assert method.p["attention"] == 0.0  # exactly: p = 0 skips dropout
    for _ in range(10):  # never improving (patience 1): up to the ceiling
        method.on_event(Event.EVAL_END, state)
    assert method.p["mlp"] == 0.14


# ------------------------------------------------------------------------------ resume
def test_resume_restores_rates_and_validation_state_exactly(tmp_path):
    def r():
        return recipe(schedule="validation", delta=0.05, depth_profile="exponential", train={"eval_interval": 2})
    full = fit(r(), tmp_path / "full")
    full.fit()
    part = fit(r(), tmp_path / "part")
    part.fit(until=5)
    saved = json.loads(json.dumps(part.methods[0].state_dict()))
    assert saved["best"] is not None and saved["p"]["mlp"] != 0.1  # the rule has acted
    resumed = fit(r(), tmp_path / "part", resume=tmp_path / "part")
    assert resumed.methods[0].state_dict() == saved
    resumed.dispatch(Event.FIT_START)
    assert resumed.state.model.dropout_rates() == saved["rates"]
    resumed.fit()
    assert resumed.methods[0].state_dict() == full.methods[0].state_dict()
    assert resumed.state.model.dropout_rates() == full.state.model.dropout_rates()


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("opts, message", [
    ({"p0": 1.0}, "methods.dynamic_dropout.p0: a dropout rate must be in [0, 1), got 1.0"),
    ({"p_max": -0.1}, "methods.dynamic_dropout.p_max: a dropout rate must be in [0, 1)"),
    ({"sites": {"mlp": {"p0": 1.5}}}, "methods.dynamic_dropout.sites.mlp.p0: a dropout rate must be in [0, 1)"),
    ({"p_min": 0.3, "p_max": 0.2}, "methods.dynamic_dropout.p_min: 0.3 exceeds p_max=0.2"),
    ({"p0": 0.4, "p_max": 0.3}, "p0: 0.4 is outside [p_min, p_max] = [0.0, 0.3]"),
    ({"sites": {"attention": {"p_min": 0.6}}},
     "methods.dynamic_dropout.sites.attention.p_min: 0.6 exceeds p_max=0.5"),
    ({"schedule": "cosin"}, "methods.dynamic_dropout.schedule: 'cosin' is not one of 'constant'"),
    ({"schedule": "cosin"}, "(did you mean 'cosine'?)"),
    ({"sites": {"attention": {"schedule": "exponentail"}}}, "(did you mean 'exponential'?)"),
    ({"sites": {"atention": {"p0": 0.1}}},
     "unknown config key 'methods.dynamic_dropout.sites.atention' "
     "(did you mean 'methods.dynamic_dropout.sites.attention'?)"),
    ({"depth_profile": "quadratic"}, "depth_profile: 'quadratic' is not one of"),
    ({"delta": -0.01}, "methods.dynamic_dropout.delta: must be ≥ 0, got -0.01"),
    ({"patience": -1}, "methods.dynamic_dropout.patience: must be ≥ 1, got -1"),
    ({"patience": 0}, "patience: must be ≥ 1"),
    ({"epsilon": -1.0}, "epsilon: must be ≥ 0"),
    ({"k": 0}, "k: must be positive"),
    ({"depth_ratio": 2.0}, "depth_ratio: must be in (0, 1]"),
    ({"schedule": "step"}, "milestones: the step schedule needs milestones"),
    ({"schedule": "step", "milestones": [[0.5, 0.1], [0.2, 0.0]]}, "`at` must increase strictly"),
    ({"schedule": "step", "milestones": [[1.5, 0.1]]}, "`at` must be a fraction in [0, 1]"),
    ({"schedule": "step", "milestones": [[0.5, 1.1]]}, "milestones[0]: a dropout rate must be in [0, 1)"),
    ({"schedule": "step", "milestones": [[2.5, 0.1]], "milestones_in": "steps"}, "`at` must be a step number"),
])
def test_bad_options_are_config_errors(opts, message):
    with pytest.raises(ConfigError) as e:
        recipe(**opts)
    assert message in str(e.value)


@pytest.mark.parametrize("model_dropout, opts, train, message", [
    (0.6, {}, {}, "methods.dynamic_dropout.p0: 0.6 (from model.dropout) is outside [p_min, p_max] = [0.0, 0.5]"),
    (0.1, {"sites": {"mlp": {"p_min": 0.2}}}, {},
     "methods.dynamic_dropout.sites.mlp.p0: 0.1 (from model.dropout) is outside"),
    (0.1, {"schedule": "validation"}, {"eval_interval": 12},
     "train.eval_interval=12 ≥ train.max_steps=12 gives none"),
    (0.1, {"sites": {"attention": {"schedule": "validation"}}}, {"eval_interval": 20},
     "lower train.eval_interval"),
    (0.1, {"schedule": "step", "milestones": [[20, 0.0]], "milestones_in": "steps"}, {},
     "milestones: step 20 is beyond train.max_steps=12"),
])
def test_bad_options_for_the_run_are_refused_before_training(tmp_path, model_dropout, opts, train, message):
    with pytest.raises(ConfigError) as e:
        fit(recipe(model_dropout, train, **opts), tmp_path / "out")
    assert message in str(e.value)
    assert not (tmp_path / "out").exists()


def test_config_made_in_python_is_validated_too(tmp_path):
    method = DynamicDropout(DynamicDropoutConfig(p_min=0.4, p_max=0.1))
    with pytest.raises(ConfigError, match="methods.dynamic_dropout.p_min: 0.4 exceeds p_max=0.1"):
        fit(Recipe.from_dict(tiny()), tmp_path / "out", [method])


def test_cli_bad_option_exits_2(capsys, tmp_path):
    code = main(["train", "--out", str(tmp_path / "o"), "--set", "methods=[{name: dynamic_dropout}]",
                 "methods.dynamic_dropout.schedule=validaton"])
    err = capsys.readouterr().err
    assert code == 2 and "did you mean 'validation'?" in err and len(err.strip().splitlines()) == 1

