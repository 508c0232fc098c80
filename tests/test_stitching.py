"""Stitched model families (SN-Net v1/v2, Learngene Pool): enumeration, forward vs export, accounting,
measured FLOPs, stitch inits, per-step sampling, distillation, Pareto reading, and every bad input."""
import dataclasses
import json
from collections import Counter

import pytest
import torch

from leantrain import ConfigError, LeantrainError, Recipe, Trainer
from leantrain.cli import sample_text
from leantrain.config import build, field_docs
from leantrain.core.trainer import build_optimizer
from leantrain.data import DataInfo
from leantrain.measure import analytic_gpt_flops, forward_flops
from leantrain.methods.stitching import (LearngeneDistillation, auxiliary_config, dominated, flops_bins,
                                         init_learned, init_least_squares, projection_stitch,
                                         learngene_pool, learngene_routes, least_squares, matched_blocks,
                                         pareto_front, pick_within_budget, sample_config, snnet_family,
                                         snnet_v1_routes, snnet_v2_routes, soft_cross_entropy,
                                         stitch_positions, window_positions)
from leantrain.methods.stitching.family import StitchedFamily
from leantrain.methods.stitching.stitch_init import block_inputs
from leantrain.models import StitchedGPT, StitchedGPTConfig
from leantrain.models.gpt import GPT, GPTConfig
from leantrain.recipe import TrainConfig
from leantrain.registry import get_model

from .conftest import tiny

V, T = 20, 8


def gpt(width, heads=2, layers=4, seed=0, **kw):
    torch.manual_seed(seed)
    return GPT(GPTConfig(n_layer=layers, n_head=heads, n_embd=width, block_size=T, vocab_size=V, **kw))


def tokens(batch=4, seed=1):
    return torch.randint(0, V, (batch, T), generator=torch.Generator().manual_seed(seed))


def v1_family():
    fam = snnet_family([gpt(32, seed=1), gpt(16, seed=2), gpt(48, 3, seed=3)])  # given out of order
    init_least_squares(fam, tokens(8))
    return fam


def v2_family(lora_rank=0):
    fam = snnet_family([gpt(16, seed=1), gpt(32, seed=2)], version="v2", lora_rank=lora_rank)
    init_least_squares(fam, tokens(8))
    return fam


def pool_family():
    fam = learngene_pool([gpt(16, seed=1), gpt(24, seed=2), gpt(32, seed=3)])
    init_least_squares(fam, tokens(8))
    return fam


FAMILIES = {"snnet_v1": v1_family, "snnet_v2": v2_family, "snnet_v2_lora": lambda: v2_family(4),
            "learngene": pool_family}


def train_one_step(fam, config_id, lr=0.05):
    """A plain SGD step through one configuration (moves LoRA factors off their zero init)."""
    fam.train()
    _, loss = fam.forward_config(tokens(), config_id, tokens(seed=2))
    loss.backward()
    with torch.no_grad():
        for p in fam.parameters():
            if p.grad is not None:
                p -= lr * p.grad
                p.grad = None


# ------------------------------------------------------------------------------- enumeration
def test_window_positions_are_snnets_34_for_12_blocks():
    pos = window_positions(12)
    assert len(pos) == 34 and len({(j, k) for j, k, _ in pos}) == 34
    assert {(j, k) for j, k, _ in pos} == {(j, k) for j in range(12) for k in range(12) if abs(j - k) <= 1}
    per_layer = Counter(layer for *_, layer in pos)
    assert sorted(per_layer) == list(range(11)) and per_layer[0] == 4 and set(list(per_layer.values())[1:]) == {3}
    for j, k, layer in pos:  # each layer serves the window of blocks (layer, layer + 1)
        assert {j, k} <= {layer, layer + 1}


