"""Every method of the hf table on every family under torchrun (2 gloo ranks): one launch per family."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from .hf_settings import FAMILIES, METHODS  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_method_under_ddp_resumes_exactly_with_replicas_in_sync(family, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "ddp_hf_worker.py"), str(tmp_path), family, ",".join(METHODS)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert sorted(results) == sorted(METHODS)
    for name, r in results.items():
        assert r["world"] == 2 and r["flops"] > 0, name
        assert r["same_weights"], f"{family}/{name}: the replicas' weights differ"
        assert r["resume_exact"], f"{family}/{name}: the resumed run differs"
