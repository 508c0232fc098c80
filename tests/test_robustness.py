"""A run is never lost: the LR schedule is total, a non-finite loss stops cleanly (or is skipped),
Ctrl-C checkpoints, every bad path is a one-line exit 2, and a fuzzed config surface never raises
anything but the library's one-line errors."""
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leantrain import ConfigError, LeantrainError, Recipe, Trainer
from leantrain.cli import main
from leantrain.core import checkpoint
from leantrain.core.trainer import lr_at
from leantrain.data import TextConfig
from leantrain.models.gpt import GPTConfig
from leantrain.errors import RunStopped
from leantrain.recipe import TrainConfig
from leantrain.registry import list_methods

from .conftest import read_metrics, tiny
from .contract_nonfinite import NaNLossAt
from .method_settings import SETTINGS

ROOT = Path(__file__).resolve().parents[1]


def fit(recipe, out, **kw):
    until = kw.pop("until", None)
    return Trainer(recipe, out, verbose=False, progress=False, **kw).fit(until=until)


# ----------------------------------------------------------------------------------- LR schedule
@settings(max_examples=300, derandomize=True, database=None)
@given(max_steps=st.integers(-3, 400), warmup=st.integers(-3, 500), decay=st.none() | st.integers(-3, 600),
       lr=st.floats(allow_nan=True, allow_infinity=True) | st.integers(-2, 5),
       min_lr=st.floats(allow_nan=True, allow_infinity=True) | st.integers(-2, 5))
def test_lr_schedule_is_total(max_steps, warmup, decay, lr, min_lr):
    try:
        t = Recipe.from_dict({"train": {"max_steps": max_steps, "warmup_steps": warmup, "lr_decay_steps": decay,
                                        "lr": lr, "min_lr": min_lr}}).train
    except ConfigError as e:
        assert "\n" not in str(e)
        return
    for step in sorted({0, 1, t.warmup_steps - 1, t.warmup_steps, t.decay_steps - 1, t.decay_steps,
                        t.max_steps - 1, t.max_steps} | set(range(0, t.max_steps + 1, 7))):
        if 0 <= step <= t.max_steps:
            v = lr_at(step, t)
            assert math.isfinite(v) and 0 <= v <= t.lr, (step, v)


@pytest.mark.parametrize("steps, warmup", [(12, 12), (12, 30)])
def test_warmup_as_long_as_the_run_finishes(tmp_path, capsys, steps, warmup):
    r = Recipe.from_dict(tiny(train={"max_steps": steps, "warmup_steps": warmup}))
    s = Trainer(r, tmp_path, verbose=True, progress=False).fit()
    assert s["finished"] and math.isfinite(s["final_val_loss"])
    out = capsys.readouterr().out
    assert out.count("never reaching train.lr") == 1
    assert checkpoint.load(tmp_path).meta["step"] == steps


def test_nonfinite_numbers_are_refused():
    for value in (".inf", ".nan", "-.inf"):
        with pytest.raises(ConfigError, match="train.lr: must be a finite number"):
            Recipe.load(None, [f"train.lr={value}"])


# ----------------------------------------------------------------------------------- divergence
def test_nonfinite_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
    r = Recipe.from_dict(tiny(train={"checkpoint_interval": 4, "log_interval": 1}))
    with pytest.raises(RunStopped, match=r"non-finite loss nan at step 7, lr .*; last finite loss .*; "
                                         r"the latest checkpoint is step 4") as e:
        fit(r, tmp_path, methods=[NaNLossAt(step=6)])
    assert e.value.exit_code == 3
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["finished"] is False and "non-finite loss" in s["stopped"] and s["steps"] == 6
    ckpt = checkpoint.load(tmp_path)
    assert ckpt.meta["step"] == 4 and all(torch.isfinite(v).all() for v in ckpt.model.values())
    # nothing after the last good step was logged with a NaN, and the run resumes from step 4
    assert all(math.isfinite(v) for row in read_metrics(tmp_path) for v in row.values()
               if isinstance(v, float))
    s = fit(r, tmp_path, resume=tmp_path, methods=[NaNLossAt(step=-1)])
    assert s["finished"] and s["steps"] == 12


