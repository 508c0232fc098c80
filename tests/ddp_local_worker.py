"""Run under torchrun by test_local.py: one local-learning step (GPT, 3 modules, context R1E) where each
rank takes its half of a fixed batch; the averaged update must equal one rank's on the whole batch."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from leantrain import Recipe, Trainer  # noqa: E402
from leantrain.core import distributed  # noqa: E402
from tests.conftest import tiny  # noqa: E402


def one_step(rank: int, world: int) -> dict[str, torch.Tensor]:
    """Weights after one step on this rank's share of a fixed batch of 8 sequences."""
    r = Recipe.from_dict(tiny(train={"batch_size": 8 // world, "grad_clip": 0.0, "warmup_steps": 0},
                              methods=[{"name": "local", "variant": "contsup", "modules": 3, "context": "R1E"}]))
    t = Trainer(r, None, verbose=False, progress=False)
    data = t.data.train
    starts = torch.arange(8) * 100
    x = torch.stack([data[s: s + 16] for s in starts])
    y = torch.stack([data[s + 1: s + 17] for s in starts])
    share = slice(rank * 8 // world, (rank + 1) * 8 // world)
    t.sampler.next = lambda: (x[share], y[share])
    t.train_step()
    return {k: v.detach().clone() for k, v in t.state.model.named_parameters()}


if __name__ == "__main__":
    torch.set_num_threads(1)
    distributed.setup(torch.device("cpu"))
    rank, world = distributed.rank_world()
    weights = one_step(rank, world)
    if rank == 0:
        torch.save(weights, sys.argv[1])
    distributed.exit_worker(0)
