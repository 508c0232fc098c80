"""The stitching methods in the trainer (snnet, learngene_distill, learngene_pool), `leantrain export`
and `leantrain pool list`: family runs built from tiny source runs, resumed without their sources,
exported configurations identical to the same configuration inside the family, and every bad input
a one-line error with exit code 2."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from leantrain import Recipe, Trainer
from leantrain.cli import main
from leantrain.core import checkpoint
from leantrain.core.evaluation import EvalResult, evaluate
from leantrain.core.loading import load_trained
from leantrain.data import TextConfig, TextTask
from leantrain.methods.stitching import (LearngeneDistillation, StitchedFamily, projection_stitch,
                                         load_family, sample_config)
from leantrain.methods.stitching.routes import parse_stitch_key
from leantrain.models import StitchedGPT

from .conftest import read_metrics, tiny
from .method_settings import trained_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Tiny trained source runs (3 steps each), shared by the tests of this file."""
    tmp = tmp_path_factory.mktemp("sources")
    other_text = tmp / "other.txt"
    other_text.write_text("abcd efgh\n" * 400)
    ancestry = trained_run(tmp, "ancestry", {"n_embd": 32})
    distil = [{"name": "learngene_distill", "ancestry": ancestry}]
    return {"a16": trained_run(tmp, "a16", {"n_embd": 16}), "a32": trained_run(tmp, "a32", {"n_embd": 32}),
            "a32_deep": trained_run(tmp, "a32_deep", {"n_embd": 32, "n_layer": 5}),
            "a16_ctx8": trained_run(tmp, "a16_ctx8", {"n_embd": 16, "block_size": 8}),
            "other_vocab": str(_train(tiny(model={"n_embd": 16}, data={"path": str(other_text)},
                                           train={"max_steps": 2, "eval_interval": 2}), tmp / "other_vocab")),
            "ancestry": ancestry,
            "aux16": trained_run(tmp, "aux16", {"n_layer": 3, "n_embd": 16}, distil),
            "aux32": trained_run(tmp, "aux32", {"n_layer": 3, "n_embd": 32}, distil),
            "ancestry2": trained_run(tmp, "ancestry2", {"n_embd": 48}, steps=2)}


def _train(recipe: dict, out, until=None, resume=None):
    Trainer(Recipe.from_dict(recipe), out, resume=resume, verbose=False, progress=False).fit(until=until)
    return out


def snnet_recipe(sources, **options) -> dict:
    return tiny(train={"log_interval": 1}, methods=[{"name": "snnet", "anchors": [sources["a16"], sources["a32"]],
                                                      **options}])


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------------- snnet in the trainer
def test_snnet_samples_by_seed_and_step_and_resumes_without_its_anchors(sources, tmp_path):
    full = _train(snnet_recipe(sources, final_eval="none"), tmp_path / "full")
    anchors = tmp_path / "anchors"  # the anchors are moved away before the resume: it must not need them
    a16, a32 = (shutil.copytree(sources[k], anchors / k) for k in ("a16", "a32"))
    recipe = tiny(train={"log_interval": 1}, methods=[{"name": "snnet", "anchors": [str(a16), str(a32)],
                                                       "final_eval": "none"}])
    _train(recipe, tmp_path / "part", until=5)
    shutil.rmtree(anchors)
    _train(recipe, tmp_path / "part", resume=tmp_path / "part")

    rows_full, rows_part = read_metrics(full), read_metrics(tmp_path / "part")
    configs = [r["snnet/config"] for r in rows_full if "snnet/config" in r]
    assert configs == [r["snnet/config"] for r in rows_part if "snnet/config" in r]
    assert [r.get("train_loss") for r in rows_full] == [r.get("train_loss") for r in rows_part]
    # Row of step s: the configuration of the step that started at s − 1, drawn from (seed, step) alone.
    meta = checkpoint.read_meta(full)
    state = meta["methods"][0]["state"]
    assert state["bins"] == [list(range(12))]  # v1 of two 4-block anchors: 2 + 10 configurations, uniform
    assert configs == [sample_config(state["bins"], 1337, s) for s in range(12)]
    assert len(set(configs)) > 4
    assert [s["role"] for s in state["sources"]] == ["anchor", "anchor"]
    assert state["eval_config"] == 1  # the widest anchor
    # The trainer's evaluations score eval_config: the logged val loss is anchor w32's.
    family = load_family(full).family
    assert isinstance(family, StitchedFamily) and family.active == 1