def test_configuration_counts():
    assert len(snnet_v1_routes([192, 384, 768], [12] * 3)) == 3 + 2 * 34 == 71
    kinds = Counter(r.kind for r in snnet_v2_routes([384, 1024], [12, 12]))
    assert kinds == {"anchor": 2, "sl": 11, "ls": 11, "lsl": 55, "sls": 55}
    assert len(snnet_v2_routes([384, 1024], [12, 24])) == 134  # DeiT3-S + DeiT3-L: the reference's ≈135
    assert len(snnet_v2_routes([16, 32], [4, 4], kinds=["sl", "ls"])) == 2 + 3 + 3
    assert len(learngene_routes([16, 24, 32], [4, 4, 4])) == 3 + 3 * 10  # all small→large pairs
    assert len(learngene_routes([16, 24, 32], [4, 4, 4], pairs="nearest")) == 3 + 2 * 10


@pytest.mark.parametrize("depths", [(4, 4), (4, 8), (12, 24)])
def test_v2_routes_cover_one_full_depth_and_stitch_at_matching_blocks(depths):
    ds, dl = depths
    for r in snnet_v2_routes([16, 32], list(depths)):
        depth = {0: ds, 1: dl}
        assert sum((s.stop - s.start) / depth[s.stack] for s in r.segments) == pytest.approx(1.0)
        assert r.segments[0].start == 0 and r.segments[-1].stop == depth[r.segments[-1].stack]
        for a, b in zip(r.segments, r.segments[1:]):  # the next stack resumes where the last one left off
            assert a.stop / depth[a.stack] == b.start / depth[b.stack]
            assert min(a.stop - a.start, b.stop - b.start) > 0


def test_v1_route_semantics():
    routes = snnet_v1_routes([16, 32], [12, 12])
    r = routes[2 + 4]  # (j, k) = (1, 2), the first position of layer 1
    assert [(s.stack, s.start, s.stop) for s in r.segments] == [(0, 0, 2), (1, 2, 12)]
    assert r.stitches == ("0to1_1",)


# ------------------------------------------------------------------------------- the model family
@pytest.mark.parametrize("name", list(FAMILIES))
def test_exported_configuration_gives_the_same_logits_as_inside_the_family(name):
    fam = FAMILIES[name]()
    train_one_step(fam, fam.num_configs - 1)  # weights (and LoRA factors) no longer at their init
    fam.eval()
    idx = tokens(3, seed=5)
    for i in range(fam.num_configs):
        model = fam.materialize(i).eval()
        assert torch.equal(model(idx)[0], fam.forward_config(idx, i)[0]), f"configuration {i}"
        assert model.num_params(non_embedding=False) == fam.config_params(i)


def test_export_is_a_standalone_copy_rebuilt_from_its_config_alone():
    fam = v1_family().eval()
    i = 7
    model = fam.materialize(i)
    rebuilt = StitchedGPT(build(StitchedGPTConfig, dataclasses.asdict(model.config)))
    rebuilt.load_state_dict(model.state_dict())
    idx = tokens(2)
    assert torch.equal(rebuilt.eval()(idx)[0], fam.forward_config(idx, i)[0])
    with torch.no_grad():
        model.wte.weight.zero_()  # a copy: the family is untouched
    assert fam.stacks[0].wte.weight.abs().sum() > 0


def test_anchor_alone_reproduces_the_anchor_gpt_and_ties_its_head():
    anchor = gpt(32)
    fam = snnet_family([gpt(16), anchor])
    idx = tokens()
    model = fam.materialize(1).eval()
    assert model.config.tie_head and model.lm_head.weight is model.wte.weight
    assert torch.equal(model(idx)[0], anchor.eval()(idx)[0])
    assert fam.config_params(1) == anchor.num_params(non_embedding=False)
    assert not fam.materialize(2).config.tie_head  # starts in one stack, ends in another


