"""Issue 23's trainer options: gradient accumulation, precision, host syncs, compile, loggers and
callbacks, checkpoint retention, early stopping, schedules and optimizers, dry run, --version."""
import json
import math
import sys
import types

import pytest
import torch
import torch._dynamo

from leantrain import Callback, ConfigError, Event, Method, Recipe, Trainer
from leantrain.cli import main
from leantrain.core import checkpoint
from leantrain.core.evaluation import EvalResult
from leantrain.core.trainer import lr_at

from .conftest import read_metrics, tiny
from .contract_nonfinite import NaNLossAt


def run(tmp_path, name="run", **sections):
    return Trainer(Recipe.from_dict(tiny(**sections)), tmp_path / name, verbose=False, progress=False)


class FixedBatches:
    """A sampler that hands out the given batches in turn (no random draws)."""

    def __init__(self, batches):
        self.batches, self.i = batches, 0

    def next(self):
        self.i += 1
        return self.batches[self.i - 1]


class GradsAfterBackward(Callback):
    def __init__(self):
        self.grads = None

    def on_after_backward(self, state):
        self.grads = {n: p.grad.clone() for n, p in state.model.named_parameters() if p.grad is not None}


# ------------------------------------------------------------------------------- accumulation
def test_accumulated_gradients_equal_one_big_batch(tmp_path):
    big_x = torch.randint(0, 60, (8, 16))
    big_y = torch.randint(0, 60, (8, 16))
    grads = []
    for batch, accum, batches in ((8, 1, [(big_x, big_y)]), (4, 2, [(big_x[:4], big_y[:4]), (big_x[4:], big_y[4:])])):
        probe = GradsAfterBackward()
        t = Trainer(Recipe.from_dict(tiny(train={"batch_size": batch, "grad_accum_steps": accum})), None,
                    verbose=False, progress=False, callbacks=[probe])
        t.sampler = FixedBatches(batches)
        t.state.model.train()
        t.train_step()
        grads.append(probe.grads)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7, msg=name)


def test_accumulation_counts_every_micro_batch_and_resumes_exactly(tmp_path):
    one = run(tmp_path, "one").fit()
    full = run(tmp_path, "full", train={"grad_accum_steps": 2}).fit()
    assert full["train_flops"] == 2 * one["train_flops"]
    assert full["effective_batch_size"] == 8 and full["grad_accum_steps"] == 2
    assert one["host_sync"] == ("log" if torch.cuda.is_available() else "step")  # auto
    assert full["tokens_per_second"] * full["wall_seconds"] == pytest.approx(12 * 8 * 16)
    run(tmp_path, "part", train={"grad_accum_steps": 2}).fit(until=5)
    resumed = Trainer(Recipe.from_dict(tiny(train={"grad_accum_steps": 2})), tmp_path / "part",
                      resume=tmp_path / "part", verbose=False, progress=False).fit()
    assert resumed["final_val_loss"] == full["final_val_loss"]
    assert [r.get("train_loss") for r in read_metrics(tmp_path / "full")] == \
        [r.get("train_loss") for r in read_metrics(tmp_path / "part")]


class PlainStrategy(Method):
    """A step strategy written before accumulation existed (it calls loss.backward() itself)."""
    name = "probe_plain_strategy"
    kind = "step_strategy"

    def training_step(self, state, model, x, y):
        _, loss = model(x, y)
        loss.backward()
        return loss.detach()


def test_a_strategy_that_does_not_declare_accumulation_or_precision_is_refused():
    r = Recipe.from_dict(tiny(train={"grad_accum_steps": 2}))
    with pytest.raises(ConfigError, match="does not accumulate micro-batches"):
        Trainer(r, None, methods=[PlainStrategy()], verbose=False)
    r = Recipe.from_dict(tiny(train={"precision": "bf16", "device": "cpu"}))
    with pytest.raises(ConfigError, match="honours only fp32"):
        Trainer(r, None, methods=[PlainStrategy()], verbose=False)


# ------------------------------------------------------------------------------- precision
def test_precision_is_cuda_only_unless_cpu_is_asked_for():
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    for p in ("bf16", "fp16"):
        with pytest.raises(ConfigError, match="set train.device: cpu explicitly"):
            Trainer(Recipe.from_dict(tiny(train={"precision": p})), None, verbose=False)
    with pytest.raises(ConfigError, match="train.precision: bf16 and train.device: cpu"):
        Trainer(Recipe.from_dict(tiny(train={"amp": True})), None, verbose=False)
    with pytest.raises(ConfigError, match="train.amp"):
        Recipe.from_dict(tiny(train={"amp": True, "device": "cpu"}))
    with pytest.raises(ConfigError, match="set only train.precision"):
        Recipe.from_dict(tiny(train={"amp": True, "precision": "bf16"}))


