"""RaPTr (depth and width), stochastic depth, PLD and gradual stacking: the maths, the measured
FLOPs, the optimizer behaviour, DDP masks and every bad input."""
import json
import statistics

import pytest
import torch

from leantrain import ConfigError, Event, Method, Recipe, Trainer
from leantrain.cli import main
from leantrain.config import build
from leantrain.core import checkpoint
from leantrain.data import TextTask, fixed_batches
from leantrain.measure import analytic_gpt_flops, count_step
from leantrain.methods.progressive import (RaPTr, RaPTrConfig, Stacking, Stage, block_cost,
                                           depth_keep_probs, layer_drop_plan, pld_theta, sample_path,
                                           sample_plan, stack_blocks, stage_ends, step_generator)
from leantrain.models.gpt import GPT, GPTConfig
from leantrain.registry import get_method

from .conftest import read_metrics, tiny
from .test_ddp import ROOT, torchrun

V = 40


def fit(recipe_dict, out, methods=(), until=None):
    trainer = Trainer(Recipe.from_dict(recipe_dict), out, methods=list(methods), verbose=False, progress=False)
    return trainer.fit(until=until)


def raptr(*stages, **options):
    """A raptr recipe entry; stages as (length, path_len) or (length, path_len, width)."""
    return {"name": "raptr", **options,
            "stages": [{"length": s[0], "path_len": s[1], "width": s[2] if len(s) > 2 else 1.0} for s in stages]}


class Probe(Method):
    """Listed after the method under test; calls ``fn(event, state)`` at every event."""
    name = "probe"

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def on_event(self, event, state):
        self.fn(event, state)


# ------------------------------------------------------------------------------- sampling maths
def test_fixed_count_runs_exactly_path_len_blocks_including_the_fixed_ones():
    fixed = [0, 11]
    for step in range(200):
        path = sample_path(12, fixed, keep_prob=0.6, sampling="fixed_count", generator=step_generator(0, step, "t"))
        assert len(path) == 8 and {0, 11} <= set(path) and path == sorted(set(path))


@pytest.mark.parametrize("sampling", ["bernoulli", "fixed_count"])
def test_expected_path_length_and_inclusion_probabilities(sampling):
    # keep_prob 0.55 on 10 free blocks: expected count 5.5 (fixed_count rounds up half the time).
    paths = [sample_path(12, [0, 11], 0.55, sampling, step_generator(1, s, "t")) for s in range(4000)]
    lengths = [len(p) for p in paths]
    assert statistics.mean(lengths) == pytest.approx(2 + 5.5, abs=0.08)
    if sampling == "fixed_count":
        assert set(lengths) == {7, 8}
    for block in range(1, 11):
        assert sum(block in p for p in paths) / len(paths) == pytest.approx(0.55, abs=0.04)


def test_mask_depends_only_on_seed_and_step():
    def plan(seed, step):
        torch.manual_seed(step * 7 + 3)  # the global RNG must not matter
        return sample_path(12, [0, 11], 0.5, "bernoulli", step_generator(seed, step, "raptr"))
    assert plan(5, 17) == plan(5, 17)
    assert len({tuple(plan(5, s)) for s in range(20)}) > 5
    assert [plan(5, s) for s in range(20)] != [plan(6, s) for s in range(20)]


@pytest.mark.parametrize("rule, factor", [("none", 1.0), ("inverse_p", 4.0), ("sqrt_inverse_p", 2.0)])
def test_scale_rules_apply_to_run_non_fixed_blocks_only(rule, factor):
    plans = [sample_plan(8, 4, 128, [0, 7], 0.25, 0.5, sampling="bernoulli", scale=rule, width_rescale=True,
                         generator=step_generator(0, s, "t")) for s in range(30)]
    for plan in plans:
        for bp in plan:
            assert bp.scale == (1.0 if bp.index in (0, 7) else factor)
            assert bp.width_scale == 2.0 and len(bp.heads) == 2 and len(bp.hidden) == 64
    no_rescale = sample_plan(8, 4, 128, [0, 7], 1.0, 0.5, sampling="bernoulli", scale=rule, width_rescale=False,
                             generator=step_generator(0, 0, "t"))
    assert all(bp.width_scale == 1.0 for bp in no_rescale)


