import json
import math

import pytest
import torch

from leantrain import ConfigError, Event, LeantrainError, Recipe, Trainer
from leantrain.bench.overhead import plain_loop
from leantrain.core import checkpoint
from leantrain.core.trainer import lr_at

from .conftest import read_metrics, tiny
from .contract_methods import (GrowConfig, GrowOneBlock, HalfBatchStrategy, LinearDropoutProbe,
                               OtherDepth, OtherStrategy, PhaseProbe)


def fit(recipe, out, **kw):
    until = kw.pop("until", None)
    return Trainer(recipe, out, verbose=False, progress=False, **kw).fit(until=until)


def losses(run_dir, key="train_loss"):
    return [(r["step"], r[key]) for r in read_metrics(run_dir) if key in r]


def test_metrics_and_summary_schema(tiny_recipe, tmp_path):
    s = fit(tiny_recipe(), tmp_path)
    for k in ("final_val_loss", "best_val_loss", "train_flops", "wall_seconds", "tokens_per_second",
              "peak_activation_bytes", "steps", "config"):
        assert k in s
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 12
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [0, 3, 6, 9, 12]
    assert [r["step"] for r in rows if "val_loss" in r] == [0, 6, 12]
    assert all({"lr", "flops", "seconds"} <= set(r) for r in rows)
    flops = [r["flops"] for r in rows]
    assert flops == sorted(flops) and flops[-1] == s["train_flops"]
    assert s["best_val_loss"] == min(r["val_loss"] for r in rows if "val_loss" in r)


def test_lr_schedule_is_nanogpt():
    t = Recipe.from_dict({"train": {"max_steps": 100, "warmup_steps": 10, "lr": 1.0, "min_lr": 0.1}}).train
    assert lr_at(0, t) == pytest.approx(1 / 11) and lr_at(9, t) == pytest.approx(10 / 11)
    assert lr_at(10, t) == pytest.approx(1.0) and lr_at(100, t) == pytest.approx(0.1)
    assert lr_at(55, t) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))


def test_trainer_equals_a_plain_pytorch_loop(tiny_recipe, tmp_path):
    r = tiny_recipe(train={"log_interval": 1})
    fit(r, tmp_path)
    ref, _ = plain_loop(tiny_recipe(train={"log_interval": 1}), 12, seed=r.train.seed)
    assert [loss for _, loss in losses(tmp_path)] == ref


def test_runs_are_deterministic(tiny_recipe, tmp_path):
    r = dict(model={"dropout": 0.1})
    fit(tiny_recipe(**r), tmp_path / "a")
    fit(tiny_recipe(**r), tmp_path / "b")
    assert losses(tmp_path / "a") == losses(tmp_path / "b")


def test_resume_is_bit_exact_with_methods_and_surgery(tmp_path):
    def run(out, until=None, resume=None):
        r = Recipe.from_dict(tiny(model={"dropout": 0.1}))
        methods = [LinearDropoutProbe(), GrowOneBlock(GrowConfig(at_step=8))]
        return fit(r, out, methods=methods, until=until, resume=resume)
    full = run(tmp_path / "full")
    part = run(tmp_path / "part", until=6)
    assert part["steps"] == 6 and not part["finished"]
    resumed = run(tmp_path / "part", resume=tmp_path / "part")
    for key in ("train_loss", "val_loss"):
        assert losses(tmp_path / "part", key) == losses(tmp_path / "full", key)
    assert resumed["final_val_loss"] == full["final_val_loss"]
    assert resumed["train_flops"] == full["train_flops"]
    assert len(read_metrics(tmp_path / "part")) == len(read_metrics(tmp_path / "full"))


def test_schedule_method_changes_state_and_logs(tiny_recipe, tmp_path):
    probe = LinearDropoutProbe()
    t = Trainer(tiny_recipe(), tmp_path, methods=[probe], verbose=False, progress=False)
    t.fit()
    assert probe.steps_seen == 12
    assert t.state.model.dropout_rates()["embedding"] == pytest.approx(0.2 / 12)
    ps = [r["probe/p"] for r in read_metrics(tmp_path) if "probe/p" in r]
    assert ps == sorted(ps, reverse=True) and len(ps) == 4


