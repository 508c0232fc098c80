"""The dropout benchmark's figures and verdict on synthetic runs (the real runs are benchmarks)."""
import pytest

from leantrain.bench import dropout as bench
from leantrain.bench.common import Job, Run, result_rows


def make_run(method, seed, vals, train_gap=0.2, p=None, dropout=0.0):
    """A run whose validation curve is ``vals`` at steps 0, 10, 20, ..."""
    curve = [{"step": 10 * i, "flops": 100 * i, "seconds": float(i), "val_loss": v, "train_eval_loss": v - train_gap}
             | ({"dynamic_dropout/p": p(i)} if p else {}) for i, v in enumerate(vals)]
    summary = {"config": {"model": {"dropout": dropout}}, "final_val_loss": vals[-1], "best_val_loss": min(vals),
               "train_flops": 100 * (len(vals) - 1), "wall_seconds": float(len(vals) - 1),
               "peak_activation_bytes": 1, "tokens_per_second": 1.0}
    return Run(Job(method, {}), seed, summary, curve)


def rows_for(schedule_curves, seeds=(0, 1)):
    runs = []
    for seed in seeds:
        runs.append(make_run("fixed 0.0", seed, [4.0, 3.0, 2.6, 2.7, 2.9]))
        runs.append(make_run("fixed 0.1", seed, [4.0, 3.1, 2.6, 2.5, 2.55], dropout=0.1))
        for name, vals in schedule_curves.items():
            runs.append(make_run(name, seed, vals, p=lambda i: 0.2 - 0.05 * i))
    rows = result_rows("dropout", runs, "fixed 0.1", target_key="best_val_loss")
    bench.add_dropout_figures(rows, "fixed 0.1")
    return rows


@pytest.fixture
def schedules(monkeypatch):
    monkeypatch.setattr(bench, "SCHEDULES", {"good": {}, "bad": {}})
    return {"good": [4.0, 2.9, 2.45, 2.4, 2.4], "bad": [4.0, 3.2, 2.8, 2.6, 2.52]}


def test_figures_are_ratios_to_the_same_seed_baseline_reaching_its_best(schedules):
    rows = {(r["method"], r["seed"]): r for r in rows_for(schedules)}
    base, good, bad = rows["fixed 0.1", 0], rows["good", 0], rows["bad", 0]
    assert base["target_val_loss"] == 2.5 and base["steps_to_target"] == 30
    assert good["steps_to_target"] == 20 and good["steps_to_target_ratio"] == pytest.approx(20 / 30)
    assert good["flops_to_target_ratio"] == pytest.approx(200 / 300)
    assert not bad["reached"] and bad["steps_to_target_ratio"] is None
    assert base["gap"] == pytest.approx(0.2)


def test_verdict_names_only_schedules_meeting_both_bars(schedules):
    text = "\n".join(bench.verdict(rows_for(schedules), "fixed 0.1"))
    assert "met by: good." in text
    assert "**good**: best val loss 0.1000 lower" in text and "0.67× the baseline's steps" in text
    assert "**bad**" in text and "does not reach the target in 2/2 seed(s)" in text
    assert "Dropout matters here" in text and "The baseline overfits" in text


def test_verdict_says_plainly_when_nothing_helps(schedules):
    schedules["good"] = [4.0, 3.0, 2.6, 2.49, 2.49]  # reaches the target, but only 0.01 lower
    text = "\n".join(bench.verdict(rows_for(schedules), "fixed 0.1"))
    assert "**No schedule meets the goal**" in text
    assert "**good**: best val loss 0.0100 lower" in text and "does not meet the goal" in text


def test_regime_check_flags_a_run_where_dropout_does_not_pay_off(schedules):
    rows = rows_for(schedules)
    text = "\n".join(bench.regime_check(rows, "fixed 0.0"))
    assert "No dropout was the best fixed rate" in text


def test_sweep_table_marks_the_baseline_and_the_best_step(schedules):
    table = "\n".join(bench.sweep_table(rows_for(schedules), "fixed 0.1"))
    line = next(line for line in table.splitlines() if line.startswith("| 0.1"))
    assert "(baseline)" in line and line.rstrip().endswith("| 30 ± 0 |")