def test_old_recipes_with_amp_false_still_load_and_train_in_fp32(tmp_path):
    old = run(tmp_path, "old", train={"amp": False}).fit()
    new = run(tmp_path, "new").fit()
    assert old["final_val_loss"] == new["final_val_loss"] and old["precision"] == "fp32"


def test_cpu_bf16_autocast_when_asked_for(tmp_path):
    run(tmp_path, "fp32").fit()
    bf16 = run(tmp_path, "bf16", train={"precision": "bf16", "device": "cpu"}).fit()
    assert bf16["precision"] == "bf16" and math.isfinite(bf16["final_val_loss"])
    a = [r["train_loss"] for r in read_metrics(tmp_path / "fp32") if "train_loss" in r]
    b = [r["train_loss"] for r in read_metrics(tmp_path / "bf16") if "train_loss" in r]
    assert a != b  # autocast ran
    assert b == pytest.approx(a, abs=0.05)


def test_fp16_grad_scaler_state_is_checkpointed_and_resumes_exactly(tmp_path, monkeypatch):
    import functools
    # a start scale that overflows the tiny model's fp16 gradients in the first steps
    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler, init_scale=2.0 ** 28))
    train = {"precision": "fp16", "device": "cpu", "checkpoint_interval": 5}
    full = run(tmp_path, "full", train=train).fit()
    assert full["precision"] == "fp16" and 1 <= full["fp16_overflow_skipped"] < 12
    part = run(tmp_path, "part", train=train)
    part.fit(until=5)
    saved = checkpoint.read_meta(tmp_path / "part")["grad_scaler"]
    assert saved["scale"] == part.state.precision.scaler.get_scale()
    resumed = Trainer(Recipe.from_dict(tiny(train=train)), tmp_path / "part", resume=tmp_path / "part",
                      verbose=False, progress=False)
    assert resumed.state.precision.scaler.state_dict() == part.state.precision.scaler.state_dict()
    s = resumed.fit()
    assert s["final_val_loss"] == full["final_val_loss"]
    assert s["fp16_loss_scale"] == full["fp16_loss_scale"]
    assert s["fp16_overflow_skipped"] == full["fp16_overflow_skipped"]


# ------------------------------------------------------------------------------- host syncs
SYNCING = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "__array__")