def test_end_events_run_in_reverse_order(tiny_recipe, tmp_path):
    a, b = LinearDropoutProbe(tag="a"), LinearDropoutProbe(tag="b")
    log = []
    a.events = b.events = log  # one shared log shows the interleaving
    Trainer(tiny_recipe(train={"max_steps": 1}), tmp_path, methods=[a, b], verbose=False, progress=False).fit()
    assert log[0] == ("a", Event.FIT_START) and log[-3] == ("a", Event.FIT_END)
    assert log[-2:] == [("a", Event.CHECKPOINT), ("b", Event.CHECKPOINT)]  # the final checkpoint
    assert [tag for tag, e in log if e is Event.STEP_START] == ["a", "b"]
    assert [tag for tag, e in log if e is Event.STEP_END] == ["b", "a"]
    assert [tag for tag, e in log if e is Event.EVAL_END] == ["b", "a"] * 2


def test_surgery_rebuilds_optimizer_and_copies_state(tiny_recipe, tmp_path):
    grow = GrowOneBlock(GrowConfig(at_step=5))
    t = Trainer(tiny_recipe(), tmp_path, methods=[grow], verbose=False, progress=False)
    t.fit(until=5)
    opt = t.state.optimizer
    src = t.state.model.blocks[3].mlp.c_fc.weight
    before = opt.state[src]["exp_avg"].clone()
    t.train_step()  # step 5: grows, then trains one step
    assert len(t.state.model.blocks) == 5
    new = t.state.model.blocks[4].mlp.c_fc.weight
    assert new in t.state.optimizer.state and t.state.optimizer is not opt
    ids = {id(p) for g in t.state.optimizer.param_groups for p in g["params"]}
    assert ids == {id(p) for p in t.state.model.parameters()}
    # the new block's moments started from the copy of block 3's (then both took one step)
    assert torch.allclose(t.state.optimizer.state[new]["step"], t.state.optimizer.state[src]["step"])
    assert not torch.equal(before, t.state.optimizer.state[new]["exp_avg"])


def test_step_strategy_replaces_the_step(tiny_recipe, tmp_path):
    strat = HalfBatchStrategy()
    s = fit(tiny_recipe(), tmp_path, methods=[strat])
    assert strat.calls == 12 and math.isfinite(s["final_val_loss"])
    plain = fit(tiny_recipe(), tmp_path / "plain")
    assert s["final_val_loss"] == pytest.approx(plain["final_val_loss"], abs=1e-4)  # same gradients


def test_setup_phase_strategy_and_method_tensors_resume_exactly(tiny_recipe, tmp_path):
    def run(out, **kw):
        probe = PhaseProbe()
        s = fit(tiny_recipe(train={"log_interval": 1}), out, methods=[probe], **kw)
        return probe, s
    full, s_full = run(tmp_path / "full")
    assert full.setup_calls == 1
    # the phase's steps were the probe's (its own FLOP key: measured separately), then normal steps
    assert s_full["step_shapes"] == 2
    part, _ = run(tmp_path / "part", until=3)  # inside the phase
    assert checkpoint.load(tmp_path / "part").methods == {"probe_phase/seen": part.seen}
    resumed, s_res = run(tmp_path / "part", resume=tmp_path / "part")
    assert resumed.setup_calls == 1 and torch.equal(resumed.seen, full.seen)
    assert losses(tmp_path / "part") == losses(tmp_path / "full")
    assert s_res["final_val_loss"] == s_full["final_val_loss"] and s_res["train_flops"] == s_full["train_flops"]
    # the attached parameter trained (the run's optimizer covers what setup added) and was saved
    assert "probe_gain" in checkpoint.load(tmp_path / "full").model


@pytest.mark.parametrize("methods, message", [
    ([HalfBatchStrategy(), OtherStrategy()], "both replace the training step"),
    ([HalfBatchStrategy(), PhaseProbe()], "both replace the training step"),
    ([GrowOneBlock(), OtherDepth()], "cannot be combined"),
])
def test_incompatible_methods(tiny_recipe, tmp_path, methods, message):
    with pytest.raises(ConfigError, match=message):
        Trainer(tiny_recipe(), tmp_path, methods=methods)
    assert not tmp_path.joinpath("config.json").exists()