def test_stages_without_a_length_share_the_rest_equally():
    cfg = build(RaPTrConfig, {"stages": [{"length": 0.4, "path_len": 2}, {"path_len": 3}, {"path_len": 4}]})
    assert RaPTr(cfg).lengths() == pytest.approx([0.4, 0.3, 0.3])
    assert RaPTr(cfg).stage_ends(100) == [0, 40, 70, 100]
    assert RaPTr().lengths() == [0.25] * 4


def test_stage_ends_round_cumulatively_and_end_exactly():
    assert stage_ends([0.25] * 4, 12) == [3, 6, 9, 12]
    assert stage_ends([1 / 3] * 3, 100, start=10) == [43, 77, 110]


# ------------------------------------------------------------------------------- measured FLOPs
def step_flops(model, x):
    def fn():
        loss = model(x, x)[1]
        loss.backward()
    return count_step(fn, model.parameters())[0]


@pytest.mark.parametrize("sampling", ["bernoulli", "fixed_count"])
@pytest.mark.parametrize("width", [1.0, 0.5])
def test_step_flops_are_path_length_fraction_of_block_flops(sampling, width):
    L, C, H, T, B = 6, 64, 4, 16, 2
    model = GPT(GPTConfig(n_layer=L, n_head=H, n_embd=C, block_size=T, vocab_size=V)).train()
    x = torch.randint(0, V, (B, T))
    full = step_flops(model, x)
    head = analytic_gpt_flops(0, C, T, V, B)  # embedding + LM head (independent formula)
    for step in range(4):
        model.plan = sample_plan(L, H, 4 * C, [0, L - 1], 0.5, width, sampling=sampling, scale="inverse_p",
                                 width_rescale=True, generator=step_generator(0, step, "t"))
        m = len(model.plan)
        expected = head + (full - head) * m / L * width
        assert step_flops(model, x) == pytest.approx(expected, rel=0.03)
    assert block_cost(C, H, T, width) == pytest.approx(width, rel=1e-9)


def test_expected_flop_fraction_of_the_papers_schedules():
    cfg = GPTConfig(n_layer=12, n_head=4, n_embd=64, block_size=64)
    assert RaPTr().expected_block_fraction(cfg, 1000) == pytest.approx(0.75)  # 6-8-10-12 of 12
    assert Stacking().expected_block_fraction(cfg, 1200) == pytest.approx(0.75)  # 6-9-12 of 12


@pytest.mark.parametrize("entry, fraction", [
    (raptr((0.25, 2), (0.25, 3), (0.5, 4), sampling="fixed_count"), 13 / 16),  # 3·2 + 3·3 + 6·4 of 12·4
    (raptr((0.5, 4, 0.5), (0.5, 4)), 0.75),  # 6 steps at half width (1 of 2 heads, 64 of 128 units)
    ({"name": "stacking", "depths": [2, 3, 4], "lengths": [0.25, 0.25, 0.5]}, 13 / 16),
], ids=["raptr_depth", "raptr_width", "stacking"])
def test_expected_flop_fraction_matches_a_measured_run(tmp_path, entry, fraction):
    s = fit(tiny(methods=[entry]), tmp_path / "method")
    full = fit(tiny(), tmp_path / "full")
    vocab = TextTask(Recipe.from_dict(tiny()).data).vocab_size
    head = 12 * analytic_gpt_flops(0, 32, 16, vocab, 4)
    measured = (s["train_flops"] - head) / (full["train_flops"] - head)
    name, cfg = Recipe.from_dict(tiny(methods=[entry])).methods[0]
    assert measured == pytest.approx(fraction)
    method = get_method(name)(cfg)
    assert method.expected_block_fraction(Recipe.from_dict(tiny()).model, 12) == pytest.approx(fraction)


