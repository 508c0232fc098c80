"""Issue 18 bug 6: recipes ship inside the package (``--recipe NAME``; a path still works), and an error
never leaves an empty output directory behind (bench and train)."""
import fnmatch
import json
from pathlib import Path

import pytest
import yaml

from leantrain import LeantrainError, Recipe
from leantrain.cli import main, parser
from leantrain.recipe import BUNDLED_RECIPES, bundled_recipes, find_recipe

ROOT = Path(__file__).resolve().parents[1]
TINY_SETS = ["model.n_layer=1", "model.n_head=1", "model.n_embd=16", "model.block_size=16", "train.max_steps=2",
             "train.warmup_steps=1", "train.eval_iters=1", "train.batch_size=2"]


def test_bundled_recipes_are_package_data():
    tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11
    assert set(bundled_recipes()) >= {"baseline_char", "raptr_char", "resnet32_mnist1d"}
    assert BUNDLED_RECIPES.parent == ROOT / "leantrain"
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["leantrain"]
    for f in BUNDLED_RECIPES.glob("*.yaml"):
        assert any(fnmatch.fnmatch(str(f.relative_to(ROOT / "leantrain")), p) for p in patterns), f
    assert not list(ROOT.glob("recipes/*.yaml"))  # one copy: the package's


def test_recipes_load_by_name_from_anywhere(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # outside the repository
    for name in bundled_recipes():
        # a recipe for data the user brings (CIFAR-10's binary version) names no path: give one
        needs_path = (yaml.safe_load((BUNDLED_RECIPES / f"{name}.yaml").read_text()).get("data") or {}).get("path") == ""
        sets = ["data.path=cifar-10-batches-bin"] if needs_path else []
        assert Recipe.load(name, sets).to_dict() == Recipe.load(f"{name}.yaml", sets).to_dict() \
            == Recipe.load(BUNDLED_RECIPES / f"{name}.yaml", sets).to_dict()
    assert find_recipe(parser().parse_args(["bench", "overhead", "--quick"]).recipe).is_file()
    assert main(["train", "--recipe", "baseline_char", "--out", "runs/base", "--quiet", "--set", *TINY_SETS]) == 0
    assert json.loads((tmp_path / "runs/base/config.json").read_text())["model"]["n_embd"] == 16


def test_a_file_in_the_working_directory_wins_over_a_bundled_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("baseline_char.yaml").write_text("train: {max_steps: 7}\n")
    assert Recipe.load("baseline_char.yaml").train.max_steps == 7  # the path as given
    assert Recipe.load("baseline_char").train.max_steps == 2000   # a bare name: the bundled one


@pytest.mark.parametrize("value, message", [
    ("baseline_chr", "recipe not found: baseline_chr is neither a file nor a bundled recipe (did you mean "
                     "'baseline_char'?)"),
    ("recipes/baseline_char.yaml", "recipe file not found: recipes/baseline_char.yaml (bundled recipes, by name:"),
])
def test_unknown_recipe_is_one_line_and_leaves_no_directory(tmp_path, monkeypatch, capsys, value, message):
    monkeypatch.chdir(tmp_path)
    for argv in (["train", "--recipe", value, "--out", "runs/x"],
                 ["bench", "overhead", "--quick", "--recipe", value, "--out", "bench/overhead"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
        assert list(tmp_path.iterdir()) == []  # neither --out nor the parents it would have made


def test_a_train_error_after_the_output_directory_exists_removes_only_what_it_made(tmp_path, monkeypatch, capsys):
    import leantrain.core.trainer as trainer

    def fail(self, until=None):
        raise LeantrainError("simulated failure before the first step")
    monkeypatch.setattr(trainer.Trainer, "fit", fail)
    argv = ["train", "--recipe", "baseline_char", "--quiet", "--set", *TINY_SETS, "--out"]
    assert main(argv + [str(tmp_path / "new" / "run")]) == 2
    assert "simulated failure" in capsys.readouterr().err and list(tmp_path.iterdir()) == []
    keep = tmp_path / "existing"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    assert main(argv + [str(keep)]) == 2  # a directory the user made: left as it was, with the recipe
    assert sorted(p.name for p in keep.iterdir()) == ["config.json", "notes.txt"]


def test_the_demo_interleaves_its_runs_and_matches_uninterrupted_ones(tmp_path):
    """The demo's time ratio compares runs that saw the same load: turns of CHUNK steps, ABBA order,
    each turn resumed exactly (so the figures are those of uninterrupted runs)."""
    from leantrain import Trainer
    from leantrain.demo import DEMO_RUNS, train_interleaved

    from .conftest import read_metrics
    assert all("train.threads=1" in overrides for _, _, overrides in DEMO_RUNS)
    small = ["model.n_embd=16", "model.n_head=1", "model.block_size=16", "train.eval_interval=2",
             "train.eval_iters=1", "train.batch_size=2", "train.warmup_steps=1", "train.log_interval=1"]
    runs = [(label, name, [*overrides, *small, "train.max_steps=6"]) for label, name, overrides in DEMO_RUNS]
    order = []
    summaries = train_interleaved(runs, tmp_path / "demo", 6, 2, log=lambda line: order.append(line.split()[0]))
    assert order == ["baseline", "raptr", "raptr", "baseline", "baseline", "raptr"]
    for label, name, overrides in runs:
        straight = Trainer(Recipe.load(name, overrides), tmp_path / label, verbose=False, progress=False).fit()
        assert summaries[label]["final_val_loss"] == straight["final_val_loss"] and summaries[label]["steps"] == 6
        assert [(r["step"], r.get("train_loss"), r.get("val_loss")) for r in read_metrics(tmp_path / "demo" / label)] \
            == [(r["step"], r.get("train_loss"), r.get("val_loss")) for r in read_metrics(tmp_path / label)]