def test_crash_during_checkpoint_keeps_previous(tiny_recipe, tmp_path, monkeypatch):
    t = Trainer(tiny_recipe(), tmp_path, verbose=False, progress=False)
    t.fit(until=4)
    good = checkpoint.resolve(tmp_path)
    real = checkpoint.save_file
    calls = []

    def failing(tensors, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(tensors, path)
    monkeypatch.setattr(checkpoint, "save_file", failing)
    t.train_step()
    with pytest.raises(OSError):
        t.save_checkpoint()
    assert checkpoint.resolve(tmp_path) == good
    assert checkpoint.load(tmp_path).meta["step"] == 4
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]


def test_corrupt_and_missing_checkpoints(tiny_recipe, tmp_path):
    fit(tiny_recipe(), tmp_path)
    ckpt = checkpoint.resolve(tmp_path)
    with pytest.raises(LeantrainError, match="checkpoint not found"):
        checkpoint.load(tmp_path / "nope")
    f = ckpt / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(LeantrainError, match="fails its checksum"):
        checkpoint.load(tmp_path)
    (ckpt / "state.json").write_text("{not json")
    with pytest.raises(LeantrainError, match="not valid JSON"):
        checkpoint.load(tmp_path)


def test_resume_with_other_model_shape_is_refused(tiny_recipe, tmp_path):
    fit(tiny_recipe(), tmp_path, until=3)
    with pytest.raises(LeantrainError, match="model.n_layer is 4 in the checkpoint, 5 in the recipe"):
        Trainer(tiny_recipe(model={"n_layer": 5}), tmp_path, resume=tmp_path)


def test_output_dir_with_other_run_is_refused(tiny_recipe, tmp_path):
    fit(tiny_recipe(), tmp_path)
    before = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(LeantrainError, match="already holds another run"):
        Trainer(tiny_recipe(train={"lr": 2e-3}), tmp_path)
    with pytest.raises(LeantrainError, match="a run of this recipe"):
        Trainer(tiny_recipe(), tmp_path)
    assert (tmp_path / "metrics.jsonl").read_text() == before
    fit(tiny_recipe(train={"lr": 2e-3}), tmp_path, overwrite=True)
    assert json.loads((tmp_path / "config.json").read_text())["train"]["lr"] == 2e-3


def test_configs_of_methods_made_in_python_are_validated(tiny_recipe, tmp_path):
    with pytest.raises(ConfigError, match=r"methods.probe_grow.at_step: must be ≥ 0"):
        Trainer(tiny_recipe(), tmp_path, methods=[GrowOneBlock(GrowConfig(at_step=-1))])
    with pytest.raises(ConfigError, match=r"methods.probe_grow.at_step: expected int"):
        Trainer(tiny_recipe(), tmp_path, methods=[GrowOneBlock(GrowConfig(at_step="3"))])


def test_an_evaluation_a_method_runs_mid_step_is_evaluation_time_not_training_time(tiny_recipe, tmp_path,
                                                                                    monkeypatch):
    import time

    from leantrain import Method
    from leantrain.data import TextTask

    class EvaluatesEveryStep(Method):
        name = "probe_evaluates"

        def on_event(self, event, state):
            if event is Event.STEP_START:
                state.evaluate("val", whole=False)

    score = TextTask.score
    monkeypatch.setattr(TextTask, "score", lambda self, *a: (time.sleep(0.05), score(self, *a))[1])
    s = fit(tiny_recipe(train={"max_steps": 4, "eval_interval": 100}), tmp_path, methods=[EvaluatesEveryStep()])
    # 4 mid-step evaluations of 2 batches, 0.05 s each: ≥ 0.4 s of evaluation, none of it training time
    assert s["eval_seconds"] >= 0.4 + 2 * 2 * 0.05 and s["wall_seconds"] < 0.3
