"""Run under torchrun by test_progressive.py: one depth-dropping method on the tiny recipe, each rank
writing the blocks it ran at every step to ``<out>/plans_rank<r>.json``."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leantrain import Event, Method, Recipe, Trainer  # noqa: E402
from leantrain.core import distributed  # noqa: E402
from tests.conftest import tiny  # noqa: E402


class RecordPlans(Method):
    """Listed after the method under test: sees the plan it set for each step."""
    name = "record_plans"

    def __init__(self):
        super().__init__()
        self.plans = []

    def on_event(self, event, state):
        if event is Event.STEP_START:
            plan = state.model.plan
            self.plans.append(None if plan is None else [[bp.index, bp.scale] for bp in plan])


out, method = Path(sys.argv[1]), json.loads(sys.argv[2])
recorder = RecordPlans()
recipe = Recipe.from_dict(tiny(methods=[method]))
trainer = Trainer(recipe, out, methods=[recorder], verbose=False, progress=False)
trainer.fit()
(out / f"plans_rank{trainer.rank}.json").write_text(json.dumps(recorder.plans))
distributed.exit_worker(0)