def count_reads(monkeypatch, fn) -> int:
    """Calls of tensor methods that read values onto the host (a device sync on CUDA) during ``fn``."""
    calls = [0]
    for name in SYNCING:
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            calls[0] += 1
            return _original(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    try:
        fn()
    finally:
        monkeypatch.undo()
    return calls[0]


@pytest.mark.parametrize("mode, optimizer", [("log", "adamw"), ("log", "sgd"), ("step", "adamw")])
def test_host_sync_log_reads_nothing_on_the_host_between_log_steps(tmp_path, monkeypatch, mode, optimizer):
    t = Trainer(Recipe.from_dict(tiny(train={"host_sync": mode, "optimizer": optimizer, "max_steps": 50,
                                             "log_interval": 50, "eval_interval": 50})), None,
                verbose=False, progress=False)
    batches = [(torch.randint(0, 60, (4, 16)), torch.randint(0, 60, (4, 16))) for _ in range(8)]
    t.sampler = FixedBatches(batches)
    t.state.model.train()
    t.train_step()  # the first step measures FLOPs (FlopCounterMode); the rest are plain steps
    reads = count_reads(monkeypatch, lambda: [t.train_step() for _ in range(5)])
    if mode == "log":
        assert reads == 0
        t._settle()
        assert t.loss_count == 6 and t.state.loss is not None and math.isfinite(t.state.loss)
    else:
        assert reads >= 5  # the check that host_sync log removes: one read per step


def test_host_sync_log_trains_like_host_sync_step(tmp_path):
    step = run(tmp_path, "step", train={"host_sync": "step"}).fit()
    log = run(tmp_path, "log", train={"host_sync": "log"}).fit()
    assert log["host_sync"] == "log" and step["host_sync"] == "step"
    a = [r.get("train_loss") for r in read_metrics(tmp_path / "step")]
    b = [r.get("train_loss") for r in read_metrics(tmp_path / "log")]
    assert [x is None for x in a] == [x is None for x in b]
    assert [x for x in b if x is not None] == pytest.approx([x for x in a if x is not None], rel=1e-4)
    assert log["final_val_loss"] == pytest.approx(step["final_val_loss"], rel=1e-4)


class GradNaNAt(Method):
    """Schedule: at STEP_END of ``step``... no — at AFTER_BACKWARD of step ``at``, one gradient becomes NaN."""
    name = "probe_grad_nan"

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_event(self, event, state):
        if event is Event.AFTER_BACKWARD and state.step == self.at:
            next(state.model.parameters()).grad.fill_(float("nan"))


def test_host_sync_log_stop_never_applies_or_saves_a_nonfinite_update(tmp_path):
    train = {"host_sync": "log", "checkpoint_interval": 3, "log_interval": 6}
    t = Trainer(Recipe.from_dict(tiny(train=train)), tmp_path / "run", methods=[GradNaNAt(3)],
                verbose=False, progress=False)  # step 4 (1-based) is bad; read at the log step 6
    snapshot = {}

    class Snap(Callback):
        def on_step_end(self, state):
            if state.step == 3:
                snapshot.update({n: p.detach().clone() for n, p in state.model.named_parameters()})
    t.callbacks.append(Snap())
    from leantrain.errors import RunStopped
    with pytest.raises(RunStopped, match="non-finite gradient norm nan .* at step 4.*read at step 6") as e:
        t.fit()
    assert e.value.exit_code == 3
    for n, p in t.state.model.named_parameters():  # nothing applied from step 4 on
        assert torch.equal(p, snapshot[n]), n
    assert checkpoint.read_meta(tmp_path / "run")["step"] == 3
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["finished"] is False and "step 4" in summary["stopped"]


def test_host_sync_log_skip_counts_skipped_steps(tmp_path):
    s = Trainer(Recipe.from_dict(tiny(train={"host_sync": "log", "on_nonfinite": "skip"})), tmp_path / "run",
                methods=[NaNLossAt(4)], verbose=False, progress=False).fit()
    assert s["nonfinite_skipped"] == 1 and s["finished"]


def test_host_sync_log_needs_a_fused_optimizer():
    with pytest.raises(ConfigError, match="adafactor has no fused kernel"):
        Trainer(Recipe.from_dict(tiny(train={"host_sync": "log", "optimizer": "adafactor"})), None, verbose=False)


# ------------------------------------------------------------------------------- compile
@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()  # no compiled frames from earlier tests: graph counts are this test's


def test_compile_eager_backend_matches_eager_and_counts_graphs(tmp_path, fresh_dynamo):
    plain = run(tmp_path, "plain").fit()
    compiled = run(tmp_path, "compiled", train={"compile": True, "compile_backend": "eager"}).fit()
    assert compiled["compiled_graphs"] >= 1 and "compiled_graphs" not in plain
    assert compiled["final_val_loss"] == pytest.approx(plain["final_val_loss"], abs=1e-5)
    assert compiled["train_flops"] == plain["train_flops"]


def test_compile_recompiles_after_surgery(tmp_path, fresh_dynamo):
    stack = [{"name": "stacking", "depths": [2, 4], "init": "copy_top"}]
    before = Trainer(Recipe.from_dict(tiny(train={"compile": True, "compile_backend": "eager", "max_steps": 3},
                                           methods=stack)), None, verbose=False, progress=False)
    before.fit()
    after = Trainer(Recipe.from_dict(tiny(train={"compile": True, "compile_backend": "eager"}, methods=stack)),
                    None, verbose=False, progress=False)
    s = after.fit()
    assert s["compiled_graphs"] > before.compiled_graphs[0]


@pytest.mark.slow
def test_compile_with_inductor_on_cpu(tmp_path, fresh_dynamo):
    """The real backend, at the smallest size: generated C++ kernels (minutes on a loaded 2-core machine)."""
    r = Recipe.from_dict(tiny(model={"n_layer": 1, "n_embd": 16, "block_size": 8},
                              train={"compile": True, "max_steps": 2, "eval_interval": 2}))
    s = Trainer(r, None, verbose=False, progress=False).fit()
    assert s["compiled_graphs"] >= 1 and math.isfinite(s["final_val_loss"])


def test_unknown_compile_backend_is_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="not a torch.compile backend"):
        run(tmp_path, train={"compile": True, "compile_backend": "nope"})
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------- loggers, callbacks
class Recorder(Callback):
    def __init__(self):
        self.events, self.rows, self.closed = [], [], 0

    def on_event(self, event, state):
        self.events.append(event)
        super().on_event(event, state)

    def on_log(self, row, state):
        self.rows.append(dict(row))

    def close(self):
        self.closed += 1


