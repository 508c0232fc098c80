"""bench growth: the suite runs end to end on tiny shapes (sources per seed, every operator, outputs),
and its verdict follows the goals and the noise rule on synthetic rows."""
import argparse
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from leantrain import LeantrainError, Recipe
from leantrain.bench import growth

ROOT = Path(__file__).resolve().parents[1]


def test_full_setting_validates_and_every_operator_of_a_setting_grows_the_same_source():
    s = growth.FULL
    for model in (s.target, *s.sources.values()):
        Recipe.from_dict(growth.train_recipe(s, model, s.steps, 1))
    assert set(s.sources) == set(s.rows) == set(growth.SETTINGS)
    assert set(s.rows["depth"]) == {"stackbert", "msg", "mango", "mango_r2", "ligo"}
    assert set(s.rows["width_depth"]) == set(s.rows["width"]) == {"mango", "mango_r2", "ligo", "fpi", "aki",
                                                                  "net2net", "msg"}
    assert (s.sources["depth"]["n_layer"], s.sources["depth"]["n_embd"]) == (3, 128)
    assert (s.sources["width_depth"]["n_layer"], s.sources["width_depth"]["n_embd"]) == (4, 64)
    assert (s.sources["width"]["n_layer"], s.sources["width"]["n_embd"]) == (6, 64)
    head = lambda m: m["n_embd"] // m["n_head"]  # noqa: E731
    assert all(head(m) == head(s.target) for m in s.sources.values())  # mango, fpi, aki, net2net, msg keep it
    assert s.rows["depth"]["mango"]["rank"] == 1 and s.rows["depth"]["mango_r2"]["rank"] == 2
    # every job of a seed grows its setting's one source, and each recipe validates with every schedule
    sources = {n: {"path": f"src/{n}"} for n in growth.SETTINGS}
    jobs = growth.make_jobs(s, growth.SETTINGS, sources, 1, {})
    assert len(jobs) == 1 + 5 + 7 + 7 and jobs[0].method == "scratch"
    for job in jobs[1:]:
        name = job.method.split("/")[0]
        assert [m["source"] for m in job.recipe["methods"]] == [f"src/{name}"]
    for sched in (growth.Schedule(lr=1.5e-3, rewarm=False), growth.Schedule(moments="carry"),
                  growth.Schedule(init="function_preserving")):
        for row in ("stackbert", "mango", "ligo"):
            if sched.moments == "carry" and row not in growth.CARRY or sched.init != "copy" and row != "mango":
                continue
            job = growth.row_job(s, "depth", row, sched, sources, 1)
            r = Recipe.from_dict({**job.recipe, "methods": []})  # the train section validates
            grow = job.recipe["methods"][0]
            assert r.train.lr == sched.lr
            if row in ("mango", "ligo"):  # re-warm after the operator phase, the run's warm-up kept for it
                assert grow["target_warmup"] == (s.warmup if sched.rewarm else 0) and r.train.warmup_steps == s.warmup
            else:
                assert r.train.warmup_steps == (s.warmup if sched.rewarm else 0)
            assert grow.get("optimizer_state", "reset") == sched.moments
            assert grow.get("init", "copy") == sched.init


def tiny_setting(tmp_path, rows=None):
    text = tmp_path / "small.txt"
    text.write_text((ROOT / "leantrain" / "data" / "datasets" / "shakespeare_char.txt").read_text()[:20000])
    target = {"n_layer": 4, "n_head": 2, "n_embd": 32, "block_size": 16, "dropout": 0.0}
    narrow = {"n_head": 1, "n_embd": 16}
    all_rows = growth.settings_rows(growth.operators(operator_steps=3, ramp_steps=3))
    return replace(growth.QUICK, target=target, sources={"depth": {**target, "n_layer": 2},
                                                         "width_depth": {**target, "n_layer": 2, **narrow},
                                                         "width": {**target, **narrow}},
                   steps=12, source_steps=6, eval=(4, 2), batch=4, warmup=2, data={"path": str(text)},
                   rows=rows or all_rows)


