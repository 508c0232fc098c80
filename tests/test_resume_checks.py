"""Issue 18 bug 2: a resume refuses other data (``Task.fingerprint`` in the checkpoint) and changed
settings unless allowed (``--allow-changes`` / ``Trainer(allow_changes=...)``), with one line, exit 2
and nothing touched; free keys (``TrainConfig.FREE_ON_RESUME``) and allowed ones are reported."""
import json
from pathlib import Path

import numpy as np
import pytest

from leantrain import LeantrainError, Recipe, Trainer
from leantrain.cli import main
from leantrain.core import checkpoint
from leantrain.data import BUNDLED, file_digest
from leantrain.recipe import TrainConfig
from leantrain.registry import get_data

from .conftest import tiny

ROOT = Path(__file__).resolve().parents[1]


def snapshot(run: Path) -> dict:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture
def corpus(tmp_path):
    """The bundled corpus plus one character: 78 distinct characters, as in the issue's report."""
    f = tmp_path / "corpus.txt"
    f.write_text(BUNDLED.read_text() + "~")
    return f


def train(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_resume_on_other_data_is_refused_and_nothing_is_touched(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    f = tmp_path / "r.yaml"
    f.write_text(json.dumps(tiny(data={"path": str(corpus)})))
    assert train(["train", "--recipe", f, "--out", run, "--quiet"], capsys)[0] == 0
    before = snapshot(run)
    other = tmp_path / "other.txt"
    other.write_text(corpus.read_text()[:-1] + "!")  # same size, other content
    for sets in (["data.path=null"], [f"data.path={other}"]):
        code, out, err = train(["train", "--resume", run, "--set", *sets, "train.max_steps=20",
                                "--allow-changes", "data.path"], capsys)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
        assert "was trained on other data" in err and "start a new run" in err
        assert snapshot(run) == before
    # the same content elsewhere is the same data: allowed once the changed path is
    moved = tmp_path / "moved.txt"
    moved.write_bytes(corpus.read_bytes())
    code, out, err = train(["train", "--resume", run, "--set", f"data.path={moved}", "train.max_steps=14",
                            "--allow-changes", "data.path", "--quiet"], capsys)
    assert code == 0, err
    assert checkpoint.read_meta(run)["data_fingerprint"]["sha256"] == file_digest(corpus)["sha256"]


def test_evaluate_says_when_the_data_changed_since_training(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    Trainer(Recipe.from_dict(tiny(data={"path": str(corpus)})), run, verbose=False, progress=False).fit()
    code, out, err = train(["evaluate", "--ckpt", run], capsys)
    assert code == 0 and err == "" and json.loads(out)["same_data_as_training"] is True
    corpus.write_text(corpus.read_text()[:-2] + "!~")  # same size and vocabulary, other content
    code, out, err = train(["evaluate", "--ckpt", run], capsys)
    assert code == 0 and json.loads(out)["same_data_as_training"] is False
    assert err.startswith("warning: ") and "was trained on other data" in err and len(err.strip().splitlines()) == 1


def test_checkpoints_without_a_fingerprint_still_resume_and_check_the_vocabulary(tmp_path, corpus):
    """Runs written before fingerprints: resumed, the vocabulary compared instead, the fingerprint
    recorded from the next checkpoint on."""
    run = tmp_path / "run"
    r = Recipe.from_dict(tiny(data={"path": str(corpus)}))
    Trainer(r, run, verbose=False, progress=False).fit(until=6)
    state = checkpoint.resolve(run) / "state.json"
    meta = json.loads(state.read_text())
    del meta["data_fingerprint"]
    state.write_text(json.dumps(meta))
    saved = checkpoint.read_meta(run)["recipe"]  # as `--resume` reads it (model.vocab_size: 78)
    bundled = Recipe.from_dict({**saved, "data": {**saved["data"], "path": str(tmp_path / "short.txt")}})
    (tmp_path / "short.txt").write_text(corpus.read_text()[:-1])  # 77 characters: the vocabulary differs
    with pytest.raises(LeantrainError, match="trained on other data: vocab 78 entries then, 77 entries now"):
        Trainer(bundled, run, resume=run, allow_changes=["data.path"])
    Trainer(r, run, resume=run, verbose=False, progress=False).fit()
    assert checkpoint.read_meta(run)["data_fingerprint"]["vocab_size"] == 78


@pytest.mark.parametrize("sets, key", [
    (["train.lr=2e-3"], "train.lr"), (["train.seed=1"], "train.seed"), (["train.batch_size=8"], "train.batch_size"),
    (["train.warmup_steps=3"], "train.warmup_steps"), (["train.eval_iters=3"], "train.eval_iters"),
    (["data.val_fraction=0.2"], "data.val_fraction"),
])
def test_changed_settings_are_refused_unless_allowed(tmp_path, capsys, sets, key):
    run = tmp_path / "run"
    Trainer(Recipe.from_dict(tiny()), run, verbose=False, progress=False).fit(until=6)
    before = snapshot(run)
    code, out, err = train(["train", "--resume", run, "--set", *sets], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert f"was trained with {key}=" in err and f"--allow-changes {key}" in err
    assert snapshot(run) == before
    code, out, err = train(["train", "--resume", run, "--set", *sets, "--allow-changes", key], capsys)
    assert code == 0, err
    assert out.startswith(f"resuming with changed settings: {key} ")
    assert json.loads((run / "summary.json").read_text())["config"][key.split(".")[0]][key.split(".")[1]] \
        == Recipe.load(None, sets).to_dict()[key.split(".")[0]][key.split(".")[1]]


def test_method_options_are_settings_too(tmp_path, capsys):
    run = tmp_path / "run"
    raptr = {"name": "raptr", "stages": [{"path_len": 2}, {"path_len": 4}]}
    Trainer(Recipe.from_dict(tiny(methods=[raptr])), run, verbose=False, progress=False).fit(until=6)
    code, _, err = train(["train", "--resume", run, "--set", "methods.raptr.scale=inverse_p"], capsys)
    assert code == 2 and "was trained with methods.raptr.scale=" in err
    code, out, err = train(["train", "--resume", run, "--set", "methods.raptr.scale=inverse_p", "--allow-changes",
                            "methods.raptr", "--quiet"], capsys)  # a section allows all of its keys
    assert code == 0, err
    code, _, err = train(["train", "--resume", run, "--allow-changes", "train.lrr"], capsys)
    assert code == 2 and "--allow-changes train.lrr: no such recipe key (did you mean 'train.lr'?)" in err
    code, _, err = train(["train", "--out", tmp_path / "new", "--allow-changes", "train.lr"], capsys)
    assert code == 2 and "--allow-changes applies to --resume" in err


def test_free_keys_change_without_permission_and_are_reported(tmp_path, capsys):
    assert {"max_steps", "eval_interval", "log_interval", "checkpoint_interval", "threads"} <= TrainConfig.FREE_ON_RESUME
    assert TrainConfig.FREE_ON_RESUME <= set(TrainConfig.__dataclass_fields__)
    run = tmp_path / "run"
    Trainer(Recipe.from_dict(tiny()), run, verbose=False, progress=False).fit(until=6)
    code, out, err = train(["train", "--resume", run, "--set", "train.max_steps=16", "train.eval_interval=4",
                            "train.threads=1"], capsys)
    assert code == 0, err
    assert out.splitlines()[0] == ("resuming with changed settings: train.eval_interval 6 → 4, "
                                   "train.max_steps 12 → 16, train.threads None → 1")
    assert json.loads((run / "summary.json").read_text())["steps"] == 16
    # the Python API: allow_changes, and verbose=False prints nothing
    Trainer(Recipe.from_dict(tiny(train={"max_steps": 18, "lr": 2e-3})), run, resume=run, allow_changes=["train.lr"],
            verbose=False, progress=False).fit()
    assert capsys.readouterr().out == ""


def test_every_data_kind_fingerprints_its_content(tmp_path):
    from .test_classification import data_kinds
    kinds = data_kinds(tmp_path)
    text = tmp_path / "t.txt"
    text.write_text("hello world\n" * 50)
    kinds["text"] = {"name": "text", "path": str(text)}
    for name, data in kinds.items():
        r = Recipe.from_dict({"data": data})
        fp = get_data(r.data_name)(r.data).fingerprint()
        assert fp["kind"] == name and json.loads(json.dumps(fp)) == fp
        assert fp == get_data(r.data_name)(r.data).fingerprint()  # deterministic
    # a change of content changes it (npz: one label; text: one character; mnist1d: its generator seed)
    before = get_data("text")(Recipe.from_dict({"data": kinds["text"]}).data).fingerprint()
    text.write_text("hello world\n" * 49 + "hello worle\n")
    assert get_data("text")(Recipe.from_dict({"data": kinds["text"]}).data).fingerprint() != before
    path = kinds["npz"]["path"]
    before = get_data("npz")(Recipe.from_dict({"data": kinds["npz"]}).data).fingerprint()
    with np.load(path) as f:
        arrays = dict(f)
    arrays["y"][0] = (arrays["y"][0] + 1) % 3
    np.savez(path, **arrays)
    assert get_data("npz")(Recipe.from_dict({"data": kinds["npz"]}).data).fingerprint()["sha256"] != before["sha256"]
    a = get_data("mnist1d")(Recipe.from_dict({"data": kinds["mnist1d"]}).data).fingerprint()
    b = get_data("mnist1d")(Recipe.from_dict({"data": {**kinds["mnist1d"], "seed": 1}}).data).fingerprint()
    assert a["sha256"] != b["sha256"]


def test_huge_files_are_fingerprinted_by_their_ends(tmp_path, monkeypatch):
    import leantrain.data as data
    monkeypatch.setattr(data, "DIGEST_WHOLE_BYTES", 3 << 20)
    f = tmp_path / "big.bin"
    f.write_bytes(b"a" * (4 << 20))
    d = file_digest(f)
    assert d["hashed"] == "first and last MiB" and d["bytes"] == 4 << 20
    f.write_bytes(b"a" * (4 << 20) + b"b")
    assert file_digest(f)["sha256"] != d["sha256"]  # the size and the last MiB changed