def test_callback_sees_the_events_and_every_row_and_saves_nothing(tmp_path):
    rec = Recorder()
    Trainer(Recipe.from_dict(tiny()), tmp_path / "with", callbacks=[rec], verbose=False, progress=False).fit()
    run(tmp_path, "without").fit()
    assert rec.rows == read_metrics(tmp_path / "with")
    assert rec.events[0] is Event.FIT_START and rec.events[-1] is Event.CHECKPOINT
    assert rec.events.count(Event.STEP_END) == 12 and Event.FIT_END in rec.events and rec.closed == 1
    a, b = checkpoint.load(tmp_path / "with"), checkpoint.load(tmp_path / "without")
    assert a.meta.keys() == b.meta.keys()
    assert all(torch.equal(a.model[k], b.model[k]) for k in a.model)


def test_csv_and_tensorboard_loggers_write_every_row(tmp_path):
    run(tmp_path, train={"log_to": ["jsonl", "csv", "tensorboard"]}).fit()
    rows = read_metrics(tmp_path / "run")
    import csv
    with open(tmp_path / "run" / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    assert [int(r["step"]) for r in table] == [r["step"] for r in rows]
    assert [float(r["val_loss"]) for r in table if r["val_loss"]] == [r["val_loss"] for r in rows if "val_loss" in r]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    val = [(e.step, e.value) for e in acc.Scalars("val_loss")]
    assert val == [(r["step"], pytest.approx(r["val_loss"])) for r in rows if "val_loss" in r]
    assert "lr" in acc.Tags()["scalars"]


def test_csv_logger_is_rebuilt_on_resume(tmp_path):
    train = {"log_to": ["csv"], "checkpoint_interval": 6}
    run(tmp_path, train=train).fit(until=9)  # rows up to 9, checkpoint at 6... and 9 (until)
    Trainer(Recipe.from_dict(tiny(train=train)), tmp_path / "run", resume=tmp_path / "run" / "checkpoints" /
            "step_00000006", verbose=False, progress=False).fit()
    import csv
    with open(tmp_path / "run" / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == [r["step"] for r in read_metrics(tmp_path / "run")] == sorted(set(steps))


def test_wandb_runs_offline_when_installed_and_is_refused_when_not(tmp_path, monkeypatch):
    import importlib.util
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(ConfigError, match="wandb needs the wandb package"):
            run(tmp_path, "missing", train={"log_to": ["wandb"]})
        assert not (tmp_path / "missing").exists()
    calls = []

    class FakeRun:
        def log(self, values, step):
            calls.append(("log", step, values))

        def finish(self):
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.util.spec_from_loader("wandb", loader=None)
    fake.init = lambda **kw: calls.append(("init", kw)) or FakeRun()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run(tmp_path, train={"log_to": ["wandb"]}).fit()
    assert calls[0][0] == "init" and calls[0][1]["mode"] == "offline"
    assert calls[0][1]["config"]["train"]["log_to"] == ["wandb"]
    assert [c[1] for c in calls if c[0] == "log"] == [r["step"] for r in read_metrics(tmp_path / "run")]
    assert calls[-1] == ("finish",)


def test_missing_tensorboard_is_refused_before_writing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match="leantrain\\[tensorboard\\]"):
        run(tmp_path, train={"log_to": ["tensorboard"]})
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------- retention, best
def step_dirs(run_dir):
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step_"))


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_retention_keeps_exactly_the_newest(tmp_path, keep):
    run(tmp_path, train={"checkpoint_interval": 2, "keep_checkpoints": keep}).fit()
    assert step_dirs(tmp_path / "run") == [f"step_{s:08d}" for s in (12, 10, 8)[:keep]][::-1]


def scripted_evaluations(monkeypatch, losses):
    """Evaluations return ``losses`` in turn (the model is not scored)."""
    it = iter(losses)
    monkeypatch.setattr("leantrain.core.trainer.evaluate",
                        lambda *a, **k: EvalResult(loss=next(it), loss_se=0.0, n=1))


def test_keep_best_keeps_the_best_validation_checkpoint_and_resumes_from_it(tmp_path, monkeypatch):
    # evaluations at steps 0, 2, 4, ..., 12: the best after training is step 4
    scripted_evaluations(monkeypatch, [5.0, 4.0, 3.0, 3.5, 3.2, 3.1, 3.3] + [3.0] * 20)
    train = {"eval_interval": 2, "checkpoint_interval": 2, "keep_checkpoints": 1, "keep_best": True}
    run(tmp_path, train=train).fit()
    assert step_dirs(tmp_path / "run") == ["step_00000004", "step_00000012"]
    best = tmp_path / "run" / "checkpoints" / "best"
    assert best.read_text().strip() == "step_00000004"
    assert checkpoint.read_meta(best)["val_loss"] == 3.0
    t = Trainer(Recipe.from_dict(tiny(train=train)), tmp_path / "run", resume=best, verbose=False, progress=False)
    assert t.state.step == 4
    # resuming an older checkpoint never deletes the newer one until the run replaces it
    t.fit(until=8)
    assert "step_00000012" in step_dirs(tmp_path / "run")
    # the command line takes the pointer too, and continues the run in its own directory
    assert main(["train", "--resume", str(best), "--quiet"]) == 0
    assert checkpoint.read_meta(tmp_path / "run")["step"] == 12


def test_resume_best_of_a_run_without_keep_best_says_so(tmp_path, capsys):
    run(tmp_path).fit()
    code = main(["train", "--resume", str(tmp_path / "run" / "checkpoints" / "best"), "--quiet"])
    assert code == 2 and "trained without train.keep_best" in capsys.readouterr().err


# ------------------------------------------------------------------------------- early stopping
def test_early_stopping_ends_the_run_cleanly_with_its_reason(tmp_path, monkeypatch):
    scripted_evaluations(monkeypatch, [5.0, 4.0, 4.5, 4.2] + [9.0] * 20)
    s = run(tmp_path, train={"eval_interval": 2, "early_stop_patience": 2}).fit()
    assert s["steps"] == 6 and s["finished"] is True
    assert "did not improve for 2 evaluations" in s["early_stopped"] and "step 2" in s["early_stopped"]
    assert checkpoint.read_meta(tmp_path / "run")["step"] == 6
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["early_stopped"] == s["early_stopped"]
    again = Trainer(Recipe.from_dict(tiny(train={"eval_interval": 2, "early_stop_patience": 2})), tmp_path / "run",
                    resume=tmp_path / "run", verbose=False, progress=False).fit()
    assert again["steps"] == 6  # a stopped run stays stopped


# ------------------------------------------------------------------------------- schedules, optimizers
def test_schedules():
    def cfg(**kw):
        train = {"max_steps": 100, "warmup_steps": 10, "lr": 1.0, "min_lr": 0.1, **kw}
        return Recipe.from_dict(tiny(train=train)).train
    old = cfg()  # cosine: nanoGPT's formula, as before
    for step in (0, 9, 10, 37, 99, 150):
        if step < 10:
            want = (step + 1) / 11
        elif step >= 100:
            want = 0.1
        else:
            want = 0.1 + 0.5 * (1 + math.cos(math.pi * (step - 10) / 90)) * 0.9
        assert lr_at(step, old) == want
    lin = cfg(schedule="linear")
    assert lr_at(10, lin) == 1.0 and lr_at(55, lin) == pytest.approx(0.55) and lr_at(100, lin) == 0.1
    const = cfg(schedule="constant")
    assert [lr_at(s, const) for s in (10, 50, 200)] == [1.0, 1.0, 1.0]
    wsd = cfg(schedule="wsd", wsd_decay=0.2)  # stable until step 80, linear to 0.1 at 100
    assert lr_at(79, wsd) == 1.0 and lr_at(90, wsd) == pytest.approx(0.55) and lr_at(100, wsd) == 0.1
    with pytest.raises(ConfigError, match="wsd_decay"):
        cfg(schedule="wsd", wsd_decay=0.0)


@pytest.mark.parametrize("optimizer", ["adafactor", "sgd"])
def test_optimizers_train_and_resume_exactly(tmp_path, optimizer):
    full = run(tmp_path, "full", train={"optimizer": optimizer}).fit()
    run(tmp_path, "part", train={"optimizer": optimizer}).fit(until=5)
    resumed = Trainer(Recipe.from_dict(tiny(train={"optimizer": optimizer})), tmp_path / "part",
                      resume=tmp_path / "part", verbose=False, progress=False).fit()
    assert resumed["final_val_loss"] == full["final_val_loss"]
    assert full["final_val_loss"] < read_metrics(tmp_path / "full")[0]["val_loss"]


# ------------------------------------------------------------------------------- CLI
def test_dry_run_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["train", "--dry-run", "--out", "runs/x", "--set", "model.n_layer=2", "model.n_embd=32",
                 "model.n_head=2", "train.max_steps=10", "train.grad_accum_steps=2", "train.log_to=[csv]"])
    out = capsys.readouterr().out
    assert code == 0 and list(tmp_path.iterdir()) == []
    assert "parameters" in out and "device: cpu" in out and "FLOPs per step" in out and "grad_accum_steps: 2" in out