# ------------------------------------------------------------------------------- RaPTr in training
def test_raptr_prints_and_logs_its_schedule(tmp_path, capsys):
    entry = raptr((0.25, 2), (0.25, 3), (0.5, 4), sampling="fixed_count", warmup=0.25)
    Trainer(Recipe.from_dict(tiny(train={"log_interval": 1}, methods=[entry])), tmp_path, progress=False).fit()
    assert "expected FLOP fraction of the blocks 0.875" in capsys.readouterr().out  # (3·4+2·2+2·3+5·4)/48
    rows = [r for r in read_metrics(tmp_path) if r["step"] > 0]
    assert [r["raptr/stage"] for r in rows] == [0] * 3 + [1] * 2 + [2] * 2 + [3] * 5
    assert [r["raptr/path_len"] for r in rows] == [4] * 3 + [2] * 2 + [3] * 2 + [4] * 5


def test_raptr_evaluates_the_full_model_and_clears_the_plan(tmp_path):
    entry = raptr((1.0, 2), allow_partial_final=True)
    plans = []
    probe = Probe(lambda e, s: plans.append(s.model.plan) if e is Event.EVAL_START else None)
    trainer = Trainer(Recipe.from_dict(tiny(methods=[entry])), tmp_path, methods=[probe], verbose=False,
                      progress=False)
    s = trainer.fit()
    assert trainer.state.model.plan is None  # cleared at FIT_END
    assert plans[-1] is not None  # a 2-block plan is set during evaluation, yet:
    ckpt = checkpoint.load(tmp_path)
    recipe = Recipe.from_dict(ckpt.meta["recipe"])
    model = GPT(recipe.model).eval()
    checkpoint.load_model_tensors(model, ckpt.model, ckpt.path)
    batches = fixed_batches(TextTask(recipe.data).val, 16, 4, recipe.train.eval_iters, recipe.data.val_seed)
    with torch.no_grad():
        full = sum(model(x, y)[1].item() for x, y in batches) / len(batches)
    assert s["final_val_loss"] == pytest.approx(full, abs=1e-6)


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_skipped_in_optimizer(tmp_path, freeze):
    # Blocks 1 and 2 are never run; weight decay is on (0.1).
    entry = raptr((1.0, 2), allow_partial_final=True, freeze_skipped_in_optimizer=freeze)
    trainer = Trainer(Recipe.from_dict(tiny(train={"max_steps": 3}, methods=[entry])), tmp_path,
                      verbose=False, progress=False)
    model = trainer.state.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.fit()
    after = dict(model.named_parameters())
    skipped = [n for n in before if n.startswith(("blocks.1.", "blocks.2."))]
    run = [n for n in before if n.startswith(("blocks.0.", "blocks.3."))]
    assert all(not torch.equal(before[n], after[n]) for n in run)
    assert all((after[n] in trainer.state.optimizer.state) != freeze for n in skipped)
    decayed = [n for n in skipped if after[n].dim() >= 2]  # zero gradients: only weight decay moves them
    assert decayed and all(torch.equal(before[n], after[n]) == freeze for n in decayed)


