"""bench pool: the suite runs end to end scaled down; its budget matching, front comparison and verdict
are checked on known numbers."""
import argparse
import json

import pytest

from leantrain.bench import pool
from leantrain.data import BUNDLED
from leantrain.measure import analytic_gpt_flops

TINY = pool.Setting(anchors=((16, 2), (32, 2), (48, 2)), depth=4, auxiliaries=((16, 2), (32, 2), (48, 2)), aux_depth=2,
                    block_size=16, batch=4, steps={"quick": 6}, family_steps={"quick": 4}, eval={"quick": (3, 2)})


def test_the_suite_runs_end_to_end_scaled_down(tmp_path):
    text = tmp_path / "small.txt"
    text.write_text(BUNDLED.read_text()[:20000])
    setting = pool.Setting(**{**TINY.__dict__, "data": {"path": str(text)}})
    args = argparse.Namespace(quick=True, seeds=1, threads=1, out=tmp_path / "out", budget="flops", keep_runs=True,
                              stitch_lr_scale=3.0)
    assert pool.run_setting(args, setting) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "--quick" in report and "## Verdict" in report and "**Storage**" in report
    assert "**Pareto front**" in report and (tmp_path / "out" / "pareto.png").exists()
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    families = {r["family"]: r for r in rows if r["kind"] == "family"}
    assert len(families["snnet"]["configs"]) == 3 + 2 * 10 and len(families["learngene_pool"]["configs"]) == 3 + 3 * 4
    assert "--stitch-lr-scale 3" in report and "least-squares stitch init" in report
    assert all(c["val_loss"] is not None for f in families.values() for c in f["configs"])
    stages = {r["stage"]: r for r in rows if r["kind"] == "component"}
    assert families["learngene_pool"]["build_stages"] == ["anchor48", "aux16", "aux32", "aux48", "learngene_pool"]
    assert families["learngene_pool"]["init_flops"] > 0  # least squares: its forwards count in the build
    assert families["snnet"]["build_flops"] > sum(stages[s]["train_flops"] for s in ("anchor16", "anchor32",
                                                                                       "anchor48", "snnet"))
    assert (tmp_path / "out" / "runs" / "seed0" / "learngene_pool" / "checkpoints").is_dir()  # --keep-runs


def test_flops_budget_gives_the_distillations_the_two_narrower_anchors_training_flops():
    s, vocab, S = pool.CPU, 77, 1200
    assert s.auxiliaries[0][0] == s.anchors[0][0]  # the narrow instance is as wide as the smallest anchor
    assert len(s.auxiliaries) == 3  # and there is a middle one
    steps = pool.distill_steps(s, S, vocab, "flops")
    anchors = sum(analytic_gpt_flops(4, w, 64, vocab, 12) for w in (64, 128)) * S
    teacher = analytic_gpt_flops(4, 192, 64, vocab, 12, train=False)
    distil = sum(analytic_gpt_flops(2, w, 64, vocab, 12) + teacher for w in (64, 128, 192)) * steps
    assert abs(distil / anchors - 1) < 0.01
    assert pool.distill_steps(s, S, vocab, "steps") == S


def test_the_hf_setting_follows_the_same_design():
    """--family hf: auxiliaries as wide as the anchors (narrow, middle, the ancestry's) at half their depth."""
    hf = pool.SETTINGS["hf"]
    assert hf.family == "hf" and [w for w, _ in hf.auxiliaries] == [w for w, _ in hf.anchors]
    assert hf.aux_depth * 2 == hf.depth and hf.pool_init == pool.CPU.pool_init == "least_squares"


def _family(name, seed, points):
    """A family result with configurations (flops, loss) for one seed (SE 0.005 each)."""
    return {"family": name, "seed": seed, "stored": {"total": 100 if name == "snnet" else 50, "stitches": 1},
            "configs": [{"id": i, "kind": "anchor" if i == 0 else "sl", "route": f"r{i}", "params": f, "flops": f,
                         "val_loss": loss, "val_loss_se": 0.005} for i, (f, loss) in enumerate(points)],
            "build_flops": 1.0, "build_seconds": 2.0 if name == "snnet" else 1.0}


def test_fronts_are_compared_as_the_best_model_within_each_budget_both_families_cover():
    sn = [(10, 2.0), (20, 1.8), (30, 1.9), (40, 1.6)]
    lg = [(5, 2.3), (15, 1.95), (35, 1.7)]
    result = {"families": [_family("snnet", s, [(f, v + d) for f, v in sn]) for s, d in ((0, 0.0), (1, 0.01))]
              + [_family("learngene_pool", s, [(f, v + d) for f, v in lg]) for s, d in ((0, 0.0), (1, 0.01))]}
    summary = pool.summarize(result)
    gaps = {g["flops"]: g for g in summary["gaps"]}
    assert sorted(gaps) == [10, 15, 20, 30, 35]  # from SN-Net's cheapest to the pool's costliest
    assert gaps[10]["pool_config"] == 0 and gaps[10]["gap"] == pytest.approx(0.3)  # pool: only its 5-FLOPs model
    assert gaps[15]["gap"] == pytest.approx(-0.05) and pool.gap_word(gaps[15]) == "met"
    assert gaps[30]["snnet_config"] == 1  # the 30-FLOPs stitch is dominated: the 20-FLOPs one is best within 30
    assert gaps[35]["gap"] == pytest.approx(-0.1)
    assert pool.gap_word(gaps[20]) == "missed" and gaps[20]["gap"] == pytest.approx(0.15)
    assert summary["head"]["snnet"]["dominated_mean"] == 1 and summary["storage_ratio"] == 0.5
    assert summary["seconds_ratio"] == [0.5, 0.5] and summary["smaller_smallest"]
    text = "\n".join(pool.verdict(summary))
    assert "50% of SN-Net's 100 (goal ≤ 60%): **met**" in text and "**Pareto front**" in text and "**missed**" in text
    # within the noise of the allowance: a gap just above 0.02 with a large evaluation SE
    assert pool.gap_word({"gap": 0.025, "eval_se": 0.01, "seed_std": 0.001}) == "within noise of the allowance"


def test_hf_family_suite_runs_end_to_end_scaled_down(tmp_path):
    """--family hf: Llama anchors, ancestry and auxiliaries through the same engine (--budget steps)."""
    pytest.importorskip("transformers")
    text = tmp_path / "small.txt"
    text.write_text(BUNDLED.read_text()[:20000])
    tiny = pool.Setting(**{**TINY.__dict__, "family": "hf", "data": {"path": str(text)}})
    args = argparse.Namespace(quick=True, seeds=1, threads=1, out=tmp_path / "out", budget=None, keep_runs=False,
                              family="hf")
    assert pool.run_setting(args, tiny) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "--family hf" in report and "Hugging Face Llama" in report and "budget `steps`" in report
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    families = {r["family"]: r for r in rows if r["kind"] == "family"}
    assert len(families["snnet"]["configs"]) == 3 + 2 * 10 and len(families["learngene_pool"]["configs"]) == 3 + 3 * 4
    assert all(c["val_loss"] is not None for f in families.values() for c in f["configs"])
    assert "least-squares stitch init" in report
    with pytest.raises(Exception, match="--budget steps"):
        pool.distill_steps(tiny, 10, 60, "flops")
