"""The benchmark harness's arithmetic: cost-to-target, matched-budget quality, ratio tables."""
import pytest

from leantrain.bench.common import Job, Run, first_reaching, interp, report_table, result_rows
from leantrain.cli import main


def curve(points):
    return [{"step": s, "flops": f, "seconds": f / 10, "val_loss": v} for s, f, v in points]


def run(method, seed, points, flops, seconds):
    summary = {"config": {}, "final_val_loss": points[-1][2], "best_val_loss": min(p[2] for p in points),
               "train_flops": flops, "wall_seconds": seconds, "peak_activation_bytes": 1,
               "tokens_per_second": 1.0}
    return Run(Job(method, {}), seed, summary, curve(points))


def test_first_reaching_and_interpolation():
    c = curve([(0, 0, 4.0), (10, 100, 3.0), (20, 200, 2.0)])
    assert first_reaching(c, 3.0)["step"] == 10
    assert first_reaching(c, 1.0) is None
    assert interp(c, "flops", 150) == pytest.approx(2.5)
    assert interp(c, "flops", 250) is None


def test_result_rows_cost_to_target_against_same_seed_baseline():
    runs = [run("base", 0, [(0, 0, 4.0), (10, 100, 3.0), (20, 200, 2.0)], 200, 20),
            run("fast", 0, [(0, 0, 4.0), (10, 60, 2.5), (20, 120, 1.9)], 120, 15),
            run("slow", 0, [(0, 0, 4.0), (20, 150, 2.2)], 150, 15)]
    rows = {r["method"]: r for r in result_rows("t", runs, baseline="base")}
    assert rows["fast"]["target_val_loss"] == 2.0
    assert rows["fast"]["reached"] and rows["fast"]["flops_to_target"] == 120
    assert rows["fast"]["steps_to_target"] == 20
    assert not rows["slow"]["reached"] and rows["slow"]["flops_to_target"] is None
    assert rows["slow"]["baseline_val_loss_at_same_flops"] == pytest.approx(2.5)
    table = report_table(list(rows.values()), "base")
    fast_line = next(line for line in table.splitlines() if line.startswith("| fast"))
    assert "0.6×" in fast_line and "0.75×" in fast_line and "1/1" in fast_line


def test_bench_rejects_bad_seed_count(capsys):
    assert main(["bench", "overhead", "--seeds", "0"]) == 2
    assert "--seeds must be positive" in capsys.readouterr().err
