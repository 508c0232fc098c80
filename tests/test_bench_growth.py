"""bench growth: the suite runs end to end on tiny shapes (sources per seed, every operator, outputs),
and its verdict follows the goals and the noise rule on synthetic rows."""
import argparse
import json
from dataclasses import replace
from pathlib import Path

from leantrain import Recipe
from leantrain.bench import growth

ROOT = Path(__file__).resolve().parents[1]


def test_full_setting_validates_and_every_operator_fits_its_source():
    s = growth.FULL
    for model in (s.target, s.source, *s.depth_sources.values()):
        Recipe.from_dict(growth.train_recipe(s, model, s.steps, 1))
    assert set(s.operators) == set(growth.GROWN)
    assert s.target["n_layer"] == 2 * s.depth_sources["stackbert"]["n_layer"]
    assert s.target["n_layer"] == s.operators["gstack"]["g"] * s.depth_sources["gstack"]["n_layer"]
    head = lambda m: m["n_embd"] // m["n_head"]  # noqa: E731
    assert head(s.source) == head(s.target)  # mango, fpi, aki, net2net and msg keep the head size


def test_suite_runs_end_to_end_on_tiny_shapes(tmp_path):
    text = tmp_path / "small.txt"
    text.write_text((ROOT / "leantrain" / "data" / "datasets" / "shakespeare_char.txt").read_text()[:20000])
    target = {"n_layer": 4, "n_head": 2, "n_embd": 32, "block_size": 16, "dropout": 0.0}
    tiny = replace(growth.QUICK, target=target, source={**target, "n_layer": 2, "n_head": 1, "n_embd": 16},
                   depth_sources={"stackbert": {**target, "n_layer": 2}, "gstack": {**target, "n_layer": 1}},
                   steps=12, source_steps=6, eval=(4, 2), batch=4, warmup=2, data={"path": str(text)},
                   operators=growth.operators(operator_steps=3, ramp_steps=3, g=4))
    args = argparse.Namespace(quick=True, seeds=1, threads=1, out=tmp_path / "out")
    assert growth.run_setting(args, tiny) == 0
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["method"] for r in rows] == ["scratch", *growth.GROWN]
    for r in rows[1:]:
        assert r["source_train_flops"] > 0 and "val_loss_after_growth" in r
        assert ("operator_parameters" in r) == (r["method"] in ("mango", "ligo"))
    report = (tmp_path / "out" / "report.md").read_text()
    assert "--quick" in report and "## Verdict" in report and "Mango saves" in report
    for plot in ("val_loss_vs_flops.png", "val_loss_vs_seconds.png", "val_loss_vs_flops_with_source.png"):
        assert (tmp_path / "out" / plot).exists()
    assert (tmp_path / "out" / "sources" / "seed0" / "main" / "summary.json").exists()


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


def test_hf_family_suite_runs_end_to_end_on_tiny_llamas(tmp_path):
    """--family hf: a tiny Llama source grown by every operator through the weight roles (--quick shapes
    shrunk further); the settings validate and keep the head size and the grouped-query ratio."""
    import pytest
    pytest.importorskip("transformers")
    for s in (growth.HF_FULL, growth.HF_QUICK):
        for model in (s.target, s.source, *s.depth_sources.values()):
            Recipe.from_dict(growth.train_recipe(s, model, s.steps, 1))
        t, src = s.target, s.source
        assert t["hidden_size"] // t["num_attention_heads"] == src["hidden_size"] // src["num_attention_heads"]
        ratio = lambda m: m["num_attention_heads"] // m["num_key_value_heads"]  # noqa: E731
        assert ratio(t) == ratio(src)
    text = tmp_path / "small.txt"
    text.write_text((ROOT / "leantrain" / "data" / "datasets" / "shakespeare_char.txt").read_text()[:20000])
    target = {**growth.HF_TARGET, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2}
    tiny = replace(growth.HF_QUICK, target=target, block_size=16,
                   source={**target, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                           "num_attention_heads": 2, "num_key_value_heads": 1},
                   depth_sources={"stackbert": {**target, "num_hidden_layers": 1},
                                  "gstack": {**target, "num_hidden_layers": 1}},
                   steps=8, source_steps=4, eval=(4, 2), batch=4, warmup=2, data={"path": str(text)},
                   operators=growth.operators(operator_steps=2, ramp_steps=2, g=2))
    args = argparse.Namespace(quick=True, seeds=1, threads=1, out=tmp_path / "out", family="hf")
    assert growth.run_setting(args, tiny) == 0
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["method"] for r in rows] == ["scratch", *growth.GROWN]
    for r in rows[1:]:
        assert r["source_train_flops"] > 0 and "val_loss_after_growth" in r
    report = (tmp_path / "out" / "report.md").read_text()
    assert "--family hf" in report and "Hugging Face Llama" in report
    # MSG (function-preserving) starts at its source's whole-split loss
    from leantrain.cli import evaluate_checkpoint
    after = {r["method"]: r["val_loss_after_growth"] for r in rows[1:]}
    source = evaluate_checkpoint(tmp_path / "out" / "sources" / "seed0" / "main")["val_loss"]
    assert after["msg"] == pytest.approx(source, abs=2e-5)
