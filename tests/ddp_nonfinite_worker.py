"""Run under torchrun by test_robustness.py: rank 1's loss is NaN at step 5; every rank must stop there."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leantrain import Recipe, Trainer  # noqa: E402
from leantrain.core import distributed  # noqa: E402
from leantrain.errors import RunStopped  # noqa: E402
from tests.conftest import tiny  # noqa: E402
from tests.contract_nonfinite import NaNLossAt  # noqa: E402

out, policy = sys.argv[1], sys.argv[2]
recipe = Recipe.from_dict(tiny(train={"log_interval": 1, "checkpoint_interval": 4, "on_nonfinite": policy}))
trainer = Trainer(recipe, out, methods=[NaNLossAt(step=5, rank=1)], verbose=False, progress=False)
try:
    trainer.fit()
    code = 0
except RunStopped as e:
    print(f"rank {trainer.rank}: {e}", file=sys.stderr, flush=True)
    code = e.exit_code
distributed.exit_worker(code)
