"""Local learning: gradient isolation (proved with autograd and hooks), K = 1 is end-to-end
bit-exactly, ContSup's contexts, AugLocal's formulas, memory-balanced cuts, exact resume for every
variant, DDP equivalence, inference cost, and one-line errors for bad options."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from leantrain import ConfigError, Recipe, Trainer
from leantrain.methods.local import (auglocal_layers, balanced_cuts, equal_cuts, pyramidal_depth,
                                     supcon_loss)

from .conftest import read_metrics, tiny

ROOT = Path(__file__).resolve().parents[1]
DATA = {"name": "mnist1d", "num_samples": 400, "augment": True}
RESNET = {"name": "resnet", "depth": 14, "width": 0.5}  # 7 cuttable units (stem + 6 blocks), then the head
TRAIN = {"max_steps": 8, "batch_size": 16, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "warmup_steps": 1,
         "eval_interval": 4, "log_interval": 1, "grad_clip": 1.0}


def recipe(local=None, model=RESNET, data=DATA, **train):
    methods = [{"name": "local", **local}] if local is not None else []
    return Recipe.from_dict({"data": data, "model": model, "train": {**TRAIN, **train}, "methods": methods})


def trainer(r, out=None, **kw):
    return Trainer(r, out, verbose=False, progress=False, **kw)


def modules_and_losses(t, x, y):
    """Run the modules of a trained LocalModel like a training step, keeping every module's loss."""
    lm, method = t.state.model, t.strategy
    h, inputs, memo, losses = x, [x], {}, []
    for k in range(lm.n_modules):
        out = lm.run_module(k, h, memo)
        last = k == lm.n_modules - 1
        losses.append(F.cross_entropy(out, y) if last else method.local_loss(lm, k, out, x, y))
        if not last:
            h = lm.supply(k, out, x, inputs, memo)
            inputs.append(h.detach())
    return lm, losses


@pytest.mark.parametrize("local", [{"variant": "greedy", "modules": 4}, {"variant": "contsup", "modules": 4,
                                   "context": "R2E"}, {"variant": "infopro", "modules": 3},
                                   {"variant": "auglocal", "modules": 4}, {"variant": "dgl", "modules": 2}])
def test_no_gradient_crosses_a_module_boundary(local):
    t = trainer(recipe(local))
    x, y = t.sampler.next()
    lm, losses = modules_and_losses(t, x, y)
    named = dict(lm.named_parameters())
    for k, loss in enumerate(losses):
        mine = {id(p) for p in lm.module_parameters(k)}
        grads = torch.autograd.grad(loss, list(named.values()), allow_unused=True, retain_graph=True)
        reached = {n for (n, p), g in zip(named.items(), grads) if g is not None and g.abs().sum() > 0}
        assert reached, f"module {k}'s loss reaches no parameter"
        assert all(id(named[n]) in mine for n in reached), f"module {k} reaches {sorted(reached)[:3]}"
        if k > 0 and "context" in local:  # ContSup: this module's encoders are trained by its loss
            assert any(n.startswith(f"contexts.{k - 1}.") for n in reached)
    # and in the real step, every parameter receives exactly one gradient (from its own module)
    counts = {n: 0 for n in named}
    hooks = [p.register_hook(lambda g, n=n: counts.__setitem__(n, counts[n] + 1)) for n, p in named.items()]
    t.train_step()
    for h in hooks:
        h.remove()
    assert set(counts.values()) == {1}


def test_one_module_is_end_to_end_training_bit_exactly(tmp_path):
    e2e = trainer(recipe(), tmp_path / "e2e")
    e2e.fit()
    k1 = trainer(recipe({"variant": "greedy", "modules": 1}), tmp_path / "k1")
    k1.fit()
    for key in ("train_loss", "val_loss", "val_error"):
        assert [r.get(key) for r in read_metrics(tmp_path / "e2e")] == \
               [r.get(key) for r in read_metrics(tmp_path / "k1")]
    gpt = lambda local: Recipe.from_dict(tiny(methods=[{"name": "local", **local}] if local else []))  # noqa: E731
    trainer(gpt(None), tmp_path / "g").fit()
    trainer(gpt({"modules": 1}), tmp_path / "g1").fit()
    assert [r.get("train_loss") for r in read_metrics(tmp_path / "g")] == \
           [r.get("train_loss") for r in read_metrics(tmp_path / "g1")]