# ------------------------------------------------------------------------------- baselines
@pytest.mark.parametrize("freeze", [True, False])
def test_width_dropped_heads_and_units_untouched_when_frozen(tmp_path, freeze):
    # All 4 blocks run at half width (1 of 2 heads, 64 of 128 MLP units); bias on, weight decay 0.1.
    entry = raptr((1.0, 4, 0.5), freeze_skipped_in_optimizer=freeze, allow_partial_final=True)
    checked = []

    def probe(event, state):
        model, opt = state.model, state.optimizer
        if event is Event.AFTER_BACKWARD:
            slices = model.width_unused_slices()
            assert len(slices) == 4 * 6  # per block: q/k/v rows + bias, attn proj cols, fc rows + bias, mlp proj cols
            for p, dim, idx in slices:
                # Independent reference: the left-out rows/columns are exactly those with zero gradient.
                # (Key-bias rows are the exception: softmax is invariant to them, so their gradient is
                # zero up to rounding and can be exactly zero for kept heads too.)
                nonzero = (p.grad != 0).movedim(dim, 0).reshape(p.shape[dim], -1).sum(1)
                zero = set((nonzero == 0).nonzero().flatten().tolist())
                if p.dim() == 1 and p.numel() == 3 * 32:  # c_attn.bias: drop the key rows from the check
                    zero -= set(range(32, 64)) - set(idx.tolist())
                assert sorted(zero) == idx.tolist()
            probe.saved = [(t, dim, idx, t.index_select(dim, idx).clone()) for p, dim, idx in slices
                           for t in [p] + [v for v in opt.state.get(p, {}).values() if torch.is_tensor(v) and v.dim()]]
        elif event is Event.STEP_START and getattr(probe, "saved", None):  # after the previous step's update
            same = [torch.equal(t.index_select(dim, idx), v) for t, dim, idx, v in probe.saved]
            checked.append(all(same) if freeze else not any(same[:1]))
            probe.saved = None

    fit(tiny(model={"bias": True}, train={"max_steps": 4}, methods=[entry]), tmp_path, [Probe(probe)])
    assert checked == [True, True, True]


def test_stochastic_depth_keep_probs_and_drop_path_scaling():
    assert depth_keep_probs(4, 0.5) == [0.875, 0.75, 0.625, 0.5]
    assert depth_keep_probs(3, 0.8, "uniform") == [0.8] * 3
    probs = depth_keep_probs(4, 0.5)
    plans = [layer_drop_plan(probs, step_generator(0, s, "sd")) for s in range(4000)]
    for i, p in enumerate(probs):
        kept = [bp for plan in plans for bp in plan if bp.index == i]
        assert len(kept) / len(plans) == pytest.approx(p, abs=0.03)
        assert all(bp.scale == 1 / p for bp in kept)


def test_pld_theta_and_per_block_keep_probs(tmp_path):
    assert pld_theta(0, 0.5, 0.001) == 1.0
    assert pld_theta(1000, 0.5, 0.001) == pytest.approx(0.5 + 0.5 / 2.718281828, rel=1e-6)
    assert pld_theta(10**6, 0.5, 0.001) == pytest.approx(0.5)
    trainer = Trainer(Recipe.from_dict(tiny(train={"log_interval": 1}, methods=[{"name": "pld", "gamma": 0.2}])),
                      tmp_path, verbose=False, progress=False)
    trainer.fit()
    assert trainer.state.model.plan is None
    rows = [r for r in read_metrics(tmp_path) if r["step"] > 0]
    # θ is logged for the step the row closes (step − 1 in 0-based steps about to run).
    assert [r["pld/theta"] for r in rows] == pytest.approx([pld_theta(r["step"] - 1, 0.5, 0.2) for r in rows])
    assert all(1 <= r["pld/path_len"] <= 4 for r in rows)


# ------------------------------------------------------------------------------- stacking
def test_stack_blocks_copy_top_and_interleave():
    def model(n):
        return GPT(GPTConfig(n_layer=n, n_head=2, n_embd=16, block_size=8, vocab_size=V))

    def weights(m):
        return [b.mlp.c_fc.weight for b in m.blocks]

    m = model(3)
    orig = weights(m)
    assert stack_blocks(m, 6, "copy_top") == {3: 0, 4: 1, 5: 2}  # StackBERT: block i into slot i+L
    w = weights(m)
    assert w[:3] == orig and all(torch.equal(w[i + 3], orig[i]) and w[i + 3] is not orig[i] for i in range(3))
    m = model(6)
    orig = weights(m)
    assert stack_blocks(m, 9, "copy_top") == {6: 3, 7: 4, 8: 5}  # gradual: copies of the top 3
    m = model(6)
    orig = weights(m)
    assert stack_blocks(m, 9, "interleave") == {2: 1, 5: 3, 8: 5}
    assert [w is o for w, o in zip(weights(m), [orig[i] for i in (0, 1, 1, 2, 3, 3, 4, 5, 5)])] == \
        [True, True, False, True, True, False, True, True, False]
    with pytest.raises(Exception, match="cannot shrink"):
        stack_blocks(m, 4, "copy_top")