def test_nonfinite_steps_can_be_skipped(tmp_path):
    r = Recipe.from_dict(tiny(train={"on_nonfinite": "skip", "log_interval": 1}))
    s = fit(r, tmp_path / "skip", methods=[NaNLossAt(step=6)])
    assert s["finished"] and s["nonfinite_skipped"] == 1
    rows = read_metrics(tmp_path / "skip")
    assert [row["nonfinite_skipped"] for row in rows if "nonfinite_skipped" in row] == [1]
    assert all(math.isfinite(row["train_loss"]) for row in rows if "train_loss" in row)
    # a skipped step changes nothing: the weights after step 7 equal those after step 6
    t = Trainer(r, tmp_path / "probe", methods=[NaNLossAt(step=6)], verbose=False, progress=False)
    t.fit(until=6)
    before = {k: v.clone() for k, v in t.state.model.state_dict().items()}
    t.train_step()
    assert all(torch.equal(before[k], v) for k, v in t.state.model.state_dict().items())


def test_real_divergence_on_the_cli(capsys, tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump(tiny(train={"checkpoint_interval": 1})))
    code = main(["train", "--recipe", str(f), "--out", str(tmp_path / "run"), "--quiet",
                 "--set", "train.lr=1000", "train.grad_clip=0", "train.warmup_steps=0"])
    err = capsys.readouterr().err
    assert code == 3 and err.startswith("leantrain: stopped: non-finite") and len(err.strip().splitlines()) == 1
    ckpt = checkpoint.load(tmp_path / "run")
    assert all(torch.isfinite(v).all() for v in ckpt.model.values())


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_ranks_agree_on_a_nonfinite_step(tmp_path, policy):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(ROOT / "tests" / "ddp_nonfinite_worker.py"), str(tmp_path / "run"), policy],
                       capture_output=True, text=True, env=env, timeout=240, cwd=ROOT)
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    if policy == "stop":  # only rank 1 saw the NaN, but both stop at step 6 with exit code 3
        assert p.returncode != 0 and p.stderr.count("non-finite loss nan at step 6") == 1, p.stderr
        assert p.stderr.count("non-finite loss or gradient on another rank at step 6") == 1, p.stderr
        assert set(re.findall(r"exitcode\s*:\s*(-?\d+)", p.stderr)) <= {"3", "-15"}, p.stderr
        assert s["finished"] is False and checkpoint.load(tmp_path / "run").meta["step"] == 4
    else:
        assert p.returncode == 0, p.stderr[-3000:]
        assert s["finished"] and s["nonfinite_skipped"] == 1


# ----------------------------------------------------------------------------------- interruption
def test_ctrl_c_saves_a_checkpoint_and_resumes_exactly(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump(tiny(train={"max_steps": 4000, "log_interval": 1, "eval_interval": 2000})))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "leantrain", "train", "--recipe", str(f), "--out", str(run),
                          "--quiet"], stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    deadline = time.time() + 60
    while time.time() < deadline and not ((run / "metrics.jsonl").exists()
                                          and len((run / "metrics.jsonl").read_text().splitlines()) > 20):
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "stopped: interrupted after step" in err and "Traceback" not in err
    step = checkpoint.load(run).meta["step"]
    s = json.loads((run / "summary.json").read_text())
    assert 20 <= step < 4000 and s["finished"] is False and s["steps"] == step
    # resuming continues exactly where the uninterrupted run would be
    r = Recipe.from_dict(tiny(train={"max_steps": 4000, "log_interval": 1, "eval_interval": 2000}))
    fit(r, run, resume=run, until=step + 5)
    fit(r, tmp_path / "ref", until=step + 5)
    assert [x.get("train_loss") for x in read_metrics(run)] == [x.get("train_loss") for x in read_metrics(tmp_path / "ref")]