@pytest.mark.parametrize("local", [
    {"variant": "greedy", "modules": 3}, {"variant": "dgl", "modules": 3}, {"variant": "infopro", "modules": 3},
    {"variant": "contsup", "modules": 3, "context": "R1E", "cheap_e": True},
    {"variant": "auglocal", "modules": 3, "cuts": "memory"}])
def test_every_variant_resumes_exactly(tmp_path, local):
    trainer(recipe(local), tmp_path / "full").fit()
    trainer(recipe(local), tmp_path / "part").fit(until=3)
    trainer(recipe(local), tmp_path / "part", resume=tmp_path / "part").fit()
    for key in ("train_loss", "val_loss", "local/loss0", "local/loss1"):
        assert [r.get(key) for r in read_metrics(tmp_path / "part")] == \
               [r.get(key) for r in read_metrics(tmp_path / "full")], key


def test_gpt_local_learning_with_context_trains_resumes_and_samples(tmp_path, capsys):
    from leantrain.cli import main
    r = lambda: Recipe.from_dict(tiny(methods=[{"name": "local", "variant": "contsup", "modules": 3,  # noqa: E731
                                                "context": "R1E"}]))
    trainer(r(), tmp_path / "full").fit()
    trainer(r(), tmp_path / "part").fit(until=5)
    trainer(r(), tmp_path / "part", resume=tmp_path / "part").fit()
    assert [x.get("train_loss") for x in read_metrics(tmp_path / "part")] == \
           [x.get("train_loss") for x in read_metrics(tmp_path / "full")]
    assert main(["sample", "--ckpt", str(tmp_path / "full"), "--tokens", "20"]) == 0
    assert len(capsys.readouterr().out) > 20


def test_contexts_and_inference_cost_are_reported(tmp_path):
    def first_row(local):
        trainer(recipe(local, max_steps=1), tmp_path / local["variant"], overwrite=True).fit()
        return read_metrics(tmp_path / local["variant"])[0]  # logged at FIT_START: the step-0 row
    greedy = first_row({"variant": "greedy", "modules": 4})
    contsup = first_row({"variant": "contsup", "modules": 4})
    assert greedy["local/inference_params"] == greedy["local/e2e_params"]
    assert greedy["local/inference_flops"] == greedy["local/e2e_flops"]
    assert contsup["local/inference_params"] > contsup["local/e2e_params"]
    assert contsup["local/inference_flops"] > contsup["local/e2e_flops"]


def test_peak_live_memory_falls_with_k(tmp_path):
    peaks = {}
    for k in (1, 2, 4):
        s = trainer(recipe({"variant": "greedy", "modules": k}, max_steps=1)).fit()
        peaks[k] = (s["peak_live_activation_bytes"], s["peak_activation_bytes"])
    assert peaks[1][0] == peaks[1][1]  # end to end: everything is alive until the backward
    assert peaks[4][0] < peaks[2][0] < peaks[1][0]
    assert peaks[4][0] < 0.5 * peaks[1][0]


def test_cuts_and_auglocal_formulas():
    assert equal_cuts(16, 4) == [3, 7, 11]  # ResNet-32: stage-1 block 2, stage-2 block 1, stage-3 block 0
    assert equal_cuts(16, 8) == [1, 3, 5, 7, 9, 11, 13] and equal_cuts(16, 16) == list(range(15))
    assert balanced_cuts([6, 6, 1, 1, 1, 1, 1, 1], 3) == [0, 1]  # heavy early units get modules of their own
    assert balanced_cuts([1] * 8, 4) == [1, 3, 5]
    net = [16] * 6 + [32] * 5 + [64] * 5  # ResNet-32's cuttable units (AugLocal's net_dim)
    # j_i = round(l + (L − l − 1)·i/d): from layer 0 with d = 2: round(7.5) = 8 and 15
    assert auglocal_layers(net, 0, 2) == [8, 15] and auglocal_layers(net, 3, 3) == [7, 11, 15]
    assert auglocal_layers(net, 14, 2) == [15]  # fewer layers left than d: all of them
    assert [pyramidal_depth(4, k, 16) for k in (0, 7, 14)] == [4, 3, 2]  # d(1−kτ/(M−2)) + kτ/(M−2)
    assert pyramidal_depth(2, 0, 2) == 2


