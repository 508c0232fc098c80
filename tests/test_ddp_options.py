"""Issue 23's step options under torchrun (2 CPU processes, gloo): accumulation with no_sync gives the
big batch's training, with host_sync log and torch.compile (eager backend) on the DDP model."""
import json

import pytest
import yaml

from .conftest import read_metrics, tiny
from .test_ddp import torchrun

pytestmark = pytest.mark.slow


def test_ddp_accumulation_with_compile_and_host_sync_log_trains_like_the_big_batch(tmp_path):
    losses = {}
    for name, train in (("big", {"batch_size": 8}),
                        ("accum", {"batch_size": 4, "grad_accum_steps": 2, "host_sync": "log", "compile": True,
                                   "compile_backend": "eager"})):
        f = tmp_path / f"{name}.yaml"
        f.write_text(yaml.safe_dump(tiny(train=train)))
        torchrun("-m", "leantrain", "train", "--recipe", f, "--out", tmp_path / name, "--quiet")
        losses[name] = [r["train_loss"] for r in read_metrics(tmp_path / name) if "train_loss" in r]
    s = json.loads((tmp_path / "accum" / "summary.json").read_text())
    assert s["effective_batch_size"] == 16 and s["world_size"] == 2 and s["host_sync"] == "log"
    assert s["compiled_graphs"] >= 1
    assert losses["accum"] == pytest.approx(losses["big"], rel=1e-5)