def test_identical_anchors_stitched_at_the_same_place_reproduce_the_anchor():
    # Two copies of one GPT: least squares finds the identity at every place, so every route of
    # SN-Net v2 (stitches, three-part routes) computes the anchor itself.
    a = gpt(32)
    b = gpt(32)  # same seed: identical weights
    fam = snnet_family([a, b], version="v2")
    init_least_squares(fam, tokens(16))
    for layer in fam.stitches.values():
        assert torch.allclose(layer.weight, torch.eye(32), atol=1e-4) and layer.bias.abs().max() < 1e-4
    fam.eval()
    idx = tokens(3, seed=7)
    ref = a.eval()(idx)[0]
    for i in range(fam.num_configs):
        assert torch.allclose(fam.forward_config(idx, i)[0], ref, atol=1e-4), fam.describe(i)


def test_training_through_a_configuration_reaches_only_its_parameters():
    fam = v1_family().train()
    i = next(i for i, r in enumerate(fam.routes) if r.kind == "sl" and fam.describe(i) == "w16[0:2] > w32[2:4]")
    _, loss = fam.forward_config(tokens(), i, tokens(seed=2))
    loss.backward()
    small, mid, large = fam.stacks
    got = lambda m: any(p.grad is not None for p in m.parameters())  # noqa: E731
    assert all(got(b) for b in small.blocks[:2]) and not any(got(b) for b in small.blocks[2:])
    assert not any(got(b) for b in mid.blocks[:2]) and all(got(b) for b in mid.blocks[2:])
    assert got(small.wpe) and not got(small.ln_f) and got(mid.ln_f) and not got(mid.wpe)
    assert not got(large)
    used = fam.routes[i].stitches[0]
    assert [k for k, layer in fam.stitches.items() if got(layer)] == [used]


def test_forward_runs_the_active_configuration_and_keys_its_flops():
    fam = v1_family().eval()
    assert fam.describe(fam.active) == "w48[0:4]"  # the widest anchor until a step picks one
    fam.active = 5
    idx = tokens()
    assert torch.equal(fam(idx)[0], fam.forward_config(idx, 5)[0])
    key = fam.shape_key()
    fam.active = 6
    assert fam.shape_key() == ("stitched", 6) != key


def test_lora_stitch_freezes_the_least_squares_weight_and_trains_a_low_rank_update():
    fam = v2_family(lora_rank=4)
    layer = next(iter(fam.stitches.values()))
    ls_weight = layer.weight.clone()
    assert not layer.weight.requires_grad and layer.lora_b.abs().sum() == 0
    assert torch.equal(layer.merged_weight(), layer.weight)  # B = 0: starts at the least-squares stitch
    opt_params = {id(p) for g in build_optimizer(fam, TrainConfig()).param_groups for p in g["params"]}
    assert id(layer.weight) not in opt_params and {id(layer.lora_a), id(layer.lora_b), id(layer.bias)} <= opt_params
    key = next(iter(fam.stitches))
    i = next(i for i, r in enumerate(fam.routes) if r.stitches == (key,))
    train_one_step(fam, i)
    train_one_step(fam, i)
    assert torch.equal(layer.weight, ls_weight) and layer.lora_b.abs().sum() > 0  # B trained, W not
    with torch.no_grad():
        layer.lora_b.normal_()
    assert torch.allclose(layer.merged_weight() - layer.weight, layer.lora_b @ layer.lora_a / 4, atol=1e-6)
    stored = fam.stored_params()
    assert stored["stitches"] == sum(l.weight.numel() + l.bias.numel() + 4 * sum(l.weight.shape)
                                     for l in fam.stitches.values())


def test_parameter_accounting_shares_the_stacks_between_configurations():
    anchors = [gpt(16, seed=1), gpt(32, seed=2), gpt(48, 3, seed=3)]
    fam = snnet_family(anchors)
    stored = fam.stored_params()
    assert stored["stacks"] == sum(a.num_params(non_embedding=False) for a in anchors)
    assert stored["stitches"] == sum(16 * 32 + 32 for _ in range(3)) + sum(32 * 48 + 48 for _ in range(3))
    params = [fam.config_params(i) for i in range(fam.num_configs)]
    assert params[:3] == [a.num_params(non_embedding=False) for a in anchors]
    assert max(params) < stored["total"] < sum(params)  # stored once, served many times


