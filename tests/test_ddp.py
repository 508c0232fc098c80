"""Two CPU processes under torchrun (gloo): the real launcher, not a simulation."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from leantrain import Recipe
from leantrain.core import checkpoint
from leantrain.data import TextTask, fixed_batches
from leantrain.models.gpt import GPT

from .conftest import read_metrics, tiny

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def torchrun(*args, timeout=240, check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *map(str, args)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    assert p.returncode == 0 or not check, p.stderr[:3000] + "\n...\n" + p.stderr[-3000:]
    return p


def test_cli_under_torchrun_aggregates_across_ranks(tmp_path):
    f = tmp_path / "tiny.yaml"
    f.write_text(yaml.safe_dump(tiny()))
    out = tmp_path / "run"
    torchrun("-m", "leantrain", "train", "--recipe", f, "--out", out, "--quiet")
    s = json.loads((out / "summary.json").read_text())
    assert s["world_size"] == 2 and s["steps"] == 12
    rows = read_metrics(out)
    assert rows[-1]["tokens"] == 12 * 4 * 16 * 2  # both ranks' tokens
    # The logged val loss is the mean over both ranks' shards = a single-process eval of all batches.
    ckpt = checkpoint.load(out)
    recipe = Recipe.from_dict(ckpt.meta["recipe"])
    model = GPT(recipe.model).eval()
    checkpoint.load_model_tensors(model, ckpt.model, ckpt.path)
    data = TextTask(recipe.data)
    batches = fixed_batches(data.val, 16, 4, recipe.train.eval_iters, recipe.data.val_seed)
    with torch.no_grad():
        ref = sum(model(x, y)[1].item() for x, y in batches) / len(batches)
    assert s["final_val_loss"] == pytest.approx(ref, abs=1e-5)

    # Bad input under torchrun (the run directory is taken): every rank exits 2 with the one-line
    # error, no rank dies on a closed connection or prints a traceback, and the run is untouched.
    before = {f: (out / f).read_bytes() for f in ("summary.json", "metrics.jsonl")}
    p = torchrun("-m", "leantrain", "train", "--recipe", f, "--out", out, "--quiet", check=False)
    assert p.returncode != 0
    assert "leantrain: error: output directory" in p.stderr, p.stderr
    codes = re.findall(r"exitcode\s*:\s*(-?\d+)", p.stderr)
    # Every rank exits 2 (one may instead be stopped by torchrun, SIGTERM, once the other has failed).
    assert "2" in codes and set(codes) <= {"2", "-15"}, p.stderr
    assert "[rank0]: Traceback" not in p.stderr and "[rank1]: Traceback" not in p.stderr
    assert {f: (out / f).read_bytes() for f in before} == before


def test_surgery_and_resume_under_ddp(tmp_path):
    worker = ROOT / "tests" / "ddp_worker.py"
    torchrun(worker, tmp_path / "full", "-", "-")
    torchrun(worker, tmp_path / "part", "6", "-")
    torchrun(worker, tmp_path / "part", "-", tmp_path / "part")
    full, part = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "part")
    assert [r.get("train_loss") for r in part] == [r.get("train_loss") for r in full]
    assert [r.get("val_loss") for r in part] == [r.get("val_loss") for r in full]
    assert json.loads((tmp_path / "part" / "summary.json").read_text())["world_size"] == 2


def test_mnist1d_resnet_under_torchrun_matches_one_process_eval_and_resumes(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump({
        "data": {"name": "mnist1d", "num_samples": 400, "augment": True},
        "model": {"name": "resnet", "depth": 8, "width": 0.25},
        "train": {"max_steps": 8, "batch_size": 8, "warmup_steps": 1, "eval_interval": 4, "log_interval": 1,
                  "optimizer": "sgd", "lr": 0.05}}))
    full, part = tmp_path / "full", tmp_path / "part"
    torchrun("-m", "leantrain", "train", "--recipe", f, "--out", full, "--quiet")
    torchrun("-m", "leantrain", "train", "--recipe", f, "--out", part, "--until", "4", "--quiet")
    torchrun("-m", "leantrain", "train", "--resume", part, "--quiet")
    s = json.loads((full / "summary.json").read_text())
    assert s["world_size"] == 2 and read_metrics(full)[-1]["samples"] == 8 * 8 * 2
    for key in ("train_loss", "val_loss", "val_error"):  # each rank's sampler state resumes exactly
        assert [r.get(key) for r in read_metrics(part)] == [r.get(key) for r in read_metrics(full)]
    # the whole validation split, shared out by rank and reduced, equals a one-process evaluation
    from leantrain.cli import evaluate_checkpoint
    one = evaluate_checkpoint(full, "val")
    assert one["val_error"] == pytest.approx(s["final_val_error"]) and one["val_loss"] == pytest.approx(
        s["final_val_loss"], abs=1e-6)
    assert evaluate_checkpoint(full, "test")["test_error"] == pytest.approx(s["test_error"])
