"""Run under torchrun by test_ddp.py: a tiny recipe with a schedule and a surgery method."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leantrain import Recipe, Trainer  # noqa: E402
from leantrain.core import distributed  # noqa: E402
from tests.conftest import tiny  # noqa: E402
from tests.contract_methods import GrowConfig, GrowOneBlock, LinearDropoutProbe  # noqa: E402

out, until, resume = sys.argv[1], sys.argv[2], sys.argv[3]
recipe = Recipe.from_dict(tiny(model={"dropout": 0.1}, train={"log_interval": 1}))
trainer = Trainer(recipe, out, methods=[LinearDropoutProbe(), GrowOneBlock(GrowConfig(at_step=8))],
                  resume=None if resume == "-" else resume, verbose=False, progress=False)
trainer.fit(until=None if until == "-" else int(until))
distributed.exit_worker(0)  # see there: avoids a rare abort in interpreter finalization