def test_measured_inference_flops_match_an_independent_count():
    fam = v1_family()
    for a in fam.stacks:
        assert forward_flops(a, tokens(1)) == analytic_gpt_flops(4, a.config.n_embd, T, V, 1, train=False)
    for row in fam.table():
        r = fam.routes[row.id]
        widths = [fam.width(s.stack) for s in r.segments]
        expected = sum(analytic_gpt_flops(s.stop - s.start, w, T, V, 1, train=False) - 2 * T * w * V
                       for s, w in zip(r.segments, widths))
        expected += sum(2 * T * a * b for a, b in zip(widths, widths[1:])) + 2 * T * widths[-1] * V
        assert row.flops == expected, row


def test_flops_measurement_leaves_the_training_rng_alone():
    fam = v1_family()
    state = torch.get_rng_state()
    fam.config_flops(4, seq_len=5)
    fam.materialize(4)
    assert torch.equal(torch.get_rng_state(), state)


def test_spec_round_trip_rebuilds_the_same_family():
    fam = v2_family(lora_rank=2)
    train_one_step(fam, 9)
    spec = json.loads(json.dumps(fam.spec()))
    again = StitchedFamily.from_spec(spec)
    again.load_state_dict(fam.state_dict())
    assert [again.describe(i) for i in range(again.num_configs)] == [fam.describe(i) for i in range(fam.num_configs)]
    idx = tokens()
    for i in (0, 5, fam.num_configs - 1):
        assert torch.equal(again.eval().forward_config(idx, i)[0], fam.eval().forward_config(idx, i)[0])


# ------------------------------------------------------------------------------- stitch inits
def test_least_squares_recovers_a_known_linear_map_exactly():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 40, 8, generator=g, dtype=torch.float64)
    w, b = torch.randn(12, 8, generator=g, dtype=torch.float64), torch.randn(12, generator=g, dtype=torch.float64)
    w_hat, b_hat = least_squares(x, x @ w.T + b)
    assert torch.allclose(w_hat, w, atol=1e-10) and torch.allclose(b_hat, b, atol=1e-10)
    w32, b32 = least_squares(x.float(), (x @ w.T + b).float())
    assert w32.dtype == torch.float32 and torch.allclose(w32, w.float(), atol=1e-4)


def test_least_squares_init_averages_the_places_a_layer_serves():
    fam = snnet_family([gpt(16, seed=1), gpt(32, seed=2)])
    idx = tokens(8)
    init_least_squares(fam, idx)
    places = stitch_positions(fam)
    assert len(places["0to1_0"]) == 4 and len(places["0to1_1"]) == 3
    acts = [block_inputs(s, idx) for s in fam.stacks]
    # layer 1 serves (j, k) = (1, 2), (2, 1), (2, 2): front output of block j, end input of block k
    fits = [least_squares(acts[0][j + 1], acts[1][k]) for j, k in [(1, 2), (2, 1), (2, 2)]]
    w = torch.stack([f[0] for f in fits]).mean(0)
    assert torch.allclose(fam.stitches["0to1_1"].weight, w, atol=1e-6)
    # at k = 0 the target is the end anchor's embedding output (the block-0 input), not a block output
    assert (0, 1, 1, 0) in places["0to1_0"]


