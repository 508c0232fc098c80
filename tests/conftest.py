import copy
import json
import os
from pathlib import Path

import pytest
import torch

from leantrain import Recipe

# Keep tests single-threaded and deterministic on the shared 2-core machine.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

TINY = {
    "model": {"n_layer": 4, "n_head": 2, "n_embd": 32, "block_size": 16},
    "train": {"max_steps": 12, "batch_size": 4, "warmup_steps": 2, "eval_interval": 6, "eval_iters": 2,
              "log_interval": 3},
}


def tiny(**sections) -> dict:
    """The tiny recipe dict with ``sections`` merged in (one level deep)."""
    d = copy.deepcopy(TINY)
    for k, v in sections.items():
        d[k] = {**d.get(k, {}), **v} if isinstance(v, dict) else v
    return d


@pytest.fixture
def tiny_recipe():
    return lambda **sections: Recipe.from_dict(tiny(**sections))


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