@pytest.mark.parametrize("optimizer_state", ["reset", "copy"])
def test_stacking_grows_at_stage_boundaries(tmp_path, optimizer_state):
    events = {}

    def probe(event, state):
        if event is Event.STEP_START:
            events.setdefault(state.step, {})["depth"] = len(state.model.blocks)
            if state.step == 6:  # just grown 3 → 4 blocks: block 3 copies block 2
                events[6]["copied"] = all(torch.equal(a, b) for a, b in zip(
                    state.model.blocks[3].parameters(), state.model.blocks[2].parameters()))
        elif event is Event.AFTER_BACKWARD and state.step == 6:
            opt = state.optimizer
            new, src = state.model.blocks[3].mlp.c_fc.weight, state.model.blocks[2].mlp.c_fc.weight
            events[6]["state"] = (opt.state[new]["exp_avg"].clone() if new in opt.state else None,
                                  opt.state[src]["exp_avg"].clone())

    entry = {"name": "stacking", "depths": [2, 3, 4], "lengths": [0.25, 0.25, 0.5],
             "optimizer_state": optimizer_state}
    s = fit(tiny(methods=[entry]), tmp_path, [Probe(probe)])
    assert [events[t]["depth"] for t in range(12)] == [2] * 3 + [3] * 3 + [4] * 6
    assert events[6]["copied"]
    new_state, src_state = events[6]["state"]
    assert new_state is None if optimizer_state == "reset" else torch.equal(new_state, src_state)
    assert s["step_shapes"] == 3


# ------------------------------------------------------------------------------- bad input
BAD = [
    (raptr((0.5, 2), (0.3, 4)), "must sum to 1"),
    ({"name": "raptr", "stages": [{"length": 1.0, "path_len": 2}, {"path_len": 4}]}, "leaving nothing"),
    (raptr((0.5, 5), (0.5, 4)), "outside \\[2 fixed blocks, 4 blocks\\]"),
    (raptr((0.5, 1), (0.5, 4)), "outside \\[2 fixed blocks"),
    ({"name": "raptr", "stages": [{"length": 1.0, "keep_prob": 0.0}]}, "keep_prob: must be in \\(0, 1\\]"),
    ({"name": "raptr", "stages": [{"length": 1.0, "keep_prob": 1.5}]}, "keep_prob: must be in \\(0, 1\\]"),
    ({"name": "raptr", "stages": [{"length": 1.0}]}, "exactly one of path_len and keep_prob"),
    ({"name": "raptr", "stages": [{"length": 1.0, "path_len": 4, "keep_prob": 1.0}]}, "exactly one"),
    ({"name": "raptr", "stages": [{"length": 1.0, "keep_prob": 0.5}]}, "final stage must train the full"),
    (raptr((0.5, 2), (0.5, 3)), "final stage must train the full model \\(path_len 4\\)"),
    (raptr((0.5, 2), (0.5, 4, 0.5)), "final stage must train the full"),
    (raptr((1.0, 4, 0.0)), "width: must be in \\(0, 1\\]"),
    (raptr((0.5, 2), (0.5, 4), fixed=[0, 4]), "block 4 does not exist"),
    (raptr((0.5, 2), (0.5, 4), fixed=[0, -4]), "names a block twice"),
    (raptr((0.5, 2), (0.5, 4), warmup=1.0), "warmup: must be in \\[0, 1\\)"),
    (raptr((0.01, 2), (0.99, 4)), "stages\\[0\\] gets no steps"),
    ({"name": "stacking", "depths": [3, 2, 4]}, "stacking cannot remove blocks"),
    ({"name": "stacking", "depths": [2, 3]}, "last depth must be the model's n_layer=4"),
    ({"name": "stacking", "depths": [2, 4], "lengths": [1.0]}, "gives 1 stages but depths gives 2"),
    ({"name": "stochastic_depth", "drop_rate": 1.0}, "drop_rate: must be in \\[0, 1\\)"),
    ({"name": "pld", "theta_bar": 0.0}, "theta_bar: must be in \\(0, 1\\]"),
]