def test_dry_run_reports_what_a_run_would_refuse(tmp_path, capsys):
    run(tmp_path).fit()
    before = sorted(p.name for p in (tmp_path / "run").rglob("*"))
    code = main(["train", "--dry-run", "--out", str(tmp_path / "run"), "--set", "train.max_steps=3"])
    assert code == 2 and "already holds another run" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == before


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("leantrain 0.")


def test_verbose_run_prints_device_and_resolved_recipe(tmp_path, capsys):
    Trainer(Recipe.from_dict(tiny(train={"max_steps": 2})), None, verbose=True, progress=False).fit()
    out = capsys.readouterr().out
    assert "leantrain: device cpu" in out and "precision fp32" in out
    assert "recipe:\n" in out and "  train:\n" in out and "    max_steps: 2\n" in out


def test_accumulated_run_trains_like_the_big_batch_run(tmp_path):
    # batch 8 draws the same windows as two micro-batches of 4 (one generator, drawn in turn)
    run(tmp_path, "big", train={"batch_size": 8}).fit()
    run(tmp_path, "accum", train={"batch_size": 4, "grad_accum_steps": 2}).fit()
    a = [r["train_loss"] for r in read_metrics(tmp_path / "big") if "train_loss" in r]
    b = [r["train_loss"] for r in read_metrics(tmp_path / "accum") if "train_loss" in r]
    assert len(a) == 4 and b == pytest.approx(a, rel=1e-5)


