"""Run under torchrun by test_pipeline.py: a 2-stage pipeline whose stage 1 raises at step 7."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leantrain import Event, Method, Recipe, Trainer  # noqa: E402
from leantrain.core import distributed  # noqa: E402
from leantrain.errors import LeantrainError  # noqa: E402


class FailOnStage1(Method):
    name = "probe_fail"

    def on_event(self, event, state):
        if event is Event.STEP_START and state.rank == 1 and state.step == 6:
            raise RuntimeError("stage 1 fails on purpose at step 7")


recipe = Recipe.load(sys.argv[1])
trainer = Trainer(recipe, sys.argv[2], methods=[FailOnStage1()], verbose=False, progress=False)
try:
    trainer.fit()
    code = 0
except LeantrainError as e:
    print(f"leantrain: error: {e}", file=sys.stderr, flush=True)
    code = 2
distributed.exit_worker(code)
