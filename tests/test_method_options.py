"""The method table (tests/method_settings.py) with issue 23's step options: every registered method
trains with train.grad_accum_steps: 2 and resumes exactly, and trains with train.compile: true (the
cheap eager backend) — or refuses the option up front with its reason."""
import math

import pytest
import torch
import torch._dynamo

from leantrain import ConfigError, Recipe, Trainer
from leantrain.registry import list_methods

from .conftest import read_metrics, tiny
from .method_settings import options_for

NAMES = [m.name for m in list_methods()]
# methods that refuse an option, and the reason their error gives
REFUSES = {("local", "compile"): "runs its modules one by one"}


def recipe(name, options, train):
    return Recipe.from_dict(tiny(model={"dropout": 0.1}, train={"log_interval": 1, **train},
                                 methods=[{"name": name, **options}]))


@pytest.mark.parametrize("name", NAMES)
def test_method_with_gradient_accumulation_trains_and_resumes_exactly(name, tmp_path):
    options, train = options_for(name, tmp_path), {"grad_accum_steps": 2}
    if (name, "accum") in REFUSES:
        with pytest.raises(ConfigError, match=REFUSES[name, "accum"]):
            Trainer(recipe(name, options, train), tmp_path / "full", verbose=False, progress=False)
        return
    full = Trainer(recipe(name, options, train), tmp_path / "full", verbose=False, progress=False).fit()
    assert full["effective_batch_size"] == 8 and math.isfinite(full["final_val_loss"])
    Trainer(recipe(name, options, train), tmp_path / "part", verbose=False, progress=False).fit(until=5)
    resumed = Trainer(recipe(name, options, train), tmp_path / "part", resume=tmp_path / "part", verbose=False,
                      progress=False).fit()
    assert resumed["final_val_loss"] == full["final_val_loss"]
    a = [r.get("train_loss") for r in read_metrics(tmp_path / "full")]
    b = [r.get("train_loss") for r in read_metrics(tmp_path / "part")]
    assert a == b, f"{name}: train_loss differs after resume"


@pytest.mark.parametrize("name", NAMES)
@torch._dynamo.config.patch(recompile_limit=2)
def test_method_with_compile_trains(name, tmp_path):
    # schedules that set Python attributes per step (dropout rates, sampled paths) recompile per value;
    # a low limit keeps the table fast (past it dynamo runs that frame eagerly)
    torch._dynamo.reset()  # no compiled frames (or exhausted recompile limits) from earlier tests
    options, train = options_for(name, tmp_path), {"compile": True, "compile_backend": "eager"}
    if (name, "compile") in REFUSES:
        with pytest.raises(ConfigError, match=REFUSES[name, "compile"]):
            Trainer(recipe(name, options, train), tmp_path / "run", verbose=False, progress=False)
        assert not (tmp_path / "run").exists()
        return
    s = Trainer(recipe(name, options, train), tmp_path / "run", verbose=False, progress=False).fit()
    assert math.isfinite(s["final_val_loss"]) and s["steps"] == 12
    if s["step_shapes"] < s["steps"]:  # some step ran compiled (a shape's first step is measured eagerly)
        assert s["compiled_graphs"] >= 1