def test_supcon_loss_matches_its_definition():
    torch.manual_seed(0)
    z, y = torch.randn(6, 5), torch.tensor([0, 1, 0, 2, 1, 0])
    zn = F.normalize(z, dim=1)
    expect = []
    for i in range(6):
        others = [j for j in range(6) if j != i]
        denom = torch.logsumexp(torch.stack([zn[i] @ zn[j] / 0.07 for j in others]), 0)
        pos = [j for j in others if y[j] == y[i]]
        if pos:
            expect.append(-sum((zn[i] @ zn[j] / 0.07 - denom) for j in pos) / len(pos))
    assert torch.allclose(supcon_loss(z, y), torch.stack(expect).mean(), atol=1e-5)


@pytest.mark.parametrize("local, train, message", [
    ({"modules": 8}, {}, "8 modules, but the model has only 7 units to cut"),
    ({"cuts": [2, 8]}, {}, "methods.local.cuts: unit 8 is out of range"),
    ({"cuts": [3, 2]}, {}, "must increase strictly"),
    ({"variant": "contsup", "context": "R3", "modules": 3}, {}, "R3 takes the inputs of the last 3 modules"),
    ({"variant": "infopro"}, {"batch_size": 1}, "train.batch_size must be ≥ 2"),
    ({"context": "Q1"}, {}, "'Q1' is not none, E, R<n> or R<n>E"),
    ({"modules": 3, "cuts": [1]}, {}, "3 modules, but cuts lists 1 cut(s)"),
])
def test_bad_options_are_one_line_errors(local, train, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        trainer(recipe(local, **train))


def test_a_second_step_strategy_is_refused():
    from .contract_methods import HalfBatchStrategy
    with pytest.raises(ConfigError, match="both replace the training step"):
        trainer(recipe({"modules": 2}), methods=[HalfBatchStrategy()])


@pytest.mark.slow
def test_two_ranks_give_the_update_of_one_rank_on_the_doubled_batch(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = tmp_path / "grads.pt"
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(ROOT / "tests" / "ddp_local_worker.py"), str(out)],
                       capture_output=True, text=True, env=env, timeout=240, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    from tests.ddp_local_worker import one_step
    ref = one_step(rank=0, world=1)
    got = torch.load(out, weights_only=True)
    assert got.keys() == ref.keys()
    for name in ref:
        assert torch.allclose(got[name], ref[name], atol=1e-6, rtol=1e-5), name


def test_immediate_and_end_updates_agree_when_accumulating(tmp_path):
    """grad_accum_steps: 2 — DGL's immediate update steps each module on the last micro-batch with its
    accumulated gradients alone (later modules' earlier-micro-batch gradients set aside), which is the
    end-of-step update exactly."""
    runs = {}
    for update in ("immediate", "end"):
        r = recipe({"variant": "dgl", "modules": 3, "update": update}, batch_size=8, grad_accum_steps=2)
        runs[update] = trainer(r, tmp_path / update).fit()
    assert runs["immediate"]["final_val_loss"] == runs["end"]["final_val_loss"]
    a = [r.get("train_loss") for r in read_metrics(tmp_path / "immediate")]
    b = [r.get("train_loss") for r in read_metrics(tmp_path / "end")]
    assert a == b


def test_local_honours_bf16_precision(tmp_path):
    """Issue 18 bug 8: the local strategy ignored train.amp; train.precision reaches its modules."""
    losses = {}
    for precision in ("fp32", "bf16"):
        r = recipe({"variant": "dgl", "modules": 3}, max_steps=4, precision=precision, device="cpu")
        s = trainer(r, tmp_path / precision).fit()
        assert s["precision"] == precision
        losses[precision] = [row["train_loss"] for row in read_metrics(tmp_path / precision) if "train_loss" in row]
    assert losses["bf16"] != losses["fp32"]
    assert losses["bf16"] == pytest.approx(losses["fp32"], abs=0.1)
