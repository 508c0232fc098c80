import pytest

from leantrain import ConfigError, Recipe
from leantrain.config import apply_overrides, describe, field_docs
from leantrain.recipe import TrainConfig

from .conftest import tiny


def test_defaults_build_and_roundtrip():
    r = Recipe.from_dict(tiny())
    assert r.model.n_layer == 4 and r.train.max_steps == 12
    again = Recipe.from_dict(r.to_dict())
    assert again.to_dict() == r.to_dict()


def test_every_train_field_is_documented():
    docs = field_docs(TrainConfig)
    assert all(docs.get(k) for k, _, _ in describe(TrainConfig)), "each field needs a docstring"


@pytest.mark.parametrize("data, message", [
    ({"train": {"max_step": 3}}, "unknown config key 'train.max_step' (did you mean 'train.max_steps'?)"),
    ({"trian": {}}, "unknown config key 'trian' (did you mean 'train'?)"),
    ({"train": {"max_steps": "many"}}, "train.max_steps: expected int, got 'many'"),
    ({"train": {"max_steps": 1.5}}, "train.max_steps: expected int"),
    ({"train": {"lr": True}}, "train.lr: expected float"),
    ({"train": {"max_steps": 0}}, "train.max_steps: must be positive"),
    ({"train": {"batch_size": -4}}, "train.batch_size: must be positive"),
    ({"model": {"n_embd": 0}}, "model.n_embd: must be positive"),
    ({"model": {"n_embd": 30, "n_head": 4}}, "model.n_embd: 30 is not divisible by n_head=4"),
    ({"model": {"dropout": 1.0}}, "model.dropout: must be in [0, 1)"),
    ({"model": {"name": "gtp"}}, "unknown model 'gtp' (did you mean 'gpt'?)"),
    ({"methods": [{"name": "no_such_method"}]}, "unknown method 'no_such_method'"),
    ({"methods": {"name": "x"}}, "methods: expected a list"),
    ({"train": {"device": "tpu"}}, "train.device: 'tpu' is not one of"),
])
def test_bad_config_is_a_clear_error(data, message):
    with pytest.raises(ConfigError) as e:
        Recipe.from_dict(data)
    assert message in str(e.value)


def test_set_overrides_parse_yaml_values_and_address_methods():
    d = apply_overrides({"methods": [{"name": "a", "x": 1}]},
                        ["train.max_steps=200", "model.bias=true", "data.path=foo.txt", "methods.a.x=0.5",
                         "methods.0.y=[1, 2]"])
    assert d["train"]["max_steps"] == 200 and d["model"]["bias"] is True and d["data"]["path"] == "foo.txt"
    assert d["methods"][0] == {"name": "a", "x": 0.5, "y": [1, 2]}
    with pytest.raises(ConfigError, match="no method 'b'"):
        apply_overrides({"methods": []}, ["methods.b.x=1"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["train.max_steps"])


def test_malformed_yaml_names_file_and_line(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("train:\n  max_steps: [1, 2\n")
    with pytest.raises(ConfigError, match=r"malformed YAML in .*r.yaml \(line"):
        Recipe.load(f)
    with pytest.raises(ConfigError, match="recipe file not found"):
        Recipe.load(tmp_path / "missing.yaml")


@pytest.mark.parametrize("text, key, expected", [
    ("2e-3", "train.lr", 2e-3), ("1E-4", "train.min_lr", 1e-4), (".5", "model.dropout", 0.5),
    ("1_000", "train.max_steps", 1000), ("1e3", "train.max_steps", 1000), ("+5", "train.threads", 5),
    ("1.0e-3", "train.lr", 1e-3), ("3", "train.lr", 3.0), ("1_000.5", "train.max_steps", None),
    ("2.5e0", "train.warmup_steps", None), ("1e400", "train.lr", None), ("1e-3x", "train.lr", None),
])
def test_every_spelling_of_a_number_is_a_number(tmp_path, text, key, expected):
    """Issue 18 bug 4: YAML 1.1 reads 2e-3 / 1E-4 as strings; int and float fields accept any spelling
    (from --set and from a recipe file alike), and a non-number or a fraction for a count is refused."""
    section, name = key.split(".")
    f = tmp_path / "r.yaml"
    f.write_text(f"{section}:\n  {name}: {text}\n")
    for load in (lambda: Recipe.load(None, [f"{key}={text}"]), lambda: Recipe.load(f)):
        if expected is None:
            with pytest.raises(ConfigError, match=rf"{key}: (expected|must be)"):
                load()
        else:
            got = getattr(getattr(load(), section), name)
            assert got == expected and type(got) is type(expected)


def test_a_number_spelled_in_a_string_field_stays_text():
    assert Recipe.load(None, ["data.path=1e3"]).data.path == "1e3"