def test_learned_init_is_a_real_inverse_in_both_instances_own_bases():
    g = torch.Generator().manual_seed(0)
    # instances whose hidden states are exact affine images of the teacher's (what distillation aims at):
    # h_a = P_a·h_t + c_a (16 wide), h_b = P_b·h_t + c_b (32 wide: as wide as the teacher, another basis)
    p_a, p_b = torch.randn(16, 32, generator=g), torch.randn(32, 32, generator=g)
    c_a, c_b = torch.randn(16, generator=g), torch.randn(32, generator=g)
    h_t = torch.randn(50, 16, generator=g) @ p_a  # teacher states in P_a's row space: recoverable from h_a
    h_a, h_b = h_t @ p_a.T + c_a, h_t @ p_b.T + c_b
    w, b = projection_stitch([p_a, p_a], [p_b, p_b], [c_a, c_a], [c_b, c_b])
    torch.testing.assert_close(h_a @ w.T + b, h_b, atol=1e-3, rtol=1e-4)
    assert (h_a @ p_a + 0 - h_t).abs().max() > 1  # the old init (P̄ᵀ, bias 0) is no inverse
    # in a pool every stitch uses both ends' projections, the teacher-wide instance included
    proj = {0: [torch.randn(16, 32, generator=g) for _ in range(3)], 1: [torch.randn(24, 32, generator=g) for _ in range(3)],
            2: [torch.randn(32, 32, generator=g) for _ in range(3)]}
    fam = learngene_pool([gpt(16, seed=1), gpt(24, seed=2), gpt(32, seed=3)])
    init_learned(fam, proj)
    mean = {k: torch.stack(v).mean(0) for k, v in proj.items()}
    torch.testing.assert_close(fam.stitches["0to2_0"].weight, mean[2] @ torch.linalg.pinv(mean[0]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fam.stitches["1to2_2"].weight, mean[2] @ torch.linalg.pinv(mean[1]), atol=1e-4, rtol=1e-4)
    assert all(layer.bias.abs().sum() == 0 for layer in fam.stitches.values())  # no biases given: zero
    with pytest.raises(ConfigError, match="projections of w32"):
        init_learned(fam, {0: proj[0], 1: proj[1]})


# ------------------------------------------------------------------------------- sampling
def test_configuration_sampling_is_identical_across_ranks_and_on_resume():
    bins = [list(range(23))]
    def run(rank_seed, start, stop):
        torch.manual_seed(rank_seed)  # each rank's global RNG differs; the draw must not care
        torch.rand(rank_seed + 1)
        return [sample_config(bins, seed=3, step=s) for s in range(start, stop)]
    full = run(0, 0, 60)
    assert run(1, 0, 60) == full  # another rank
    assert run(2, 0, 25) + run(5, 25, 60) == full  # interrupted at step 25, resumed
    assert [sample_config(bins, seed=4, step=s) for s in range(60)] != full  # the seed matters


def test_uniform_sampling_covers_every_configuration_evenly():
    ids = list(range(23))
    counts = Counter(sample_config([ids], seed=0, step=s) for s in range(2300))
    assert set(counts) == set(ids) and min(counts.values()) > 60 and max(counts.values()) < 140


def test_flops_binned_sampling_picks_a_bin_uniformly_then_a_configuration():
    fam = v2_family()
    flops = [fam.config_flops(i) for i in range(fam.num_configs)]
    bins = flops_bins(flops, 3)
    assert 1 < len(bins) <= 3 and sorted(i for b in bins for i in b) == list(range(fam.num_configs))
    for lo, hi in zip(bins, bins[1:]):
        assert max(flops[i] for i in lo) < min(flops[i] for i in hi)
    which = {i: n for n, b in enumerate(bins) for i in b}
    counts = Counter(which[sample_config(bins, seed=0, step=s)] for s in range(1500))
    assert all(abs(c - 1500 / len(bins)) < 100 for c in counts.values())
    assert flops_bins([5, 5, 5], 4) == [[0, 1, 2]]
    assert flops_bins([0, 10, 1, 9], 2, ids=[0, 1, 2]) == [[0, 2], [1]]


# ------------------------------------------------------------------------------- Learngene distillation
def test_matched_blocks_follow_the_reference_thirds():
    assert matched_blocks(9, 12, 3) == [(2, 3), (5, 7), (8, 11)]
    assert matched_blocks(6, 12, 1) == [(5, 11)]


def test_distillation_projections_get_gradients_and_are_in_the_optimizer():
    teacher = gpt(32, 4, layers=4, seed=1)
    student = GPT(auxiliary_config(teacher.config, n_layer=3, n_embd=16, n_head=2))
    distil = LearngeneDistillation(student, teacher_width=32, teacher_blocks=4, points=3)
    opt_params = {id(p) for g in build_optimizer(distil, TrainConfig()).param_groups for p in g["params"]}
    projections = list(distil.hidden_proj.parameters()) + list(distil.attn_proj.parameters())
    assert {id(p) for p in projections} <= opt_params
    assert not {id(p) for p in teacher.parameters()} & opt_params
    _, loss = distil(tokens(), tokens(seed=2), teacher=teacher)
    parts = distil.parts
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projections)
    assert all(p.grad is None for p in teacher.parameters())
    expected = 0.1 * parts["ce"] + 0.9 * (parts["soft_ce"] + parts["hidden_mse"] + parts["attn_mse"])
    assert torch.allclose(loss.detach(), expected)
    assert parts["hidden_mse"] > 0 and parts["attn_mse"] > 0
    assert distil.stitch_projections()[0].shape == (16, 32)
    assert torch.equal(distil(tokens())[0], student(tokens())[0])


