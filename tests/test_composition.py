"""Methods compose: RaPTr (a subnetwork schedule) and dynamic dropout (a rate schedule) in one run."""
import pytest

from leantrain import Recipe, Trainer

from .conftest import read_metrics, tiny

METHODS = [
    {"name": "raptr", "stages": [{"keep_prob": 0.5}, {"keep_prob": 1.0}], "sampling": "fixed_count"},
    {"name": "dynamic_dropout", "schedule": "linear", "p0": 0.2, "p_min": 0.0},
]


def recipe(methods=METHODS):
    return Recipe.from_dict(tiny(train={"log_interval": 1}, methods=methods))


def test_raptr_with_dynamic_dropout(tmp_path):
    t = Trainer(recipe(), tmp_path / "both", verbose=False, progress=False)
    both = t.fit()
    rows = [r for r in read_metrics(tmp_path / "both") if "train_loss" in r]
    paths = [r["raptr/path_len"] for r in rows]
    rates = [r["dynamic_dropout/p"] for r in rows]
    assert max(paths[:6]) == 3 and paths[6:] == [4] * 6  # 2 fixed + half of the other 2, then all
    assert rates == sorted(rates, reverse=True) and rates[0] == pytest.approx(0.2)
    assert t.state.model.plan is None  # RaPTr leaves the full model behind
    plain = Trainer(recipe([METHODS[1]]), tmp_path / "dropout_only", verbose=False, progress=False).fit()
    assert both["train_flops"] < plain["train_flops"]


def test_composed_run_resumes_exactly(tmp_path):
    full = Trainer(recipe(), tmp_path / "full", verbose=False, progress=False).fit()
    Trainer(recipe(), tmp_path / "part", verbose=False, progress=False).fit(until=5)
    resumed = Trainer(recipe(), tmp_path / "part", resume=tmp_path / "part", verbose=False,
                      progress=False).fit()
    assert resumed["final_val_loss"] == full["final_val_loss"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(read_metrics(tmp_path / "part")) == strip(read_metrics(tmp_path / "full"))
