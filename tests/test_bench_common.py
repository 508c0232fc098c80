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


# ----------------------------------------------------------------------------------- whole-split harness
from leantrain.bench.common import (WHOLE, Difference, difference, run_interleaved, with_se)  # noqa: E402
from leantrain.core import Trainer  # noqa: E402
from leantrain import Recipe  # noqa: E402

from .conftest import tiny  # noqa: E402


def test_whole_split_figures_and_reaching_on_the_whole_split():
    jobs = [Job("base", tiny(train={"max_steps": 12})), Job("short", tiny(train={"max_steps": 6}))]
    runs = run_interleaved(jobs, [0], log=lambda m: None, baseline="base", target="final")
    base, short = runs
    # the final figure is the whole validation split, with its standard error, not the fixed batches
    ref = Trainer(Recipe.from_dict(tiny(train={"max_steps": 12, "seed": 0})), None, verbose=False,
                  progress=False)
    ref.fit()
    whole = ref.evaluate_split("val")
    assert base.figures["final"]["loss"] == whole.loss and base.figures["final"]["n"] == whole.n > 100
    assert base.figures["final"]["loss"] != base.summary["final_val_loss"]  # fixed batches differ
    assert 0 < base.figures["final"]["loss_se"] < 0.05
    rows = result_rows("t", runs, baseline="base")
    row = {r["method"]: r for r in rows}
    assert row["short"]["target_val_loss"] == whole.loss
    # reached is judged on whole-split losses logged in the curve, never on the fixed batches
    hits = [c for c in short.curve if WHOLE in c and c[WHOLE] <= whole.loss]
    assert row["short"]["reached"] == bool(hits)
    assert row["base"]["reached"] and row["base"]["steps_to_target"] == 12
    assert row["base"]["final_val_loss_se"] > 0 and "best_step" in row["base"]


def test_every_mode_scores_each_evaluation_on_the_whole_split():
    runs = run_interleaved([Job("a", tiny())], [0], log=lambda m: None, mode="every")
    assert all(WHOLE in c and WHOLE + "_se" in c for c in runs[0].curve)
    best = min(runs[0].curve, key=lambda c: c[WHOLE])
    assert runs[0].figures["best"]["loss"] == best[WHOLE] and runs[0].figures["best_step"] == best["step"]


def test_differences_respect_both_noise_bands():
    def rows(deltas, se):
        out = []
        for seed, d in enumerate(deltas):
            out += [{"method": "b", "seed": seed, "x": 2.0, "x_se": se},
                    {"method": "m", "seed": seed, "x": 2.0 + d, "x_se": se}]
        return out
    d = difference(rows([-0.05, -0.05, -0.05], 0.001), "m", "b", "x")
    assert d.measurable and d.word() == "lower" and d.seed_std == 0
    assert difference(rows([-0.05, -0.05, -0.05], 0.05), "m", "b", "x").word() == "no difference measurable here"
    assert difference(rows([-0.05, 0.04, -0.06], 0.0), "m", "b", "x").word() == "no difference measurable here"
    assert difference(rows([0.03, 0.03], 0.001), "m", "b", "x").word() == "higher"
    assert Difference(-0.01, 0.001, None, 1).measurable  # one seed: the SE test alone
    assert with_se([{"x": 1.0, "x_se": 0.01}, {"x": 3.0, "x_se": 0.01}], "x") == "2.0000 ± 1.4142 [SE 0.0100]"