def test_export_equals_the_configuration_inside_the_family_and_loads_without_pool_code(sources, tmp_path, capsys):
    run = _train(snnet_recipe(sources, final_eval="fixed"), tmp_path / "run")
    code, out, _ = cli(capsys, "pool", "list", "--ckpt", run)
    assert code == 0
    lines = out.splitlines()
    assert len([line for line in lines if line[2:3] in "* " and line[3:8].strip().isdigit()]) == 12
    assert "stored parameters:" in lines[-1] and "configurations are dominated" in lines[-2]
    fr = load_family(run)
    front = [int(line.split()[1]) for line in lines if line.startswith("  *")]
    losses = fr.losses()
    assert front and all(loss is not None for loss in losses)

    x = torch.randint(0, 65, (2, 16), generator=torch.Generator().manual_seed(0))
    for config in (7, 0):
        code, out, _ = cli(capsys, "export", "--ckpt", run, "--config", config, "--out", tmp_path / f"e{config}")
        assert code == 0 and f"exported configuration {config}" in out
        exported = load_trained(tmp_path / f"e{config}")
        assert type(exported.model) is StitchedGPT and exported.recipe.methods == []
        assert exported.recipe.model_name == "stitched_gpt"
        with torch.no_grad():
            assert torch.equal(exported.model(x)[0], fr.family.forward_config(x, config)[0])
    # `evaluate` on the export: the whole-split loss of configuration 7 inside the family
    code, out, _ = cli(capsys, "evaluate", "--ckpt", tmp_path / "e7")
    fr.family.active = 7
    task = TextTask(TextConfig())
    inside = evaluate(fr.family, task, task.eval_batches("val", 64, fr.family.stacks[0].config, whole=True),
                      torch.device("cpu"))
    assert code == 0 and json.loads(out)["val_loss"] == pytest.approx(inside.loss, abs=1e-9)
    code, out, _ = cli(capsys, "sample", "--ckpt", tmp_path / "e7", "--prompt", "ROMEO", "--tokens", "10")
    assert code == 0 and out.startswith("ROMEO") and len(out.rstrip("\n")) == 15
    # an export holds no training state: resuming it is a one-line error, nothing is written
    code, _, err = cli(capsys, "train", "--resume", tmp_path / "e7")
    assert code == 2 and "holds no training state (an exported model)" in err and len(err.strip().splitlines()) == 1

    # A budget picks the lowest end-of-training loss among the configurations within it.
    rows = fr.rows()
    budget = sorted(r["flops"] for r in rows)[5]
    code, out, _ = cli(capsys, "export", "--ckpt", run, "--max-flops", budget, "--out", tmp_path / "budget")
    best = min((r for r in rows if r["flops"] <= budget), key=lambda r: r["val_loss"])
    assert code == 0 and out.startswith(f"exported configuration {best['id']} ")
    assert json.loads((tmp_path / "budget" / "config.json").read_text())["model"]["name"] == "stitched_gpt"


