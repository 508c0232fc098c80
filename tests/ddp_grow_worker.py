"""Run under torchrun by test_grow.py, in one launch: a Mango growth run whole, the same run stopped
mid-phase and resumed; each rank writes digests of its model at the end of the operator phase (after
the operator's output is written into the target, before the trainer re-wraps DDP — whose broadcast
would hide a difference) and at the end of training."""
import hashlib
import json
import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leantrain import Event, Method, Recipe, Trainer  # noqa: E402
from leantrain.core import distributed  # noqa: E402


def digest(model) -> str:
    h = hashlib.sha256()
    for _, p in model.named_parameters():
        h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()


class DigestAtGrowth(Method):
    """Listed after grow: at the STEP_START where grow ends its phase, digests the materialised target."""
    name = "digest_probe"

    def __init__(self, step: int):
        super().__init__()
        self.step, self.digests = step, []

    def on_event(self, event, state):
        if event is Event.STEP_START and state.step == self.step:
            self.digests.append(digest(state.model))


out, spec = Path(sys.argv[1]), json.loads(sys.argv[2])
phase = next(m for m in spec["methods"] if m["name"] == "grow")["operator_steps"]


def trainer(run: str, resume=None, probe=None) -> Trainer:
    return Trainer(Recipe.from_dict(spec), out / run, methods=[probe or DigestAtGrowth(phase)], resume=resume,
                   verbose=False, progress=False)


probe = DigestAtGrowth(phase)
full = trainer("full", probe=probe)
full.fit()
probe.digests.append(digest(full.state.model))
trainer("part").fit(until=phase // 2)
dist.barrier()  # rank 0 has written the checkpoint before any rank reads it
trainer("part", resume=out / "part").fit()
(out / f"hashes_rank{full.rank}.json").write_text(json.dumps(probe.digests))
distributed.exit_worker(0)