@pytest.mark.parametrize("entry, message", BAD, ids=[f"{e['name']}-{i}" for i, (e, _) in enumerate(BAD)])
def test_bad_input_is_a_config_error(tmp_path, entry, message):
    with pytest.raises(ConfigError, match=message):
        fit(tiny(methods=[entry]), tmp_path)
    assert not (tmp_path / "config.json").exists()


def test_python_made_configs_are_validated_too(tmp_path):
    cfg = RaPTrConfig(stages=[Stage(length=0.5, path_len=2)])
    with pytest.raises(ConfigError, match="methods.raptr.stages: stage lengths must sum to 1"):
        fit(tiny(), tmp_path, [RaPTr(cfg)])


def test_allow_partial_final(tmp_path):
    fit(tiny(methods=[raptr((0.5, 2), (0.5, 3), allow_partial_final=True)]), tmp_path)


@pytest.mark.parametrize("second", ["stochastic_depth", "pld", "stacking"])
def test_two_depth_methods_cannot_be_combined(tmp_path, second):
    with pytest.raises(ConfigError, match="cannot be combined \\(both are depth methods\\)"):
        fit(tiny(methods=[{"name": "raptr"}, {"name": second}]), tmp_path)


def test_cli_exits_2_on_bad_raptr_options(capsys, tmp_path):
    code = main(["train", "--out", str(tmp_path / "run"), "--set", "model.n_layer=4",
                 "methods=[{name: raptr, fixed: [0, 9]}]"])
    assert code == 2 and "block 9 does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------------------- DDP
@pytest.mark.slow
@pytest.mark.parametrize("entry", [raptr((0.5, 3), (0.5, 4), sampling="bernoulli"),
                                   {"name": "stochastic_depth", "drop_rate": 0.5}],
                         ids=["raptr", "stochastic_depth"])
def test_same_mask_on_every_rank_under_torchrun(tmp_path, entry):
    torchrun(ROOT / "tests" / "ddp_progressive_worker.py", tmp_path, json.dumps(entry))
    rank0, rank1 = (json.loads((tmp_path / f"plans_rank{r}.json").read_text()) for r in (0, 1))
    assert len(rank0) == 12 and rank0 == rank1
    paths = [tuple(i for i, _ in plan) for plan in rank0[:6]]
    assert len(set(paths)) > 1  # the mask really changes from step to step
    assert json.loads((tmp_path / "summary.json").read_text())["world_size"] == 2


# ------------------------------------------------------------------------------- the benchmark's matching
def test_bench_depth_jobs_are_valid_and_flop_matched():
    from leantrain.bench.depth import make_jobs, model_config
    jobs, facts = make_jobs("quick", 1)
    assert facts["block_fraction"] == pytest.approx(0.75) and facts["boundaries"] == [100, 200, 300]
    for job in jobs:
        recipe = Recipe.from_dict(job.recipe)  # every job's recipe is valid
        if job.method in ("stochastic_depth", "pld", "stacking"):
            name, cfg = recipe.methods[0]
            fraction = get_method(name)(cfg).expected_block_fraction(model_config(), facts["steps"])
            assert fraction == pytest.approx(0.75, abs=1e-3), job.method
    short = next(j for j in jobs if j.method == "baseline_short").recipe["train"]["max_steps"]
    assert short == facts["short_steps"] and 0.75 * 400 < short < 0.76 * 400  # head FLOPs add a little
