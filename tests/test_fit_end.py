"""Issue 18 bug 3: end-of-run work (``Method.finish``: SN-Net scoring every configuration) runs after
the final checkpoint, shows itself, and a Ctrl-C there leaves a run that ``--resume`` finishes by
doing only that work."""
import json
from pathlib import Path

import pytest

from leantrain import Recipe, Trainer
from leantrain.cli import main
from leantrain.core import checkpoint
from leantrain.core.trainer import Trainer as TrainerClass
from leantrain.errors import RunStopped

from .conftest import tiny
from .method_settings import trained_run


@pytest.fixture(scope="module")
def anchors(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("anchors")
    return [trained_run(tmp, "a16", {"n_embd": 16}), trained_run(tmp, "a32", {"n_embd": 32})]


def snnet(anchors) -> dict:
    return tiny(train={"max_steps": 6, "eval_interval": 3},
                methods=[{"name": "snnet", "anchors": anchors, "final_eval": "fixed"}])


def final_losses(run) -> dict:
    meta = checkpoint.read_meta(run)
    return next(m["state"]["final"] for m in meta["methods"] if m["name"] == "snnet")


def test_an_interrupt_during_scoring_keeps_the_run_and_resume_only_scores(anchors, tmp_path, monkeypatch, capsys):
    whole = tmp_path / "whole"
    Trainer(Recipe.from_dict(snnet(anchors)), whole, verbose=False, progress=False).fit()
    expected = final_losses(whole)
    assert len(expected["losses"]) > 3

    calls = []
    real = TrainerClass.evaluate_split

    def interrupted(self, split="val", whole=True):
        calls.append(split)
        if len(calls) == 3:  # the third configuration being scored: Ctrl-C
            raise KeyboardInterrupt
        return real(self, split, whole)
    monkeypatch.setattr(TrainerClass, "evaluate_split", interrupted)
    run = tmp_path / "run"
    with pytest.raises(RunStopped) as e:
        try:
            Trainer(Recipe.from_dict(snnet(anchors)), run, verbose=True, progress=False).fit()
        except KeyboardInterrupt:
            pytest.fail("a Ctrl-C in the end-of-run work escaped without a summary")
    assert e.value.exit_code == 130 and "end-of-run work after step 6" in str(e.value)
    assert "snnet: scoring every configuration (the run's fixed validation batches): 12 to go" in capsys.readouterr().out
    meta = checkpoint.read_meta(run)  # the checkpoint was written before the scoring began
    assert meta["step"] == 6 and final_losses(run) == {}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] is False and "end-of-run work" in summary["stopped"]

    monkeypatch.setattr(TrainerClass, "evaluate_split", real)
    monkeypatch.setattr(TrainerClass, "train_step", lambda self: pytest.fail("the resume trained a step"))
    assert main(["train", "--resume", str(run), "--quiet"]) == 0  # scoring only
    assert final_losses(run) == expected
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] is True and summary["steps"] == 6
    kept = sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())
    latest = (run / "checkpoints" / "latest").read_text().strip()
    assert len(kept) == 2 and kept[-1] == latest  # train.keep_checkpoints (2): the newest two complete ones
    # resuming the finished run again has nothing to do: no second scoring
    monkeypatch.setattr(TrainerClass, "evaluate_split", lambda *a, **k: pytest.fail("scored twice"))
    assert main(["train", "--resume", str(run), "--quiet"]) == 0


def test_scoring_is_shown_with_a_progress_bar_on_a_terminal(anchors, tmp_path, capsys):
    Trainer(Recipe.from_dict(snnet(anchors)), tmp_path / "run", verbose=True, progress=True).fit()
    err = capsys.readouterr().err
    assert "snnet: scoring every configuration" in err and ("it/s" in err or "s/it" in err)  # tqdm's bar
    Trainer(Recipe.from_dict(snnet(anchors)), tmp_path / "quiet", verbose=False, progress=False).fit()
    out, err = capsys.readouterr()
    assert out == err == ""


def test_a_second_checkpoint_of_a_step_never_replaces_the_one_latest_names(tmp_path):
    r = Recipe.from_dict(tiny(train={"max_steps": 3, "keep_checkpoints": 1}))
    Trainer(r, tmp_path, verbose=False, progress=False).fit()
    first = checkpoint.resolve(tmp_path)
    Trainer(r, tmp_path, resume=tmp_path, verbose=False, progress=False).fit()  # saves step 3 again
    second = checkpoint.resolve(tmp_path)
    assert second != first and second.name.startswith(first.name) and not first.exists()
    assert checkpoint.load(tmp_path).meta["step"] == 3
    assert Path(second).parent == first.parent
