"""Run under torchrun (2 gloo ranks) by tests/test_hf_ddp.py: every method of tests/hf_settings.py on
one hf family — an uninterrupted run, and a run stopped after step 2 and resumed — writing per method
whether the resumed metrics equal the uninterrupted ones and whether the ranks' weights agree."""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leantrain import Recipe, Trainer  # noqa: E402
from leantrain.core import distributed  # noqa: E402
from tests.conftest import read_metrics  # noqa: E402
from tests.hf_settings import METHODS, hf_recipe  # noqa: E402

torch.set_num_threads(1)
out, family = Path(sys.argv[1]), sys.argv[2]
results = {}
for name in sys.argv[3].split(","):
    root = out / name
    recipe = lambda: Recipe.from_dict(hf_recipe(family, out, [METHODS[name]], steps=4))  # noqa: E731
    full = Trainer(recipe(), root / "full", verbose=False, progress=False)
    summary = full.fit()
    Trainer(recipe(), root / "part", verbose=False, progress=False).fit(until=2)
    resumed = Trainer(recipe(), root / "part", resume=root / "part", verbose=False, progress=False)
    resumed.fit()
    # the replicas hold the same weights (DDP averaged the gradients; local learning its modules')
    flat = torch.cat([p.detach().flatten() for p in full.state.model.parameters()])
    gathered = distributed.gather(flat.tolist())
    if distributed.rank_world()[0] == 0:
        rows = [read_metrics(root / run) for run in ("full", "part")]
        results[name] = {"world": summary["world_size"], "same_weights": gathered[0] == gathered[1],
                         "resume_exact": all([r.get(k) for r in rows[0]] == [r.get(k) for r in rows[1]]
                                             for k in ("train_loss", "val_loss")),
                         "flops": summary["train_flops"]}
if distributed.rank_world()[0] == 0:
    (out / "results.json").write_text(json.dumps(results))
distributed.exit_worker(0)