def test_suite_runs_end_to_end_on_tiny_shapes(tmp_path):
    tiny = tiny_setting(tmp_path)
    args = argparse.Namespace(quick=True, seeds=1, threads=1, out=tmp_path / "out", setting=None, sweep=False,
                              schedules=None)
    assert growth.run_setting(args, tiny) == 0
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["method"] for r in rows] == ["scratch", *(f"{n}/{row}" for n in growth.SETTINGS for row in tiny.rows[n])]
    for r in rows[1:]:
        assert r["source_train_flops"] > 0 and "val_loss_after_growth" in r
        assert ("operator_parameters" in r) == (r["method"].split("/")[1] in growth.TRAINED)
    # the same source per setting: one source cost per setting
    for n in growth.SETTINGS:
        assert len({r["source_train_flops"] for r in rows if r["method"].startswith(n + "/")}) == 1
    report = (tmp_path / "out" / "report.md").read_text()
    assert "--quick" in report and "### Verdict" in report and "Mango saves" in report
    assert "Mango (ring rank 2) saves" in report and "**not swept**" in report
    for n in growth.SETTINGS:
        assert f"## Setting `{n}`" in report
        assert (tmp_path / "out" / f"val_loss_vs_flops_{n}.png").exists()
    assert (tmp_path / "out" / "sources" / "seed0" / "width" / "summary.json").exists()


def test_sweep_picks_a_winner_per_row_and_the_seeded_run_uses_it(tmp_path):
    ops = growth.operators(operator_steps=3, ramp_steps=3)
    tiny = tiny_setting(tmp_path, rows={"depth": {k: ops[k] for k in ("stackbert", "mango")},
                                        "width_depth": {"fpi": ops["fpi"]}, "width": {"fpi": ops["fpi"]}})
    out = tmp_path / "out"
    args = argparse.Namespace(quick=True, seeds=1, threads=1, out=out, setting=["depth"], sweep=True, schedules=None)
    assert growth.run_setting(args, tiny) == 0
    sweep = json.loads((out / "sweep.json").read_text())
    assert set(sweep["rows"]) == {"scratch", "depth/stackbert", "depth/mango"}
    n_lrs = len(tiny.sweep_lrs)
    tried = {row: [growth.Schedule(**t["schedule"]) for t in r["tried"]] for row, r in sweep["rows"].items()}
    assert len(tried["scratch"]) == n_lrs + 1  # the LR grid, then no warm-up
    assert [t.moments for t in tried["depth/stackbert"]][-1] == "carry" and len(tried["depth/stackbert"]) == n_lrs + 2
    assert [t.init for t in tried["depth/mango"]][-1] == "function_preserving"
    for row, r in sweep["rows"].items():  # the grid's lowest loss, then changes measurably lower only
        best = min((t for t in r["tried"] if t["step"] == 0), key=lambda t: t["final_val_loss"])
        for t in r["tried"]:
            if t["step"] > 0 and t["final_val_loss"] < best["final_val_loss"] - 2 * math.hypot(
                    t["final_val_loss_se"], best["final_val_loss_se"]):
                best = t
        assert r["winner"] == best["schedule"] and r["final_val_loss"] == best["final_val_loss"]
    assert "| depth/mango |" in (out / "sweep.md").read_text()
    # the seeded rows train with the winners
    args = argparse.Namespace(quick=True, seeds=1, threads=1, out=out, setting=["depth"], sweep=False,
                              schedules=out / "sweep.json")
    assert growth.run_setting(args, tiny) == 0
    rows = json.loads((out / "results.json").read_text())
    for r in rows:
        key = r["method"]
        win = growth.Schedule(**sweep["rows"][key]["winner"])
        assert r["config"]["train"]["lr"] == win.lr
    report = (out / "report.md").read_text()
    assert "## Schedules (the sweep)" in report and "not swept" not in report and "--setting depth" in report
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(LeantrainError, match="not a growth sweep file"):
        growth.read_schedules(bad)
    both = argparse.Namespace(**{**vars(args), "sweep": True})
    with pytest.raises(LeantrainError, match="use one"):
        growth.run_setting(both, tiny)


def test_sweep_lrs_replace_the_grid_only_for_a_sweep(tmp_path):
    tiny = tiny_setting(tmp_path)
    wider = growth.with_sweep_lrs(tiny, [8e-3, 5e-3, 8e-3], sweep=True)
    assert wider.sweep_lrs == (5e-3, 8e-3) and growth.with_sweep_lrs(tiny, None, sweep=True) is tiny
    assert [c.lr for c in growth.candidates("mango", 0, None, wider)] == [5e-3, 8e-3]
    with pytest.raises(LeantrainError, match="use it with --sweep"):
        growth.with_sweep_lrs(tiny, [8e-3], sweep=False)
    for bad in (0.0, -1e-3, float("nan")):
        with pytest.raises(LeantrainError, match="must be positive numbers"):
            growth.with_sweep_lrs(tiny, [5e-3, bad], sweep=True)


