"""The paper-scale presets (GPU, bf16) cannot rot: their recipes validate at full size, and the
whole suite runs end to end on CPU with the preset's shapes scaled down (a test-only override)."""
import argparse
from dataclasses import replace

from leantrain import Recipe
from leantrain.bench import depth, dropout


def args(tmp_path, preset):
    return argparse.Namespace(quick=True, seeds=1, threads=1, out=tmp_path, preset=preset)


def test_depth_paper_preset_validates_at_full_size_and_runs_scaled_down(tmp_path):
    jobs, facts = depth.make_jobs("full", 1, depth.PAPER)
    for job in jobs:
        r = Recipe.from_dict(job.recipe)
        assert r.model.n_layer == 48 and r.train.device == "cuda" and r.train.precision == "bf16"
    assert facts["stacking"] == [24, 36, 48] and "24-32-40-48" in jobs[2].note
    tiny = replace(depth.PAPER, model={**depth.PAPER.model, "n_layer": 4, "n_head": 2, "n_embd": 16,
                                       "block_size": 16},
                   batch=4, steps={"quick": 8}, eval={"quick": (4, 2)}, train={"device": "cpu", "precision": "fp32"})
    assert depth.run_setting(args(tmp_path, "paper"), tiny, "quick") == 0
    report = (tmp_path / "report.md").read_text()
    assert "--preset paper" in report and "every evaluation is whole-split" in report
    assert (tmp_path / "results.json").exists() and (tmp_path / "val_loss_vs_flops.png").exists()


def test_dropout_paper_preset_validates_at_full_size_and_runs_scaled_down(tmp_path):
    full = dropout.paper_recipe()
    r = Recipe.from_dict(full)
    assert (r.model.n_layer, r.model.n_head, r.model.n_embd, r.model.block_size) == (6, 6, 384, 256)
    assert (r.train.batch_size, r.train.max_steps, r.train.device, r.train.precision) == (64, 5000, "cuda", "bf16")
    for job in dropout.jobs(5000, 1, full):
        Recipe.from_dict(job.recipe)
    base = dropout.paper_recipe(8, {"model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16},
                                    "train": {"device": "cpu", "precision": "fp32", "batch_size": 4,
                                              "eval_interval": 4, "eval_iters": 2, "log_interval": 4},
                                    "data": {"train_chars": 5000}})
    assert dropout.run_suite(args(tmp_path, "paper"), base, 8) == 0
    report = (tmp_path / "report.md").read_text()
    assert "--preset paper" in report and "whole validation split" in report
