"""Every registered method: trains on the tiny recipe, and resumes bit-exactly (the style spec's table)."""
import pytest

from leantrain import Recipe, Trainer
from leantrain.registry import list_methods

from .conftest import read_metrics, tiny
from .method_settings import SETTINGS, options_for

NAMES = [m.name for m in list_methods()]


def test_every_registered_method_has_settings():
    assert sorted(NAMES) == sorted(SETTINGS), "add the method to tests/method_settings.py"


@pytest.mark.parametrize("name", NAMES)
def test_method_trains_and_resumes_exactly(name, tmp_path):
    options = options_for(name, tmp_path)

    def recipe():
        return Recipe.from_dict(tiny(model={"dropout": 0.1}, train={"log_interval": 1},
                                     methods=[{"name": name, **options}]))
    full = Trainer(recipe(), tmp_path / "full", verbose=False, progress=False).fit()
    Trainer(recipe(), tmp_path / "part", verbose=False, progress=False).fit(until=5)
    resumed = Trainer(recipe(), tmp_path / "part", resume=tmp_path / "part", verbose=False,
                      progress=False).fit()
    assert resumed["final_val_loss"] == full["final_val_loss"]
    for key in ("train_loss", "val_loss"):
        a = [r.get(key) for r in read_metrics(tmp_path / "full")]
        b = [r.get(key) for r in read_metrics(tmp_path / "part")]
        assert a == b, f"{name}: {key} differs after resume"
