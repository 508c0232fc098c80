"""Issue 18 (found by trying leantrain as a new user), one regression test per bug: the classification
done line, an empty sample prompt, ``--until`` between evaluations, quiet runs with method schedules.
(Numbers in config: test_config.py; data fingerprints and changed hyperparameters on resume:
test_resume_checks.py; end-of-run work: test_fit_end.py; bundled recipes: test_recipes.py.)"""
import json

import pytest
import yaml

from leantrain import Recipe, Trainer
from leantrain.cli import main

from .conftest import tiny

SMALL_MNIST1D = {"data": {"name": "mnist1d", "num_samples": 400},
                 "model": {"name": "resnet", "depth": 8, "width": 0.25},
                 "train": {"max_steps": 4, "batch_size": 8, "warmup_steps": 1, "eval_interval": 2,
                           "log_interval": 2, "optimizer": "sgd", "lr": 0.05}}


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_classification_train_exits_0_with_samples_per_second_and_error(capsys, tmp_path):
    """Bug 1: the done line assumed text (KeyError 'tokens_per_second', exit 1, after training)."""
    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump(SMALL_MNIST1D))
    code, out, err = run(capsys, "train", "--recipe", f, "--out", tmp_path / "run")
    assert code == 0, err
    done = out.strip().splitlines()[-1]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert done.startswith("done: 4 steps") and "samples/s" in done and "tok/s" not in done
    assert f"val error {summary['final_val_error']:.2f}%" in done
    assert f"test error {summary['test_error']:.2f}%" in done


def test_text_done_line_keeps_tokens_per_second(capsys, tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump(tiny(train={"max_steps": 3})))
    code, out, _ = run(capsys, "train", "--recipe", f, "--out", tmp_path / "run")
    done = out.strip().splitlines()[-1]
    assert code == 0 and done.startswith("done: 3 steps, val loss") and "tok/s" in done and "error" not in done


def test_empty_prompt_is_one_line_not_a_traceback(capsys, tmp_path):
    """Bug 5: ``sample --prompt ""`` crashed with an IndexError."""
    Trainer(Recipe.from_dict(tiny(train={"max_steps": 2})), tmp_path / "run", verbose=False, progress=False).fit()
    code, out, err = run(capsys, "sample", "--ckpt", tmp_path / "run", "--prompt", "", "--tokens", "5")
    assert code == 2 and out == ""
    assert err.startswith("leantrain: error: --prompt is empty") and len(err.strip().splitlines()) == 1


def test_until_between_evaluations_says_which_step_the_loss_is_from(capsys, tmp_path):
    """Bug 9: ``--until 7`` with evaluations every 6 steps printed step 6's loss as the final one."""
    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump(tiny()))  # 12 steps, evaluation every 6
    code, out, _ = run(capsys, "train", "--recipe", f, "--out", tmp_path / "run", "--until", "7")
    done = out.strip().splitlines()[-1]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert code == 0 and summary["steps"] == 7 and summary["val_step"] == 6 and not summary["finished"]
    assert "stopped after step 7 of 12" in done and "from the evaluation at step 6" in done
    # resumed to the end: the figure is the last step's again, and the line says nothing more
    code, out, _ = run(capsys, "train", "--resume", tmp_path / "run")
    done = out.strip().splitlines()[-1]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert code == 0 and summary["val_step"] == 12 and done.startswith("done: 12 steps") and "from the" not in done


@pytest.mark.parametrize("quiet", [True, False])
def test_quiet_silences_method_schedule_lines(capsys, tmp_path, quiet):
    """Bug 10: ``--quiet`` / ``verbose=False`` still printed RaPTr's and grow's schedule lines."""
    source = tmp_path / "source"
    Trainer(Recipe.from_dict(tiny(model={"n_layer": 2}, train={"max_steps": 3})), source, verbose=False,
            progress=False).fit()
    capsys.readouterr()
    raptr = {"name": "raptr", "stages": [{"path_len": 2}, {"path_len": 4}]}
    grow = {"name": "grow", "source": str(source), "operator": "stackbert", "eval_after_growth": False}
    for name, entry in (("raptr", raptr), ("grow", grow)):
        f = tmp_path / f"{name}.yaml"
        f.write_text(yaml.safe_dump(tiny(train={"max_steps": 4}, methods=[entry])))
        code, out, err = run(capsys, "train", "--recipe", f, "--out", tmp_path / name,
                             *(["--quiet"] if quiet else []))
        assert code == 0, err
        if quiet:
            assert out == "" and err == ""
        else:
            assert any(line.startswith(name) for line in out.splitlines())  # the schedule line
        Trainer(Recipe.from_dict(tiny(train={"max_steps": 4}, methods=[entry])), tmp_path / f"{name}_api",
                verbose=not quiet, progress=False).fit()
        out = capsys.readouterr().out
        assert (out == "") == quiet
