"""Module-parallel local learning under torchrun: the same losses as one process (bit for bit on
CPU), with data parallelism too, checkpoints that move between the two modes, and a peer's failure
ending the run with a clear message instead of a hang."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from leantrain.core import checkpoint
from leantrain.methods.local.pipeline import stage_bounds

from .conftest import read_metrics

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
RECIPE = {"data": {"name": "mnist1d", "num_samples": 400, "augment": True},
          "model": {"name": "resnet", "depth": 14, "width": 0.5},
          "train": {"max_steps": 12, "batch_size": 16, "optimizer": "sgd", "lr": 0.05, "warmup_steps": 1,
                    "eval_interval": 6, "log_interval": 2, "grad_clip": 1.0, "checkpoint_interval": 4},
          "methods": [{"name": "local", "variant": "contsup", "modules": 2, "context": "R1E", "parallel": "modules"}]}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
KEYS = ("train_loss", "val_loss", "val_error", "local/loss0", "local/loss1", "flops", "samples")


def write(tmp_path, **local):
    r = json.loads(json.dumps(RECIPE))
    r["methods"][0].update(local)
    f = tmp_path / f"r{len(list(tmp_path.glob('r*.yaml')))}.yaml"
    f.write_text(yaml.safe_dump(r))
    return f


def leantrain(nproc, *args, check=True, timeout=240):
    cmd = [sys.executable, "-m", "leantrain", *map(str, args)] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
         "-m", "leantrain", *map(str, args)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout, cwd=ROOT)
    assert p.returncode == 0 or not check, p.stderr[-3000:]
    return p


def same(a, b, keys=KEYS):
    for key in keys:
        assert [r.get(key) for r in read_metrics(a)] == [r.get(key) for r in read_metrics(b)], key


def test_stage_bounds():
    assert stage_bounds(2, 2) == [0, 1, 2] and stage_bounds(8, 2) == [0, 4, 8] and stage_bounds(5, 3) == [0, 2, 3, 5]


def test_two_stages_reproduce_one_process_and_checkpoints_move_between_modes(tmp_path):
    f = write(tmp_path)
    leantrain(1, "train", "--recipe", f, "--out", tmp_path / "one", "--quiet")
    leantrain(2, "train", "--recipe", f, "--out", tmp_path / "pipe", "--quiet")
    same(tmp_path / "one", tmp_path / "pipe")
    s = json.loads((tmp_path / "pipe" / "summary.json").read_text())
    assert s["world_size"] == 2 and s["finished"]
    # a pipeline checkpoint resumed by one process, and the other way round
    leantrain(2, "train", "--recipe", f, "--out", tmp_path / "p2s", "--until", "4", "--quiet")
    leantrain(1, "train", "--resume", tmp_path / "p2s", "--quiet")
    same(tmp_path / "one", tmp_path / "p2s")
    leantrain(1, "train", "--recipe", f, "--out", tmp_path / "s2p", "--until", "4", "--quiet")
    leantrain(2, "train", "--resume", tmp_path / "s2p", "--quiet")
    same(tmp_path / "one", tmp_path / "s2p")


def test_one_stage_two_replicas_is_data_parallel(tmp_path):
    pipe = write(tmp_path, replicas=2)
    data = write(tmp_path, parallel="data")
    leantrain(2, "train", "--recipe", pipe, "--out", tmp_path / "pipe", "--quiet")
    leantrain(2, "train", "--recipe", data, "--out", tmp_path / "data", "--quiet")
    same(tmp_path / "pipe", tmp_path / "data", ("train_loss", "val_loss", "val_error", "samples"))
    assert read_metrics(tmp_path / "pipe")[-1]["samples"] == 12 * 16 * 2


def test_two_stages_times_two_replicas(tmp_path):
    f = write(tmp_path, replicas=2)
    data = write(tmp_path, parallel="data")
    leantrain(4, "train", "--recipe", f, "--out", tmp_path / "p", "--quiet", timeout=400)
    leantrain(2, "train", "--recipe", data, "--out", tmp_path / "d", "--quiet")
    same(tmp_path / "p", tmp_path / "d", ("train_loss", "val_loss", "val_error", "samples"))


def test_a_dying_stage_stops_the_others_quickly_and_the_checkpoint_survives(tmp_path):
    f = write(tmp_path)
    worker = ROOT / "tests" / "pipeline_crash_worker.py"
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(worker), str(f), str(tmp_path / "run")],
                       capture_output=True, text=True, env=ENV, timeout=240, cwd=ROOT)
    assert p.returncode != 0 and time.time() - t0 < 120
    assert "stage 1 fails on purpose at step 7" in p.stderr
    codes = set(re.findall(r"exitcode\s*:\s*(-?\d+)", p.stderr))
    assert codes and codes <= {"1", "2", "-15"}, p.stderr[-2000:]
    ckpt = checkpoint.load(tmp_path / "run")  # the last complete checkpoint (step 4) loads
    assert ckpt.meta["step"] == 4