def test_an_early_stopped_family_run_still_scores_every_configuration(sources, tmp_path, monkeypatch):
    """train.early_stop_patience ends a family run like a finished one: its end-of-run scoring runs
    (and is checkpointed), so `pool list` and `export --max-*` have every configuration's loss."""
    scripted = iter([5.0, 4.0] + [9.0] * 100)  # the trainer's evaluations: best at step 1, then worse
    monkeypatch.setattr("leantrain.core.trainer.evaluate", lambda *a, **k: EvalResult(loss=next(scripted),
                                                                                     loss_se=0.0, n=1))
    recipe = snnet_recipe(sources, final_eval="fixed")
    recipe["train"].update({"eval_interval": 1, "early_stop_patience": 2})
    run = tmp_path / "run"
    summary = Trainer(Recipe.from_dict(recipe), run, verbose=False, progress=False).fit()
    assert summary["early_stopped"] and summary["steps"] == 3 < recipe["train"]["max_steps"]
    final = checkpoint.read_meta(run)["methods"][0]["state"]["final"]
    assert final["step"] == 3 and len(final["losses"]) == 12
    assert all(loss is not None for loss in load_family(run).losses())


def test_learngene_distillation_trains_its_projections_and_the_pool_starts_from_them(sources, tmp_path, capsys):
    recipe = tiny(model={"n_layer": 3, "n_embd": 16},
                  methods=[{"name": "learngene_distill", "ancestry": sources["ancestry"]}])
    trainer = Trainer(Recipe.from_dict(recipe), tmp_path / "distil", verbose=False, progress=False)
    distil = trainer.state.model
    assert isinstance(distil, LearngeneDistillation)
    in_optimizer = {id(p) for g in trainer.state.optimizer.param_groups for p in g["params"]}
    projections = list(distil.hidden_proj.parameters()) + list(distil.attn_proj.parameters())
    assert {id(p) for p in projections} <= in_optimizer
    before = [p.detach().clone() for p in projections]
    trainer.fit()
    assert not any(p.requires_grad for p in trainer.methods[0].teacher.parameters())
    assert not {id(p) for p in trainer.methods[0].teacher.parameters()} & in_optimizer
    assert all(not torch.equal(a, b) for a, b in zip(before, projections))
    saved = checkpoint.load(tmp_path / "distil").model
    assert all(torch.equal(saved[f"hidden_proj.{i}.weight"], p.weight) for i, p in enumerate(distil.hidden_proj))
    rows = read_metrics(tmp_path / "distil")
    assert {"learngene_distill/ce", "learngene_distill/soft_ce", "learngene_distill/hidden_mse",
            "learngene_distill/attn_mse"} <= set(rows[-1])
    code, out, _ = cli(capsys, "sample", "--ckpt", tmp_path / "distil", "--tokens", "5")  # the student samples
    assert code == 0

    # With init: learned the pool's stitch layers start from both auxiliaries' projections.
    pool = Trainer(Recipe.from_dict(tiny(model={"n_layer": 3}, methods=[{
        "name": "learngene_pool", "auxiliaries": [sources["aux32"], sources["aux16"]], "init": "learned"}])),
        tmp_path / "pool", verbose=False, progress=False)
    family = pool.state.model
    assert [s.config.n_embd for s in family.stacks] == [16, 32]  # ascending width, whatever the order given
    aux16, aux32 = (load_trained(sources[k]).model for k in ("aux16", "aux32"))
    w, b = projection_stitch(aux16.stitch_projections(), aux32.stitch_projections(),
                             aux16.stitch_projection_biases(), aux32.stitch_projection_biases())
    for key, layer in family.stitches.items():
        assert parse_stitch_key(key)[:2] == (0, 1)
        # the 32-wide auxiliary is as wide as the ancestry but is not it: its own projections count
        assert torch.equal(layer.weight, w) and torch.equal(layer.bias, b) and layer.bias.any()
    state = pool.methods[0].state_dict()
    assert [s["role"] for s in state["sources"]] == ["auxiliary", "auxiliary", "ancestry"]
    assert state["eval_config"] == 1  # the widest auxiliary alone


def torchrun_worker(out, recipe: dict, until="-", resume="-", phase="run"):
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(ROOT / "tests" / "ddp_stitching_worker.py"), str(out), json.dumps(recipe), until,
                        str(resume), phase], capture_output=True, text=True, cwd=ROOT, timeout=240,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr[-3000:]