def _rows(flops: dict[str, list[float | None]], seconds_factor: float = 1.0) -> list[dict]:
    """Synthetic rows: per method, FLOPs to target × scratch for each seed (None: not reached)."""
    rows = []
    for method, values in flops.items():
        for seed, x in enumerate(values):
            rows.append({"method": method, "seed": seed, "final_val_loss": 2.0, "final_val_loss_se": 0.01,
                         "flops_x": x, "flops_x_se": 0.01, "seconds_x": None if x is None else x * seconds_factor,
                         "flops_with_source_x": None if x is None else x + 0.05})
    return rows


def test_verdict_follows_the_goals_and_the_noise_rule():
    good = _rows({"scratch": [1.0] * 3, "mango": [0.30, 0.32, 0.31], "ligo": [0.50, 0.52, 0.49],
                  "fpi": [0.31, 0.33, 0.30], "aki": [0.6, None, 0.6]})
    text = "\n".join(growth.verdict(good))
    assert "fewer FLOPs: not met** — aki never reach" in text
    assert "Mango saves ≥ 60% of scratch's FLOPs: met** — 69% without" in text
    assert "more than ligo (50%): **yes**" in text
    assert "more than fpi (69%): no difference measurable here" in text  # within the resolution
    assert "more than aki: **yes** — aki does not reach the target on 1/3" in text
    slow = "\n".join(growth.verdict(_rows({"scratch": [1.0] * 3, "mango": [0.5, 0.5, 0.5]}, seconds_factor=1.5)))
    assert "Mango saves ≥ 60% of scratch's FLOPs: not met** — 50%" in slow and "our setting gives less" in slow
    assert "wall-time saving 25% vs FLOP saving 50% (goal: at most 10 points below): **not met**" in slow


def test_a_later_sweep_step_wins_only_beyond_the_noise():
    grid = {"final_val_loss": 2.50, "final_val_loss_se": 0.005}
    assert growth.wins({"final_val_loss": 2.499, "final_val_loss_se": 0.005}, grid, step=0)  # the grid: lowest
    assert not growth.wins({"final_val_loss": 2.49, "final_val_loss_se": 0.005}, grid, step=1)  # within 2·√2·SE
    assert growth.wins({"final_val_loss": 2.48, "final_val_loss_se": 0.005}, grid, step=3)
    assert not growth.wins({"final_val_loss": float("nan"), "final_val_loss_se": 0.0}, grid, step=0)
    assert growth.wins(grid, {"final_val_loss": float("nan"), "final_val_loss_se": 0.0}, step=1)
    assert growth.wins(grid, None, step=0)