# ----------------------------------------------------------------------------------- paths
@pytest.mark.parametrize("argv, message", [
    (["train", "--out", "{file}"], "output directory {file} is a file"),
    (["train", "--out", "{file}/run"], "lies inside {file}, which is a file"),
    (["train", "--out", "/proc/leantrain-test/run"], "cannot write to output directory"),
    (["train", "--resume", "{file}"], "{file} is a file; give a run or checkpoint directory"),
    (["sample", "--ckpt", "{file}"], "{file} is a file"),
    (["evaluate", "--ckpt", "{file}"], "{file} is a file"),
    (["bench", "overhead", "--out", "{file}"], "--out {file} is a file"),
    (["bench", "overhead", "--out", "{file}/x"], "lies inside {file}"),
])
def test_path_errors_are_one_line_exit_2(capsys, tmp_path, argv, message):
    f = tmp_path / "afile"
    f.write_text("keep me")
    code = main([a.format(file=f) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and message.format(file=f) in err and len(err.strip().splitlines()) == 1
    assert f.read_text() == "keep me"


# ----------------------------------------------------------------------------------- fuzzing
KEYS = {"data": ["name", "val_fraction", "val_seed", "train_chars", "val_fraction", "augment"],
        "model": ["name", "n_layer", "n_head", "n_embd", "block_size", "vocab_size", "dropout", "bias", "n_layer",
                  "dropout", "depth"],
        "train": [f for f in TrainConfig.__dataclass_fields__]}
METHOD_NAMES = [m.name for m in list_methods()]


def misspell(word: str) -> st.SearchStrategy:
    return st.integers(0, max(len(word) - 1, 0)).map(lambda i: word[:i] + word[i + 1:] + "x")


values = st.one_of(st.integers(-3, 40), st.floats(allow_nan=True, allow_infinity=True, width=32),
                   st.sampled_from([0, 1, 2, 0.5, 1e-3, True, False, None, "", "gpt", "text", "resnet", "none",
                                    "mnist1d", "linear", "cosine", [], [1, 2], {}, {"a": 1}, "1e-3"]),
                   st.text(max_size=5))


def plausible(section: str, key: str) -> st.SearchStrategy:
    """Values of the field's own type near the tiny recipe's scale, so that many edits stay valid
    and the run path (not just the config checks) is exercised."""
    cls = {"train": TrainConfig, "model": GPTConfig, "data": TextConfig}[section]
    field = cls.__dataclass_fields__.get(key)
    if field is None:
        return values
    current = tiny().get(section, {}).get(key, field.default)
    tp = typing.get_type_hints(cls)[key]
    options = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    base = options[0]
    if typing.get_origin(base) is typing.Literal:
        return st.sampled_from(typing.get_args(base))
    if base is bool:
        return st.booleans()
    if base is int:
        hi = max(2, current if isinstance(current, int) else 8)
        return st.integers(max(0, hi // 4), hi)
    if base is float:
        hi = current if isinstance(current, float) and current > 0 else 1.0
        return st.floats(0, 2 * hi)
    return values


@st.composite
def edits(draw):
    """(section, key, value) edits to the tiny recipe: valid keys, misspelt ones, unknown ones."""
    section = draw(st.sampled_from(["train"] * 5 + ["model"] * 3 + ["data"] * 2 + ["methods"] * 3 + ["bogus"]))
    if section == "methods":
        name = draw(st.sampled_from(METHOD_NAMES * 4) | st.text(max_size=6))
        entry = SETTINGS.get(name, {})
        opts = {} if callable(entry) else dict(entry)  # entries that need a made run: options alone
        for _ in range(draw(st.integers(0, 1))):
            key = draw(st.sampled_from(sorted(opts) or ["x"]) | st.text(max_size=4))
            opts[key] = draw(values)
        return section, None, [{"name": name, **opts}] if draw(st.integers(0, 4)) else draw(values)
    key = draw(st.sampled_from(KEYS.get(section, ["x"])))
    if draw(st.integers(0, 7)) == 0:
        key = draw(misspell(key))
    if section != "bogus" and draw(st.integers(0, 3)):
        return section, key, draw(plausible(section, key))
    return section, key, draw(values)


def apply(edit_list) -> dict:
    d = tiny(train={"max_steps": 3, "eval_interval": 2, "eval_iters": 1})
    for section, key, value in edit_list:
        if section == "methods":
            d["methods"] = value
        elif section == "bogus":
            d[key] = value
        else:
            d.setdefault(section, {})[key] = value
    return d


def check_recipe_or_one_line_error(d: dict, out: Path, small_text: Path) -> None:
    d.setdefault("data", {}).setdefault("path", str(small_text))
    try:
        recipe = Recipe.from_dict(d)
        Trainer(recipe, out, overwrite=True, verbose=False, progress=False).fit(until=2)
    except LeantrainError as e:
        assert str(e) and "\n" not in str(e), repr(e)


@pytest.fixture(scope="module")
def small_text(tmp_path_factory):
    f = tmp_path_factory.mktemp("text") / "small.txt"
    f.write_text(Path(ROOT / "leantrain" / "data" / "datasets" / "shakespeare_char.txt").read_text()[:20000])
    return f


@settings(max_examples=30, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(edits(), min_size=1, max_size=3))
def test_fuzzed_recipes_build_and_run_or_fail_in_one_line(tmp_path, small_text, edit_list):
    check_recipe_or_one_line_error(apply(edit_list), tmp_path / "run", small_text)


@pytest.mark.slow
@settings(max_examples=400, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(edits(), min_size=1, max_size=6))
def test_fuzzed_recipes_larger_budget(tmp_path, small_text, edit_list):
    check_recipe_or_one_line_error(apply(edit_list), tmp_path / "run", small_text)
