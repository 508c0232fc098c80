"""Run under torchrun by test_stitching_methods.py: one stitching method on the tiny recipe, each rank
writing the configuration it trained at every step (family methods) and its parameters' sums to
``<out>/configs_rank<r>_<phase>.json`` / ``<out>/params_rank<r>_<phase>.json``."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leantrain import Event, Method, Recipe, Trainer  # noqa: E402
from leantrain.core import distributed  # noqa: E402
from tests.conftest import tiny  # noqa: E402


class RecordConfigs(Method):
    """Listed after snnet: sees the configuration it sampled for each step."""
    name = "record_configs"

    def __init__(self):
        super().__init__()
        self.configs = {}

    def on_event(self, event, state):
        if event is Event.STEP_START and hasattr(state.model, "active"):
            self.configs[state.step] = state.model.active


out, recipe, until, resume, phase = Path(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
recorder = RecordConfigs()
recipe = Recipe.from_dict(tiny(**recipe))
trainer = Trainer(recipe, out, methods=[recorder], resume=None if resume == "-" else resume, verbose=False,
                  progress=False)
trainer.fit(until=None if until == "-" else int(until))
(out / f"configs_rank{trainer.rank}_{phase}.json").write_text(json.dumps(recorder.configs))
sums = {name: p.detach().double().sum().item() for name, p in trainer.state.model.named_parameters()}
(out / f"params_rank{trainer.rank}_{phase}.json").write_text(json.dumps(sums))
distributed.exit_worker(0)