def test_soft_cross_entropy_is_the_cross_entropy_against_the_teachers_distribution():
    z, zt = torch.randn(2, 5, V), torch.randn(2, 5, V)
    assert torch.allclose(soft_cross_entropy(z, zt, temperature=2.0), soft_cross_entropy(z / 2, zt / 2))
    hard = torch.full_like(zt, -1e4).scatter(-1, zt.argmax(-1, keepdim=True), 0.0)  # one-hot teacher
    ce = torch.nn.functional.cross_entropy(z.reshape(-1, V), zt.argmax(-1).reshape(-1))
    assert torch.allclose(soft_cross_entropy(z, hard), ce)


# ------------------------------------------------------------------------------- Pareto, budget
def test_pareto_front_and_dominated_configurations():
    points = [(1, 3.0), (2, 2.5), (3, 2.7), (4, 2.0), (4, 2.2), (5, 2.0)]
    assert dominated(points) == [False, False, True, False, True, True]
    assert pareto_front(points) == [0, 1, 3]
    assert sum(dominated([(1, 1.0), (1, 1.0)])) == 0  # ties dominate nobody


def test_pick_within_budget():
    flops, params = [10, 20, 30, 40], [100, 200, 300, 400]
    assert pick_within_budget(flops, params, max_flops=30) == 2  # no losses: the costliest that fits
    assert pick_within_budget(flops, params, [2.0, 1.5, 1.7, 1.0], max_flops=30) == 1
    assert pick_within_budget(flops, params, max_params=250) == 1
    with pytest.raises(LeantrainError, match="no configuration fits --max-flops 5: the cheapest needs 10 FLOPs"):
        pick_within_budget(flops, params, max_flops=5)
    with pytest.raises(LeantrainError, match="--max-params 50: the smallest has 100"):
        pick_within_budget(flops, params, max_params=50)


# ------------------------------------------------------------------------------- the standalone model
def test_stitched_gpt_config_is_documented_and_validated():
    docs = field_docs(StitchedGPTConfig)
    assert all(docs.get(f.name) for f in dataclasses.fields(StitchedGPTConfig))
    cfg = build(StitchedGPTConfig, {"block_size": T})
    cfg.adapt_to_data(DataInfo(task="lm", vocab_size=V))
    assert cfg.vocab_size == V
    with pytest.raises(ConfigError, match="smaller than the data's"):
        build(StitchedGPTConfig, {"vocab_size": 5}).adapt_to_data(DataInfo(task="lm", vocab_size=V))
    for bad, msg in [({"n_head": [2]}, "n_head: has 1 entries for 2 segments"),
                     ({"n_embd": [30, 64], "n_head": [4, 4]}, r"n_embd\[0\]: 30 is not divisible"),
                     ({"n_layer": [2, 0]}, r"n_layer\[1\]: must be positive"),
                     ({"tie_head": True}, "tie_head: the first and last widths differ")]:
        with pytest.raises(ConfigError, match=msg):
            build(StitchedGPTConfig, bad, "model")


