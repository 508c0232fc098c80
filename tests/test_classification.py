"""Classification end to end: every model × data kind it supports trains and resumes bit-exactly,
metrics and summaries, depth methods on a ResNet, refusals with one-line reasons, the CLI."""
import json

import numpy as np
import pytest
import torch

from leantrain import ConfigError, LeantrainError, Recipe, Trainer
from leantrain.cli import main
from leantrain.core import checkpoint

from .conftest import read_metrics, tiny
from .test_data_kinds import write_cifar

RESNET = {"name": "resnet", "depth": 8, "width": 0.25}
TRAIN = {"max_steps": 8, "batch_size": 8, "warmup_steps": 1, "eval_interval": 4, "log_interval": 2,
         "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}


def make_npz(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(60, 3, 8, 8), dtype=np.uint8)
    path = tmp_path / "img.npz"
    np.savez(path, x=x, y=np.arange(60) % 3, x_test=x[:10], y_test=np.arange(10) % 3)
    return str(path)


def data_kinds(tmp_path):
    return {"mnist1d": {"name": "mnist1d", "num_samples": 400, "augment": True},
            "npz": {"name": "npz", "path": make_npz(tmp_path), "augment": True},
            "cifar10": {"name": "cifar10", "path": write_cifar(tmp_path / "cifar", records=(4,) * 5, test=4)}}


def recipe(data, model=RESNET, methods=(), **train) -> Recipe:
    return Recipe.from_dict({"data": data, "model": model, "train": {**TRAIN, **train}, "methods": list(methods)})


def fit(r, out, **kw):
    until = kw.pop("until", None)
    return Trainer(r, out, verbose=False, progress=False, **kw).fit(until=until)


@pytest.mark.parametrize("kind", ["mnist1d", "npz", "cifar10"])
def test_resnet_trains_and_resumes_exactly_on_every_classification_kind(tmp_path, kind):
    data = data_kinds(tmp_path)[kind]
    full = fit(recipe(data), tmp_path / "full")
    fit(recipe(data), tmp_path / "part", until=3)
    resumed = fit(recipe(data), tmp_path / "part", resume=tmp_path / "part")
    assert resumed["final_val_loss"] == full["final_val_loss"]
    for key in ("train_loss", "val_loss", "val_error"):
        assert [r.get(key) for r in read_metrics(tmp_path / "part")] == \
               [r.get(key) for r in read_metrics(tmp_path / "full")]
    for key in ("final_val_error", "best_val_error", "samples_per_second"):
        assert key in full
    assert "tokens_per_second" not in full
    assert "test_error" in full  # every kind here holds out a test split
    rows = read_metrics(tmp_path / "full")
    assert rows[-1]["samples"] == 8 * 8 and 0 <= rows[-1]["val_error"] <= 100


def test_metrics_and_test_split_are_whole_split_figures(tmp_path):
    data = data_kinds(tmp_path)["mnist1d"]
    t = Trainer(recipe(data), tmp_path, verbose=False, progress=False)
    s = t.fit()
    val = t.evaluate_split("val")
    assert val.n == 32 and s["final_val_loss"] == pytest.approx(val.loss) and s["final_val_error"] == val.error
    test = t.evaluate_split("test")
    assert test.n == 80 and s["test_error"] == test.error and s["test_loss"] == pytest.approx(test.loss)
    # error is the share of wrong argmax predictions, with its binomial standard error
    (x, y), = t.data.eval_batches("test", 1000, None)
    with torch.no_grad():
        wrong = (t.state.model.eval()(x)[0].argmax(-1) != y).float().mean().item()
    assert test.error == pytest.approx(100 * wrong) and test.error_se == pytest.approx(
        100 * (wrong * (1 - wrong) / 80) ** 0.5)


@pytest.mark.parametrize("method", [
    {"name": "stochastic_depth", "drop_rate": 0.5},
    {"name": "raptr", "stages": [{"path_len": 5}, {"path_len": 9}]},
    {"name": "pld", "gamma": 0.2},
])
def test_depth_methods_run_on_a_resnet_and_never_skip_downsampling_blocks(tmp_path, method):
    r = recipe(data_kinds(tmp_path)["mnist1d"], model={**RESNET, "depth": 20}, methods=[method], max_steps=12)
    seen = []

    class Spy(Trainer):
        def train_step(self):
            super().train_step()
            seen.append([bp.index for bp in self.state.model.plan or []])

    Spy(r, tmp_path / "run", verbose=False, progress=False).fit()
    always = Trainer(r, None, verbose=False, progress=False).state.model.always_run
    assert always == (3, 6)
    assert any(plan and len(plan) < 9 for plan in seen)  # blocks were skipped
    assert all(set(always) <= set(plan) for plan in seen if plan)
    fit(r, tmp_path / "part", until=5)
    fit(r, tmp_path / "part", resume=tmp_path / "part")
    assert [x.get("train_loss") for x in read_metrics(tmp_path / "part")] == \
           [x.get("train_loss") for x in read_metrics(tmp_path / "run")]


@pytest.mark.parametrize("data, model, methods, message", [
    ("mnist1d", {"name": "gpt"}, [], "model 'gpt' consumes token sequences (language modelling), but data "
                                     "'mnist1d' is labelled arrays (classification)"),
    ("text", RESNET, [], "model 'resnet' consumes labelled arrays (classification), but data 'text' is token"),
    ("mnist1d", RESNET, [{"name": "dynamic_dropout"}], "has no dropout sites to schedule"),
    ("mnist1d", RESNET, [{"name": "raptr", "stages": [{"path_len": 9, "width": 0.5}],
                          "allow_partial_final": True}], "width sampling keeps a subset of attention heads"),
    ("mnist1d", RESNET, [{"name": "stacking"}], "every block must have the same shape"),
    ("mnist1d", {**RESNET, "dims": 2}, [], "model.dims: 2 does not fit the data's sample shape (1, 40)"),
])
def test_combinations_that_cannot_work_are_refused_up_front(tmp_path, data, model, methods, message):
    d = data_kinds(tmp_path).get(data, {"name": "text"})
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Trainer(recipe(d, model=model, methods=methods), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_resuming_a_run_of_another_data_kind_is_refused(tmp_path):
    fit(Recipe.from_dict(tiny(train={"max_steps": 3})), tmp_path)
    with pytest.raises(LeantrainError, match="was trained on data 'text'; the recipe has 'mnist1d'"):
        Trainer(recipe(data_kinds(tmp_path)["mnist1d"]), tmp_path, resume=tmp_path)


def test_cli_evaluate_and_sample_on_a_classifier(capsys, tmp_path):
    import yaml
    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump({"data": data_kinds(tmp_path)["mnist1d"], "model": RESNET, "train": TRAIN}))
    assert main(["train", "--recipe", str(f), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--ckpt", str(tmp_path / "run"), "--split", "test",
                 "--out", str(tmp_path / "eval.json")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "eval.json").read_text())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert printed["samples"] == 80 and printed["test_error"] == summary["test_error"]
    assert main(["sample", "--ckpt", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "sample generates text from a language model" in err and len(err.strip().splitlines()) == 1
    assert main(["evaluate", "--ckpt", str(tmp_path / "run"), "--split", "train"]) == 0


def test_text_runs_have_no_test_split(capsys, tmp_path):
    fit(Recipe.from_dict(tiny(train={"max_steps": 2})), tmp_path)
    assert main(["evaluate", "--ckpt", str(tmp_path), "--split", "test"]) == 2
    assert "text data has no 'test' split" in capsys.readouterr().err
    assert main(["evaluate", "--ckpt", str(tmp_path)]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["val_loss"] > 0 and row["samples"] > 1000  # every window of the validation split
    assert checkpoint.load(tmp_path).meta["step"] == 2
