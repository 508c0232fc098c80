"""The ``grow`` method in the trainer: every operator grows a trained source run, function-preserving
ones start at the source's loss, cost accounting (phase markers, operator FLOPs, the source's cost),
exact resume mid-phase / mid-ramp / after the phase without the source, loading a run at any point,
carried AdamW moments, composition with RaPTr and dynamic dropout, bad input, and DDP."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from leantrain import ConfigError, Event, Recipe, State, Trainer
from leantrain.cli import evaluate_checkpoint, main
from leantrain.core import checkpoint
from leantrain.core.loading import load_trained
from leantrain.methods.growth import Grow, GrowConfig

from .conftest import read_metrics, tiny

ROOT = Path(__file__).resolve().parents[1]
TEXT = (ROOT / "leantrain" / "data" / "datasets" / "shakespeare_char.txt").read_text()[:20000]
NARROW = {"n_layer": 2, "n_head": 1, "n_embd": 16}  # head size 16, the tiny target's (4 × 32, 2 heads)
SAME_WIDTH = {"n_layer": 2}                          # 2 × 32, 2 heads: for the depth-only operators


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    f = tmp_path_factory.mktemp("text") / "small.txt"  # a small validation split keeps whole-split scores cheap
    f.write_text(TEXT)
    return f


def recipe(text, grow: dict | None = None, methods=(), **sections) -> dict:
    sections.setdefault("train", {})
    sections["train"] = {"log_interval": 1, **sections["train"]}
    entries = ([{"name": "grow", "eval_after_growth": False, **grow}] if grow is not None else []) + list(methods)
    return tiny(data={"path": str(text)}, methods=entries, **sections)


def fit(d: dict, out, until=None, resume=None):
    return Trainer(Recipe.from_dict(d), out, resume=resume, overwrite=resume is None, verbose=False,
                   progress=False).fit(until=until)


@pytest.fixture(scope="module")
def sources(tmp_path_factory, text) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    for name, model in (("narrow", NARROW), ("same_width", SAME_WIDTH)):
        fit(recipe(text, model=model, train={"max_steps": 8}), root / name)
    return {"narrow": root / "narrow", "same_width": root / "same_width"}


def summary(run) -> dict:
    return json.loads((Path(run) / "summary.json").read_text())


def losses(run) -> list:
    return [(r["step"], r.get("train_loss"), r.get("val_loss")) for r in read_metrics(run)]


def resumes_exactly(d: dict, tmp_path, until: int, name: str = "run", move_away: Path | None = None) -> list[dict]:
    """Train ``d`` whole and with a stop after ``until`` (then resumed); the metrics must be bit-identical.
    ``move_away``: a directory (the source) renamed before the resume and put back afterwards."""
    fit(d, tmp_path / f"{name}_full")
    fit(d, tmp_path / f"{name}_part", until=until)
    hidden = move_away.with_name(move_away.name + "_moved") if move_away else None
    if hidden:
        move_away.rename(hidden)
    try:
        fit(d, tmp_path / f"{name}_part", resume=tmp_path / f"{name}_part")
    finally:
        if hidden:
            hidden.rename(move_away)
    assert losses(tmp_path / f"{name}_part") == losses(tmp_path / f"{name}_full")
    return read_metrics(tmp_path / f"{name}_full")


# ----------------------------------------------------------------------------------- operators
@pytest.mark.parametrize("operator, source, options, phases", [
    ("mango", "narrow", {"operator_steps": 2}, ["operator"] * 2 + ["target"] * 4),
    ("ligo", "narrow", {"operator_steps": 3}, ["operator"] * 3 + ["target"] * 3),
    ("fpi", "narrow", {}, ["target"] * 6),
    ("aki", "narrow", {}, ["target"] * 6),
    ("net2net", "narrow", {}, ["target"] * 6),
    ("msg", "narrow", {"ramp_steps": 2}, ["ramp"] * 2 + ["target"] * 4),
    ("stackbert", "same_width", {}, ["target"] * 6),
    ("gstack", "same_width", {"g": 2}, ["target"] * 6),
])
def test_every_operator_grows_a_trained_run_and_accounts_for_its_cost(text, sources, tmp_path, operator, source,
                                                                      options, phases):
    run = tmp_path / "run"
    t = Trainer(Recipe.from_dict(recipe(text, {"source": str(sources[source]), "operator": operator, **options},
                                        train={"max_steps": 6})), run, verbose=False, progress=False)
    t.fit()
    rows = read_metrics(run)
    assert [r["grow/phase"] for r in rows[1:]] == phases  # the phase marker of every step
    src = summary(sources[source])
    assert rows[0]["grow/source_train_flops"] == src["train_flops"] > 0
    assert rows[0]["grow/source_wall_seconds"] == src["wall_seconds"] > 0
    shapes = t.meter.flops_by_key
    if operator in ("mango", "ligo"):  # operator steps measured apart from target steps, and dearer
        assert len(shapes) == 2 and max(shapes.values()) > min(shapes.values())
        k = options["operator_steps"]  # then the target's warm-up (train.warmup_steps = 2) scales the run's lr
        assert [r.get("grow/lr_scale") for r in rows[1:]] == [None] * k + [1 / 3, 2 / 3] + [None] * (4 - k)
        assert rows[0]["grow/operator_parameters"] == sum(
            p.numel() for p in Grow(GrowConfig(**{"source": "x", "operator": operator, **options}))._operator(
                load_trained(sources[source]).model, t.state.model.config, torch.Generator()).parameters())
    else:
        assert len(shapes) == 1
    state = checkpoint.read_meta(run)["methods"][0]["state"]
    assert state["grown"] and state["source"]["step"] == 8
    assert state["source"]["model_sha256"] == checkpoint.read_meta(sources[source])["sha256"]["model"]


@pytest.mark.parametrize("operator, options", [("msg", {"ramp_steps": 3}),
                                               ("net2net", {"noise": 0.0, "mapping": "cyclic"}),
                                               ("mango", {"init": "function_preserving", "mapping": "cyclic",
                                                          "operator_steps": 2})])
def test_function_preserving_growth_starts_at_the_source_loss(text, sources, tmp_path, operator, options):
    d = recipe(text, {"source": str(sources["narrow"]), "operator": operator, "eval_after_growth": True, **options},
               train={"max_steps": 4})
    fit(d, tmp_path / "run")
    first = read_metrics(tmp_path / "run")[0]
    src = read_metrics(sources["narrow"])[-1]  # the source's last evaluation: the same fixed batches
    assert first["val_loss"] == pytest.approx(src["val_loss"], abs=2e-5)
    whole = evaluate_checkpoint(sources["narrow"])  # whole split
    key = "grow/val_loss_at_init" if operator == "mango" else "grow/val_loss_after_growth"
    assert first[key] == pytest.approx(whole["val_loss"], abs=2e-5)


# ------------------------------------------------------------------------------------ resume
@pytest.mark.parametrize("operator", ["mango", "ligo"])
def test_operator_phase_resumes_exactly_mid_phase_and_after_it_without_the_source(text, sources, tmp_path, operator):
    src = tmp_path / "source"
    shutil.copytree(sources["narrow"], src)
    d = recipe(text, {"source": str(src), "operator": operator, "operator_steps": 4, "eval_after_growth": True},
               train={"max_steps": 8, "eval_interval": 2})
    rows = resumes_exactly(d, tmp_path, until=2, name="mid", move_away=src)  # mid-phase: the checkpoint has it all
    resumes_exactly(d, tmp_path, until=6, name="after", move_away=src)       # after the phase
    assert "grow/val_loss_at_init" in rows[0] and "grow/val_loss_after_growth" in rows[5]  # logged after step 4
    # Loading a run needs no source either; mid-phase the loaded model is the operator's current target.
    fit(d, tmp_path / "mid", until=2)
    src.rename(tmp_path / "gone")
    ckpt = checkpoint.load(tmp_path / "mid")
    loaded = load_trained(tmp_path / "mid").model
    assert all(torch.equal(p, ckpt.model[n]) for n, p in loaded.named_parameters())
    assert set(ckpt.methods) >= {"grow/source/wte.weight", "grow/adam/" + next(
        k.split("/")[2] for k in ckpt.methods if k.startswith("grow/operator/")) + "/exp_avg"}
    assert evaluate_checkpoint(tmp_path / "after_full")["val_loss"] < 10


def test_msg_resumes_exactly_mid_ramp_and_removes_its_masks(text, sources, tmp_path):
    d = recipe(text, {"source": str(sources["narrow"]), "operator": "msg", "ramp_steps": 6}, train={"max_steps": 9})
    rows = resumes_exactly(d, tmp_path, until=3)
    assert [r.get("grow/mask") for r in rows[1:7]] == pytest.approx([0, 1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6])
    t = Trainer(Recipe.from_dict(d), tmp_path / "again", verbose=False, progress=False)
    t.fit()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in t.state.model.modules())
    assert checkpoint.read_meta(tmp_path / "again")["methods"][0]["state"]["mask_value"] is None


# ------------------------------------------------------------------------------ optimizer state
def test_carry_starts_the_target_from_the_sources_adam_moments(text, sources, tmp_path):
    old = checkpoint.load(sources["same_width"]).optimizer
    d = recipe(text, {"source": str(sources["same_width"]), "operator": "stackbert", "optimizer_state": "carry"},
               train={"max_steps": 2})
    t = Trainer(Recipe.from_dict(d), tmp_path / "run", verbose=False, progress=False)
    t.dispatch(Event.FIT_START)
    params = dict(t.state.model.named_parameters())
    for j in range(4):  # block j copies source block j mod 2, its moments too
        moments = t.state.optimizer.state[params[f"blocks.{j}.mlp.c_fc.weight"]]
        assert torch.equal(moments["exp_avg"], old[f"blocks.{j % 2}.mlp.c_fc.weight/exp_avg"])
        assert moments["step"] == old[f"blocks.{j % 2}.mlp.c_fc.weight/step"]
    d = recipe(text, {"source": str(sources["same_width"]), "operator": "stackbert"}, train={"max_steps": 2})
    reset = Trainer(Recipe.from_dict(d), tmp_path / "reset", verbose=False, progress=False)
    reset.dispatch(Event.FIT_START)
    assert not reset.state.optimizer.state


# ---------------------------------------------------------------------------------- composition
def test_mango_then_raptr_and_dynamic_dropout_resume_exactly_across_the_growth_point(text, sources, tmp_path):
    # RaPTr's stages count from step 0: its first stage (2 of 4 blocks) spans the operator phase, where the
    # functional target runs RaPTr's subnetwork; the target then trains under the rest of its schedule.
    methods = [{"name": "raptr", "stages": [{"path_len": 2}, {"path_len": 3}, {"path_len": 4}],
                "sampling": "fixed_count"},
               {"name": "dynamic_dropout", "schedule": "linear", "p0": 0.2, "p_min": 0.0}]
    d = recipe(text, {"source": str(sources["narrow"]), "operator": "mango", "operator_steps": 4},
               methods=methods, train={"max_steps": 12})
    rows = resumes_exactly(d, tmp_path, until=3)  # growth (the end of the phase) at step 4
    steps = [r for r in rows if "train_loss" in r]
    assert [r["grow/phase"] for r in steps] == ["operator"] * 4 + ["target"] * 8
    assert [r["raptr/path_len"] for r in steps][:4] == [2] * 4 and steps[-1]["raptr/path_len"] == 4
    rates = [r["dynamic_dropout/p"] for r in steps]
    assert rates == sorted(rates, reverse=True) and rates[0] == pytest.approx(0.2)


# ------------------------------------------------------------------------------------ bad input
def _corrupt(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    f = next((dst / "checkpoints").glob("step_*")) / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-8] + b"\0" * 8)
    return dst


def _other_family(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    f = next((dst / "checkpoints").glob("step_*")) / "state.json"
    meta = json.loads(f.read_text())
    meta["recipe"]["model"]["name"] = "stitched_gpt"
    f.write_text(json.dumps(meta))
    return dst


def _other_vocabulary(text: Path, dst: Path) -> Path:
    lower = dst.parent / "lower.txt"
    lower.write_text(text.read_text().lower())
    fit(tiny(data={"path": str(lower)}, model=NARROW, train={"max_steps": 2}), dst)
    return dst


@pytest.mark.parametrize("case, message", [
    ("missing", "methods.grow.source: checkpoint not found"),
    ("corrupt", "methods.grow.source: corrupt checkpoint"),
    ("family", "holds a 'stitched_gpt' model; grow maps a gpt into a gpt"),
    ("vocabulary", "another vocabulary"),
    ("smaller", "model.n_layer: mango cannot shrink the source's n_layer=2 to 1"),
    ("head_size", "model.n_head: fpi keeps the head size 16"),
    ("rank", "methods.grow.rank: must be ≥ 1, got 0"),
    ("operator_steps", "methods.grow.operator_steps: 12 operator steps leave none of train.max_steps=12"),
    ("twice", "methods: 'grow' is listed twice"),
    ("other_operator", "methods.grow.rank: only mango reads it (operator: fpi)"),
    ("carry", "methods.grow.optimizer_state: carry needs"),
    ("msg_raptr", "cannot be combined"),
    ("no_source", "methods.grow.source: give the run or checkpoint directory"),
])
def test_bad_input_is_one_line_exit_2_before_anything_is_written(text, sources, tmp_path, capsys, case, message):
    narrow = str(sources["narrow"])
    grow = {"source": narrow, "operator": "mango", "operator_steps": 4}
    copy = {"source": narrow, "operator": "fpi"}
    model, methods = {}, []
    if case == "missing":
        grow["source"] = str(tmp_path / "nope")
    elif case == "corrupt":
        grow["source"] = str(_corrupt(sources["narrow"], tmp_path / "corrupt"))
    elif case == "family":
        grow["source"] = str(_other_family(sources["narrow"], tmp_path / "family"))
    elif case == "vocabulary":
        grow["source"] = str(_other_vocabulary(text, tmp_path / "vocabulary"))
    elif case == "smaller":
        model = {"n_layer": 1}
    elif case == "head_size":
        grow, model = copy, {"n_head": 4}
    elif case == "rank":
        grow["rank"] = 0
    elif case == "operator_steps":
        grow["operator_steps"] = 12
    elif case == "twice":
        methods = [{"name": "grow", "source": narrow}]
    elif case == "other_operator":
        grow = copy | {"rank": 2}
    elif case == "carry":
        grow["optimizer_state"] = "carry"
    elif case == "msg_raptr":
        grow, methods = copy | {"operator": "msg"}, [{"name": "raptr"}]
    elif case == "no_source":
        del grow["source"]
    f = tmp_path / "recipe.yaml"
    f.write_text(yaml.safe_dump(recipe(text, grow, methods=methods, model=model)))
    out = tmp_path / "out"
    code = main(["train", "--recipe", str(f), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_growth_needs_a_gpt_target():
    state = State(recipe=Recipe.from_dict(tiny()), model=torch.nn.Linear(2, 2), optimizer=None, data=None)
    with pytest.raises(ConfigError, match="methods.grow: grows a gpt"):
        Grow(GrowConfig(source="run")).check(state)


# -------------------------------------------------------------------------------------------- DDP
@pytest.mark.slow
def test_operator_training_under_ddp_keeps_ranks_identical_and_resumes_exactly(text, sources, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    spec = recipe(text, {"source": str(sources["narrow"]), "operator": "mango", "operator_steps": 4,
                         "eval_after_growth": True}, train={"max_steps": 7})
    (tmp_path / "specs.json").write_text(json.dumps({"mango": {"phase": 4, "stop": 2, "recipe": spec}}))
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(ROOT / "tests" / "ddp_grow_worker.py"), str(tmp_path), str(tmp_path / "specs.json")],
                       capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    hashes = [json.loads((tmp_path / f"hashes_rank{r}.json").read_text())["mango"] for r in (0, 1)]
    # The ranks draw different batches: identical operators at the end of the phase (before the re-wrap's
    # broadcast) show the operator's gradients are averaged across ranks.
    assert hashes[0] == hashes[1] and len(hashes[0]) == 3
    phase_end, end, resumed_end = hashes[0]
    assert resumed_end == end  # stopped mid-phase (step 2) and resumed: the same weights at the end
    assert losses(tmp_path / "mango" / "part") == losses(tmp_path / "mango" / "full")
    assert summary(tmp_path / "mango" / "full")["world_size"] == 2