def rank_files(out, kind: str, phase: str) -> list[dict]:
    return [json.loads((out / f"{kind}_rank{rank}_{phase}.json").read_text()) for rank in (0, 1)]


@pytest.mark.slow
def test_configuration_sampling_is_identical_across_ranks_and_on_resume_under_torchrun(sources, tmp_path):
    recipe = {"methods": [{"name": "snnet", "anchors": [sources["a16"], sources["a32"]], "final_eval": "fixed"}]}
    out = tmp_path / "run"
    torchrun_worker(out, recipe, until="3", phase="part")
    torchrun_worker(out, recipe, resume=out, phase="resumed")
    seen = [{int(k): v for phase in ("part", "resumed") for k, v in rank_files(out, "configs", phase)[rank].items()}
            for rank in (0, 1)]
    assert seen[0] == seen[1]
    meta = checkpoint.read_meta(out)
    state = meta["methods"][0]["state"]
    assert meta["world_size"] == 2 and meta["step"] == 12
    assert [seen[0][s] for s in range(12)] == [sample_config(state["bins"], 1337, s) for s in range(12)]
    assert len(state["final"]["losses"]) == 12
    a, b = rank_files(out, "params", "resumed")
    assert a == b  # the replicas stayed identical: each step's gradients were reduced over both ranks


@pytest.mark.slow
def test_distillation_under_torchrun_reduces_the_projections_gradients(sources, tmp_path):
    recipe = {"model": {"n_layer": 3, "n_embd": 16},
              "methods": [{"name": "learngene_distill", "ancestry": sources["ancestry"]}]}
    torchrun_worker(tmp_path / "run", recipe)
    a, b = rank_files(tmp_path / "run", "params", "run")
    assert a == b and {"hidden_proj.0.weight", "attn_proj.2.bias"} <= set(a)
    first = checkpoint.load(tmp_path / "run").model["hidden_proj.0.weight"]
    assert first.double().sum().item() == a["hidden_proj.0.weight"]