def test_a_stitched_gpt_trains_and_samples_through_the_ordinary_paths(tmp_path):
    assert get_model("stitched_gpt")[1] is StitchedGPTConfig
    recipe = Recipe.from_dict(tiny(model={"name": "stitched_gpt", "n_layer": [1, 1], "n_head": [2, 2],
                                          "n_embd": [16, 32], "block_size": 16},
                                   train={"max_steps": 3, "warmup_steps": 1, "eval_interval": 3}))
    Trainer(recipe, tmp_path / "run", verbose=False, progress=False).fit()
    assert len(sample_text(tmp_path / "run", "\n", tokens=5)) == 6


# ------------------------------------------------------------------------------- bad input
def test_bad_input_gives_one_line_errors():
    def one_line(exc_info):
        assert "\n" not in str(exc_info.value)
        return str(exc_info.value)

    with pytest.raises(ConfigError) as e:
        snnet_family([gpt(16, layers=3), gpt(32, layers=4)])
    assert one_line(e) == "SN-Net v1 stitches stacks of one depth: w16 has 3 blocks, w32 has 4"
    with pytest.raises(ConfigError, match="Learngene Pool stitches stacks of one depth") as e:
        learngene_pool([gpt(16, layers=3), gpt(32, layers=4)])
    snnet_family([gpt(16, layers=2), gpt(32, layers=4)], version="v2")  # v2 allows a multiple depth
    with pytest.raises(ConfigError, match="multiple of the smaller's: w32 has 3 blocks, w16 has 2") as e:
        snnet_family([gpt(16, layers=2), gpt(32, layers=3)], version="v2")
    one_line(e)
    other_vocab = GPT(GPTConfig(n_layer=4, n_head=2, n_embd=32, block_size=T, vocab_size=V + 1))
    with pytest.raises(ConfigError) as e:
        snnet_family([gpt(16), other_vocab], labels=["tiny", "big"])
    assert one_line(e) == "stitched stacks must share one vocabulary: tiny has vocab_size=20, big has vocab_size=21"
    with pytest.raises(ConfigError, match="unknown SN-Net v2 route kind 'lls'"):
        snnet_family([gpt(16), gpt(32)], version="v2", v2_kinds=["sl", "lls"])
    with pytest.raises(ConfigError, match="unknown SN-Net version 'v3'"):
        snnet_family([gpt(16), gpt(32)], version="v3")
    fam = snnet_family([gpt(16), gpt(32)])
    for bad in (fam.num_configs, -1):
        with pytest.raises(LeantrainError) as e:
            fam.materialize(bad)
        assert one_line(e) == (f"configuration id {bad} is out of range: the family has {fam.num_configs} "
                               f"configurations (0..{fam.num_configs - 1})")
    ancestry = GPTConfig(n_layer=4, n_head=2, n_embd=32, block_size=T, vocab_size=V)
    with pytest.raises(ConfigError) as e:
        auxiliary_config(ancestry, n_layer=3, n_embd=48, n_head=2)
    assert one_line(e) == "the ancestry (n_embd=32) is narrower than its auxiliary model (n_embd=48)"
    with pytest.raises(ConfigError, match="shallower than its auxiliary model"):
        auxiliary_config(ancestry, n_layer=5, n_embd=16, n_head=2)
    with pytest.raises(ConfigError, match="narrower than its auxiliary model"):
        LearngeneDistillation(gpt(48, 3), teacher_width=32, teacher_blocks=4)
    with pytest.raises(ConfigError, match=r"distillation points must be in \[1, 4\]"):
        LearngeneDistillation(gpt(16), teacher_width=32, teacher_blocks=4, points=5)