def test_hf_settings_keep_the_design_the_head_size_and_the_grouped_query_ratio():
    """--family hf: the same three same-source settings (and rows) on Llama shapes; every recipe validates."""
    pytest.importorskip("transformers")
    for s in (growth.HF_FULL, growth.HF_QUICK):
        assert s.family == "hf" and set(s.sources) == set(s.rows) == set(growth.SETTINGS)
        assert s.rows == (growth.FULL if s is growth.HF_FULL else growth.QUICK).rows
        for model in (s.target, *s.sources.values()):
            Recipe.from_dict(growth.train_recipe(s, model, s.steps, 1))
        t = s.target
        head = lambda m: m["hidden_size"] // m["num_attention_heads"]  # noqa: E731
        ratio = lambda m: m["num_attention_heads"] // m["num_key_value_heads"]  # noqa: E731
        assert all(head(m) == head(t) and ratio(m) == ratio(t) for m in s.sources.values())
        layers, width = growth.shape(t)[:2]
        assert growth.shape(s.sources["depth"])[:2] == (layers // 2, width)
        assert growth.shape(s.sources["width_depth"])[:2] == (layers // 2, width // 2)
        assert growth.shape(s.sources["width"])[:2] == (layers, width // 2)
    assert growth.FAMILY_SETTINGS[("hf", True)] is growth.HF_QUICK
    # the gpt-only sweep steps are not tried on hf
    best = growth.DEFAULT_SCHEDULE
    assert growth.candidates("stackbert", 2, best, growth.HF_QUICK) == []
    assert growth.candidates("mango", 3, best, growth.HF_QUICK) == []
    assert growth.candidates("mango", 3, best, growth.QUICK) != []


def tiny_hf_setting(tmp_path, rows=None):
    text = tmp_path / "small.txt"
    text.write_text((ROOT / "leantrain" / "data" / "datasets" / "shakespeare_char.txt").read_text()[:20000])
    target = {**growth.HF_TARGET, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2}
    narrow = {"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1}
    return replace(growth.HF_QUICK, target=target, block_size=16,
                   sources={"depth": {**target, "num_hidden_layers": 1},
                            "width_depth": {**target, **narrow, "num_hidden_layers": 1},
                            "width": {**target, **narrow}},
                   steps=8, source_steps=4, eval=(4, 2), batch=4, warmup=2, data={"path": str(text)},
                   rows=rows or growth.settings_rows(growth.operators(operator_steps=2, ramp_steps=2)))


def test_hf_family_suite_runs_end_to_end_on_tiny_llamas(tmp_path):
    """--family hf: tiny Llama sources grown by every operator of every setting through the weight roles."""
    pytest.importorskip("transformers")
    tiny = tiny_hf_setting(tmp_path)
    args = argparse.Namespace(quick=True, seeds=1, threads=1, out=tmp_path / "out", family="hf", setting=None,
                              sweep=False, schedules=None)
    assert growth.run_setting(args, tiny) == 0
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["method"] for r in rows] == ["scratch", *(f"{n}/{row}" for n in growth.SETTINGS for row in tiny.rows[n])]
    for r in rows[1:]:
        assert r["source_train_flops"] > 0 and "val_loss_after_growth" in r
    for n in growth.SETTINGS:  # one source per setting
        assert len({r["source_train_flops"] for r in rows if r["method"].startswith(n + "/")}) == 1
    report = (tmp_path / "out" / "report.md").read_text()
    assert "--family hf" in report and "Hugging Face Llama" in report and "**not swept**" in report
    # MSG (function-preserving) starts at its source's whole-split loss
    from leantrain.cli import evaluate_checkpoint
    after = {r["method"]: r["val_loss_after_growth"] for r in rows[1:]}
    for n in growth.SETTINGS:
        source = evaluate_checkpoint(tmp_path / "out" / "sources" / "seed0" / n)["val_loss"]
        assert after[f"{n}/msg"] == pytest.approx(source, abs=2e-5)


def test_hf_sweep_and_schedules(tmp_path):
    """--family hf --sweep: the LR grid and re-warm only; --schedules refuses a sweep of another family."""
    pytest.importorskip("transformers")
    ops = growth.operators(operator_steps=2, ramp_steps=2)
    tiny = tiny_hf_setting(tmp_path, rows={"depth": {k: ops[k] for k in ("stackbert", "mango")},
                                           "width_depth": {"fpi": ops["fpi"]}, "width": {"fpi": ops["fpi"]}})
    out = tmp_path / "out"
    args = argparse.Namespace(quick=True, seeds=1, threads=1, out=out, family="hf", setting=["depth"], sweep=True,
                              schedules=None)
    assert growth.run_setting(args, tiny) == 0
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["setup"]["family"] == "hf"
    for r in sweep["rows"].values():
        assert len(r["tried"]) == len(tiny.sweep_lrs) + 1  # no carried moments, no function-preserving init
        assert all(t["schedule"]["moments"] == "reset" and t["schedule"]["init"] == "copy" for t in r["tried"])
    assert "gpt-only" in (out / "sweep.md").read_text()
    seeded = argparse.Namespace(**{**vars(args), "sweep": False, "schedules": out / "sweep.json"})
    assert growth.run_setting(seeded, tiny) == 0
    for r in json.loads((out / "results.json").read_text()):
        assert r["config"]["train"]["lr"] == growth.Schedule(**sweep["rows"][r["method"]]["winner"]).lr
    with pytest.raises(LeantrainError, match="swept for the hf family"):
        growth.read_schedules(out / "sweep.json", tiny_setting(tmp_path))