# ----------------------------------------------------------------------------------- bad input
def _bad_train(sources, capsys, tmp_path, recipe: dict) -> str:
    f = tmp_path / "recipe.yaml"
    f.write_text(yaml.safe_dump(recipe))
    code, _, err = cli(capsys, "train", "--recipe", f, "--out", tmp_path / "bad", "--quiet")
    assert code == 2 and err.startswith("leantrain: error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "bad").exists()  # refused before anything was written
    return err


def _snnet(sources, *anchors, model=None, **options):
    return tiny(model=model or {}, methods=[{"name": "snnet", "anchors": [sources[a] for a in anchors], **options}])


@pytest.mark.parametrize("recipe, message", [
    (lambda s: _snnet(s, "a16", "a32_deep"),
     "methods.snnet.anchors: SN-Net v1 stitches stacks of one depth: w16 has 4 blocks, w32 has 5"),
    (lambda s: _snnet(s, "a16", "a32_deep", version="v2"),
     "larger anchor's depth to be a multiple of the smaller's: w32 has 5 blocks, w16 has 4"),
    (lambda s: _snnet(s, "a16", "other_vocab"),
     "methods.snnet.anchors[1]: {other_vocab} was trained on another vocabulary (10 tokens) than this run's "
     "data ("),
    (lambda s: _snnet(s, "a16", "a16_ctx8"),
     "methods.snnet.anchors[1]: {a16_ctx8} has block_size 8, this recipe's model.block_size is 16"),
    (lambda s: _snnet(s, "a16", "aux16"),
     "methods.snnet.anchors[1]: {aux16} was trained with learngene_distill, which replaces the model; anchors "
     "must be plain gpt runs"),
    (lambda s: tiny(model={"n_embd": 16}, methods=[{"name": "learngene_distill", "ancestry": s["aux32"]}]),
     "methods.learngene_distill.ancestry: {aux32} was trained with learngene_distill, which replaces the model"),
    (lambda s: {**_snnet(s, "a16", "a32"), "methods": [{"name": "snnet", "anchors": [s["a16"], "/no/such/run"]}]},
     "methods.snnet.anchors[1]: checkpoint not found: /no/such/run"),
    (lambda s: _snnet(s, "a16"), "methods.snnet.anchors: needs at least two anchor run directories, got 1"),
    (lambda s: _snnet(s, "a16", "a32", eval_config=12),
     "methods.snnet.eval_config: 12 is out of range: the family has 12 configurations (0..11)"),
    (lambda s: _snnet(s, "a16", "a32", v2_kinds=["sl", "lls"]), "methods.snnet.v2_kinds[1]: 'lls' is not one of"),
    (lambda s: {**_snnet(s, "a16", "a32"), "methods": [{"name": "raptr"}, *_snnet(s, "a16", "a32")["methods"]]},
     "methods: snnet replaces the model and cannot be combined with raptr"),
    (lambda s: tiny(model={"n_embd": 48, "n_head": 2},
                    methods=[{"name": "learngene_distill", "ancestry": s["ancestry"]}]),
     "methods.learngene_distill.ancestry: the ancestry (n_embd=32) is narrower than its auxiliary model (n_embd=48)"),
    (lambda s: tiny(model={"n_layer": 5}, methods=[{"name": "learngene_distill", "ancestry": s["ancestry"]}]),
     "the ancestry (4 blocks) is shallower than its auxiliary model (5 blocks)"),
    (lambda s: tiny(methods=[{"name": "learngene_distill"}]),
     "methods.learngene_distill.ancestry: needs the run directory of the trained ancestry model"),
    (lambda s: tiny(methods=[{"name": "learngene_pool", "auxiliaries": [s["aux16"], s["a32"]]}]),
     "methods.learngene_pool.auxiliaries[1]: {a32} was not trained with learngene_distill (its methods: [])"),
    (lambda s: tiny(methods=[{"name": "learngene_pool", "auxiliaries": [s["aux16"]]}]),
     "needs at least two learngene_distill run directories, got 1"),
])
def test_bad_input_is_a_one_line_error_before_anything_is_written(sources, capsys, tmp_path, recipe, message):
    err = _bad_train(sources, capsys, tmp_path, recipe(sources))
    assert message.format(**sources) in err


def test_a_pool_needs_one_ancestry(sources, capsys, tmp_path):
    other = trained_run(tmp_path, "aux_other", {"n_layer": 3, "n_embd": 16},
                        [{"name": "learngene_distill", "ancestry": sources["ancestry2"]}], steps=1)
    err = _bad_train(sources, capsys, tmp_path, tiny(methods=[{"name": "learngene_pool",
                                                                "auxiliaries": [sources["aux32"], other]}]))
    assert f"{other} was distilled from {Path(sources['ancestry2']).resolve()}" in err
    assert "a pool's instances come from one ancestry" in err


def test_export_and_pool_list_refuse_bad_input_in_one_line(sources, capsys, tmp_path):
    run = _train(snnet_recipe(sources, final_eval="fixed"), tmp_path / "run")
    bad = [(["export", "--ckpt", run, "--config", "12", "--out", tmp_path / "x"],
            "configuration id 12 is out of range: the family has 12 configurations (0..11)"),
           (["export", "--ckpt", run, "--max-flops", "1000", "--out", tmp_path / "x"],
            "no configuration fits --max-flops 1000: the cheapest needs"),
           (["export", "--ckpt", run, "--max-params", "100", "--out", tmp_path / "x"],
            "no configuration fits --max-params 100: the smallest has"),
           (["export", "--ckpt", run, "--max-params", "-3", "--out", tmp_path / "x"], "--max-params must be positive"),
           (["export", "--ckpt", sources["a16"], "--config", "0", "--out", tmp_path / "x"],
            "holds a 'gpt' model (methods []), not a stitched family"),
           (["pool", "list", "--ckpt", sources["aux16"]], "not a stitched family"),
           (["pool", "list", "--ckpt", tmp_path / "nothing"], "checkpoint not found")]
    for argv, message in bad:
        code, _, err = cli(capsys, *argv)
        assert code == 2 and message in err and err.count("\n") == 1, (argv, err)
    assert not (tmp_path / "x").exists()
    assert cli(capsys, "export", "--ckpt", run, "--config", "3", "--out", tmp_path / "x")[0] == 0
    code, _, err = cli(capsys, "export", "--ckpt", run, "--config", "3", "--out", tmp_path / "x")
    assert code == 2 and "already holds a checkpoint" in err


def test_the_pools_default_stitch_init_starts_no_worse_than_least_squares_on_a_held_out_batch(sources, tmp_path):
    """The default init (least squares on one training batch) against the learned init through the
    projections, scored on validation batches neither saw: every descendant's loss at step 0."""
    from leantrain.data import fixed_batches

    def pool(init=None):
        entry = {"name": "learngene_pool", "auxiliaries": [sources["aux16"], sources["aux32"]]}
        t = Trainer(Recipe.from_dict(tiny(model={"n_layer": 3}, methods=[entry | ({"init": init} if init else {})])),
                    tmp_path / f"pool_{init}", verbose=False, progress=False)
        return t.state.model.eval(), t.state.data
    default, data = pool()
    learned, _ = pool("learned")
    least, _ = pool("least_squares")
    x, y = fixed_batches(data.val, default.block_size, 16, 1, 99)[0]  # held out: the validation split
    ids = [i for i, r in enumerate(default.routes) if r.kind == "descendant"]

    def losses(family):
        with torch.no_grad():
            return torch.tensor([family.forward_config(x, i, y)[1].item() for i in ids])
    d, l, ls = losses(default), losses(learned), losses(least)
    assert torch.equal(d, ls)  # the default is least squares
    assert d.mean() <= l.mean()  # and it starts the descendants no worse than the learned init
    assert (d <= l + 1e-6).float().mean() >= 0.5


def test_stitch_lr_scale_trains_the_stitches_at_a_multiple_of_the_runs_rate_and_resumes_exactly(sources, tmp_path):
    from leantrain import Event, Method
    from leantrain.core.trainer import lr_at

    class Rates(Method):
        name = "probe_rates"

        def __init__(self):
            super().__init__()
            self.seen = []

        def on_event(self, event, state):
            if event is Event.STEP_END:  # after the optimizer step: the rates it used
                stitch = {id(p) for p in state.model.stitches.parameters()}
                rates = {(any(id(p) in stitch for p in g["params"]), g["lr"]) for g in state.optimizer.param_groups
                         if g["params"]}
                self.seen.append((state.step - 1, rates))

    recipe = snnet_recipe(sources, final_eval="none", stitch_lr_scale=5.0)
    probe = Rates()
    Trainer(Recipe.from_dict(recipe), tmp_path / "full", methods=[probe], verbose=False, progress=False).fit()
    t = Recipe.from_dict(recipe).train
    for step, rates in probe.seen:
        want = lr_at(step, t)
        assert {r for s, r in rates if not s} == {want}
        assert [r for s, r in rates if s] == pytest.approx([5.0 * want] * sum(s for s, _ in rates))
        assert any(s for s, _ in rates)
    _train(recipe, tmp_path / "part", until=5)
    _train(recipe, tmp_path / "part", resume=tmp_path / "part")
    losses = lambda run: [r.get("train_loss") for r in read_metrics(run)]  # noqa: E731
    assert losses(tmp_path / "part") == losses(tmp_path / "full")
    plain = _train(snnet_recipe(sources, final_eval="none"), tmp_path / "plain")
    assert losses(plain) != losses(tmp_path / "full")  # the factor changes training
