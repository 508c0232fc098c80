"""Run under torchrun (2 gloo ranks) by tests/test_grow.py (gpt) and tests/test_grow_hf.py (hf models),
in one launch: per operator, a growth run whole, and the same run stopped at ``stop`` and resumed. Each rank writes digests of
its model where DDP's broadcast cannot hide a difference — right after ``grow`` wrote the copy
operator's target (``setup``, before the trainer wraps DDP) or the trained operator's output (the
STEP_START that ends the operator phase, before the re-wrap) — and at the end of training."""
import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leantrain import Event, Method, Recipe, Trainer  # noqa: E402
from leantrain.core import distributed  # noqa: E402


def digest(model) -> str:
    h = hashlib.sha256()
    for _, p in model.named_parameters():
        h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()


class Probe(Method):
    """Listed after grow: digests the grown target before any DDP wrapper broadcasts rank 0's weights."""
    name = "digest_probe"

    def __init__(self, phase: int | None):
        super().__init__()
        self.phase, self.digests = phase, []

    def setup(self, state):
        if self.phase is None and state.step == 0:
            self.digests.append(digest(state.model))

    def on_event(self, event, state):
        if event is Event.STEP_START and state.step == self.phase:
            self.digests.append(digest(state.model))


torch.set_num_threads(1)
out, specs = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
hashes = {}
for op, spec in specs.items():
    phase, stop, recipe = spec["phase"], spec["stop"], spec["recipe"]

    def trainer(run: str, resume=None, probe=None) -> Trainer:
        return Trainer(Recipe.from_dict(recipe), out / op / run, methods=[probe or Probe(phase)], resume=resume,
                       verbose=False, progress=False)

    probe = Probe(phase)
    full = trainer("full", probe=probe)
    full.fit()
    probe.digests.append(digest(full.state.model))
    trainer("part").fit(until=stop)
    dist.barrier()  # rank 0 has written the checkpoint before any rank reads it
    resumed = trainer("part", resume=out / op / "part")
    resumed.fit()
    hashes[op] = probe.digests + [digest(resumed.state.model)]
(out / f"hashes_rank{distributed.rank_world()[0]}.json").write_text(json.dumps(hashes))
distributed.exit_worker(0)
