"""`leantrain bench overhead --quick` runs end to end and reports the step options' ratios."""
import json
from pathlib import Path

import pytest

from leantrain.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_overhead_quick_reports_compiled_and_accumulated_ratios(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # the default recipe is the repository's baseline
    code = main(["bench", "overhead", "--quick", "--threads", "1", "--compile-backend", "eager",
                 "--out", str(tmp_path)])
    assert code == 0
    report = (tmp_path / "report.md").read_text()
    assert "--quick" in report and "## Step options, the same interleaved rounds" in report
    assert "| train.compile (eager;" in report and "| train.grad_accum_steps 2 × batch 6" in report
    rows = json.loads((tmp_path / "results.json").read_text())
    kinds = {r["method"] for r in rows if r["suite"] == "step_options"}
    assert kinds == {"leantrain_eager", "leantrain_compiled", "leantrain_accum2"}
    assert all(r["compiled_graphs"] >= 1 for r in rows if r["method"] == "leantrain_compiled")
    assert all(r["steady_ms_per_step"] > 0 for r in rows if r["suite"] == "step_options")
