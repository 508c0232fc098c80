"""The "Bring your own model" example of leantrain/models/README.md runs as written: a user's own
nn.Module, implementing the model protocol, trains with RaPTr and dynamic dropout."""
import re
from pathlib import Path

import pytest

from leantrain import Recipe, Trainer, registry
from leantrain.models import protocol

from .conftest import read_metrics

README = Path(__file__).resolve().parents[1] / "leantrain" / "models" / "README.md"


@pytest.fixture
def example():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) == 2, "the README's example is two python blocks: the model, then training it"
    ns: dict = {}
    exec(compile(blocks[0], str(README), "exec"), ns)
    yield ns, blocks[1]
    registry.MODELS.pop("mean_mixer")
    registry.MODEL_TASKS.pop("mean_mixer")


def test_the_readme_model_trains_with_raptr_and_dynamic_dropout(example, tmp_path, monkeypatch, capsys):
    ns, training = example
    monkeypatch.chdir(tmp_path)
    exec(compile(training, str(README), "exec"), ns)
    out = capsys.readouterr().out
    assert "raptr: expected fraction of blocks run" in out
    assert "model MeanMixer has no embedding, attention, residual dropout sites; scheduling mlp" in out
    rows = read_metrics(tmp_path / "runs" / "mean_mixer")
    paths = [r["raptr/path_len"] for r in rows if "raptr/path_len" in r]
    rates = [r["dynamic_dropout/p"] for r in rows if "dynamic_dropout/p" in r]
    assert min(paths) < 4 and rates[0] > rates[-1] >= 0
    # the methods act: fewer FLOPs than the same model trained plainly (bug 7: equal FLOPs and losses)
    plain = Recipe.from_dict({**ns["recipe"].to_dict(), "methods": []})
    base = Trainer(plain, tmp_path / "plain", verbose=False, progress=False).fit()
    assert ns["summary"]["train_flops"] < base["train_flops"]
    assert ns["summary"]["final_val_loss"] != base["final_val_loss"]
    assert protocol.capabilities(ns["MeanMixer"](ns["MeanMixerConfig"](vocab_size=5))) == {"blocks", "plan", "dropout"}


def test_model_plugins_are_imported_from_entry_points(monkeypatch):
    loaded = []

    class EntryPoint:
        name, value = "mine", "mypackage.models"

        def load(self):
            loaded.append(self.name)

    monkeypatch.setattr(registry, "_plugins", None)
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: [EntryPoint()] if group == "leantrain.models" else [])
    registry.list_models()
    assert loaded == ["mine"]

    class Broken(EntryPoint):
        def load(self):
            raise ImportError("no module named mypackage")

    monkeypatch.setattr(registry, "_plugins", None)
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: [Broken()])
    with pytest.raises(registry.ConfigError, match="model plugin 'mine' .* failed to import: ImportError"):
        registry.get_model("gpt")
