import json
import subprocess
import sys

import pytest
import yaml

from leantrain.cli import main

from .conftest import tiny


@pytest.fixture
def recipe_file(tmp_path):
    f = tmp_path / "tiny.yaml"
    f.write_text(yaml.safe_dump(tiny()))
    return f


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_train_then_sample_then_methods(capsys, recipe_file, tmp_path):
    code, out, _ = run(capsys, "train", "--recipe", recipe_file, "--out", tmp_path / "run",
                       "--set", "train.max_steps=6", "--quiet")
    assert code == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 6
    code, out, _ = run(capsys, "sample", "--ckpt", tmp_path / "run", "--tokens", "40", "--prompt", "ROMEO")
    assert code == 0 and out.startswith("ROMEO") and len(out.rstrip("\n")) >= 45
    code, out, _ = run(capsys, "methods")
    assert code == 0


def test_until_then_resume_via_cli(capsys, recipe_file, tmp_path):
    out = tmp_path / "run"
    assert run(capsys, "train", "--recipe", recipe_file, "--out", out, "--until", "6", "--quiet")[0] == 0
    assert run(capsys, "train", "--resume", out, "--quiet")[0] == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 12


def _corrupt(run_dir):
    state = next((run_dir / "checkpoints").glob("step_*")) / "state.json"
    state.write_text("garbage")


@pytest.mark.parametrize("args, message", [
    (["--set", "train.max_step=3"], "unknown config key 'train.max_step' (did you mean 'train.max_steps'?)"),
    (["--set", "train.max_steps=abc"], "train.max_steps: expected int, got 'abc'"),
    (["--set", "train.max_steps=-5"], "train.max_steps: must be positive"),
    (["--set", "train.batch_size=0"], "train.batch_size: must be positive"),
    (["--set", "model.n_embd=0"], "model.n_embd: must be positive"),
    (["--set", "model.n_head=3"], "model.n_embd: 32 is not divisible by n_head=3"),
    (["--set", "model.block_size=200000"], "block_size=200000 is longer than"),
    (["--set", "data.path=/no/such/file.txt"], "data file not found: /no/such/file.txt"),
    (["--set", "data.path={empty}"], "data file is empty"),
    (["--set", "data.path={binary}"], "looks binary"),
    (["--set", "model.name=resnet50"], "unknown model 'resnet50' (did you mean 'resnet'?)"),
    (["--set", "methods=[{{name: raptor}}]"], "unknown method 'raptor'"),
    (["--recipe", "{bad_yaml}"], "malformed YAML in"),
    (["--resume", "{tmp}/missing"], "checkpoint not found"),
])
def test_bad_input_exits_2_with_one_line(capsys, recipe_file, tmp_path, args, message):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "bad.yaml").write_text("train: {max_steps: 3\n")
    subs = {"empty": tmp_path / "empty.txt", "binary": tmp_path / "binary.bin",
            "bad_yaml": tmp_path / "bad.yaml", "tmp": tmp_path}
    argv = [a.format(**subs) for a in args]
    if "--recipe" not in argv:
        argv = ["--recipe", str(recipe_file)] + argv
    code, _, err = run(capsys, "train", "--out", tmp_path / "out", *argv)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and err.startswith("leantrain: error:")
    assert not (tmp_path / "out").exists()  # nothing written


def test_checkpoint_problems_keep_existing_files(capsys, recipe_file, tmp_path):
    out = tmp_path / "run"
    run(capsys, "train", "--recipe", recipe_file, "--out", out, "--until", "3", "--quiet")
    metrics = (out / "metrics.jsonl").read_text()
    code, _, err = run(capsys, "train", "--recipe", recipe_file, "--out", out, "--resume", out,
                       "--set", "model.n_layer=6")
    assert code == 2 and "model.n_layer is 4 in the checkpoint, 6 in the recipe" in err
    code, _, err = run(capsys, "train", "--recipe", recipe_file, "--out", out, "--set", "train.lr=0.01")
    assert code == 2 and "already holds another run" in err and "--overwrite" in err
    _corrupt(out)
    code, _, err = run(capsys, "train", "--resume", out)
    assert code == 2 and "corrupt checkpoint" in err
    assert (out / "metrics.jsonl").read_text() == metrics


def test_real_process_exit_code_and_no_traceback(tmp_path):
    p = subprocess.run([sys.executable, "-m", "leantrain", "train", "--out", str(tmp_path / "o"),
                        "--set", "model.n_embd=30", "model.n_head=4"], capture_output=True, text=True)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and "n_embd: 30 is not divisible by n_head=4" in p.stderr


def test_help_lists_config_keys_with_docs(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "train.max_steps = 2000" in out and "Optimizer steps in the whole run" in out
    assert "model.n_embd = 128" in out