def test_methods_log_the_mean_of_their_per_micro_batch_losses(tmp_path):
    # local's per-module losses and the distillation's loss parts, logged at every step: two
    # micro-batches of 4 log what one batch of 8 (the same windows) logs, not the last micro-batch's
    from .method_settings import trained_run
    ancestry = trained_run(tmp_path, "ancestry", {"n_embd": 32})
    cases = {"local": ([{"name": "local", "variant": "contsup", "modules": 3, "context": "R1E"}],
                       [f"local/loss{k}" for k in range(3)]),
             "learngene_distill": ([{"name": "learngene_distill", "ancestry": ancestry}],
                                   [f"learngene_distill/{p}" for p in ("ce", "soft_ce", "hidden_mse", "attn_mse")])}
    for name, (methods, keys) in cases.items():
        logged = []
        for batch, accum in ((8, 1), (4, 2)):
            out = f"{name}_{accum}"
            run(tmp_path, out, train={"batch_size": batch, "grad_accum_steps": accum, "log_interval": 1},
                methods=methods).fit()
            rows = [r for r in read_metrics(tmp_path / out) if "train_loss" in r]
            logged.append([[r[k] for k in keys] for r in rows])
        assert len(logged[0]) == len(logged[1]) == 12, name
        for big, acc in zip(*logged):
            assert acc == pytest.approx(big, rel=1e-5), name


def test_step_strategies_refuse_fp16_with_their_reason(tmp_path):
    from .method_settings import options_for
    cases = {"local": "steps per module inside its step", "grow": "honours only fp32 / bf16"}
    for name, reason in cases.items():
        r = Recipe.from_dict(tiny(train={"precision": "fp16", "device": "cpu"},
                                  methods=[{"name": name, **options_for(name, tmp_path)}]))
        with pytest.raises(ConfigError, match=reason):
            Trainer(r, tmp_path / f"run_{name}", verbose=False)
        assert not (tmp_path / f"run_{name}").exists()
