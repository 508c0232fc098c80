"""What every benchmark shares: running recipes interleaved, cost-to-target, results/report/plots.

Rules (``shared/specs/README.md``, "How we measure"): the baseline's final validation loss is the
target; each method reports the FLOPs and seconds at which its validation curve first reaches it
(first evaluation at or below the target, no interpolation, so costs are resolved to the eval
interval), or "not reached"; quality at a matched budget is the baseline's validation loss at the
method's total FLOPs (interpolated on the baseline's curve). Methods run interleaved per seed
(A B C, A B C, ...) so machine noise hits all alike, and times are quoted as ratios to the baseline
of the same invocation.
"""
from __future__ import annotations

import json
import math
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..core import Trainer
from ..recipe import Recipe

ROW_KEYS = ("suite", "method", "seed", "config", "final_val_loss", "best_val_loss", "train_flops",
            "wall_seconds", "target_val_loss", "reached", "flops_to_target", "seconds_to_target",
            "steps_to_target")


@dataclass
class Job:
    """One method of a suite: a label and a recipe (as a dict) to run per seed."""
    method: str
    recipe: dict
    note: str = ""


@dataclass
class Run:
    job: Job
    seed: int
    summary: dict
    curve: list[dict] = field(default_factory=list)  # metrics rows with val_loss
    rows: list[dict] = field(default_factory=list)  # every metrics row (train loss, method metrics)


def run_job(job: Job, seed: int, out_dir: Path | None = None) -> Run:
    recipe = json.loads(json.dumps(job.recipe))
    recipe.setdefault("train", {})["seed"] = seed
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(out_dir or tmp)
        summary = Trainer(Recipe.from_dict(recipe), out, overwrite=True, verbose=False, progress=False).fit()
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return Run(job, seed, summary, [r for r in rows if "val_loss" in r], rows)


def run_interleaved(jobs: list[Job], seeds: list[int], log=print) -> list[Run]:
    runs = []
    total = len(jobs) * len(seeds)
    for seed in seeds:
        for job in jobs:
            run = run_job(job, seed)
            runs.append(run)
            s = run.summary
            log(f"[{len(runs)}/{total}] {job.method:<22s} seed {seed}: val {s['final_val_loss']:.4f} "
                f"(best {s['best_val_loss']:.4f}), {s['train_flops']:.3e} FLOPs, {s['wall_seconds']:.1f}s")
    return runs


def first_reaching(curve: list[dict], target: float) -> dict | None:
    return next((r for r in curve if r["val_loss"] <= target), None)


def interp(curve: list[dict], x_key: str, x: float) -> float | None:
    """val_loss at ``x`` on a curve, linearly interpolated; None beyond the curve's end."""
    pts = [(r[x_key], r["val_loss"]) for r in curve]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


def result_rows(suite: str, runs: list[Run], baseline: str, target_key: str = "final_val_loss") -> list[dict]:
    """One row per method × seed; the target is the same-seed baseline's ``target_key``."""
    base = {r.seed: r for r in runs if r.job.method == baseline}
    rows = []
    for r in runs:
        b = base[r.seed]
        target = b.summary[target_key]
        hit = first_reaching(r.curve, target)
        row = {"suite": suite, "method": r.job.method, "seed": r.seed, "config": r.summary["config"],
               "final_val_loss": r.summary["final_val_loss"], "best_val_loss": r.summary["best_val_loss"],
               "train_flops": r.summary["train_flops"], "wall_seconds": r.summary["wall_seconds"],
               "target_val_loss": target, "reached": hit is not None,
               "flops_to_target": hit["flops"] if hit else None,
               "seconds_to_target": hit["seconds"] if hit else None,
               "steps_to_target": hit["step"] if hit else None,
               "baseline_val_loss_at_same_flops": interp(b.curve, "flops", r.summary["train_flops"]),
               "peak_activation_bytes": r.summary["peak_activation_bytes"],
               "tokens_per_second": r.summary["tokens_per_second"], "note": r.job.note,
               "curve": [{k: c[k] for k in ("step", "val_loss", "flops", "seconds") if k in c}
                         | {k: v for k, v in c.items() if "/" in k or k == "train_eval_loss"}
                         for c in r.curve]}
        rows.append(row)
    return rows


def mean_std(values: list[float | None], fmt: str = ".4f", std_fmt: str | None = None) -> str:
    """'mean ± std' over the values that exist ('–' if none; no std for one). The std takes
    ``std_fmt`` (default: ``fmt`` without a sign)."""
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:{fmt}}"
    return f"{statistics.mean(vals):{fmt}} ± {statistics.stdev(vals):{std_fmt or fmt.lstrip('+')}}"


def _ms(values: list[float | None]) -> str:  # the report table's compact form
    return mean_std(values, ".4g", ".2g")


def _ratio(rows, base_rows, key) -> str:
    by_seed = {b["seed"]: b for b in base_rows}
    ratios = [r[key] / by_seed[r["seed"]][key] for r in rows
              if r.get(key) is not None and by_seed.get(r["seed"], {}).get(key)]
    return _ms(ratios) + "×" if ratios else "–"


def report_table(rows: list[dict], baseline: str) -> str:
    """Markdown table: means ± std over seeds, and per-seed ratios to the baseline."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    base_rows = [r for r in rows if r["method"] == baseline]
    out = ["| method | final val loss | best val loss | train FLOPs (× base) | wall s (× base) | "
           "reached target | FLOPs to target (× base total) | s to target (× base total) | "
           "base loss at same FLOPs |",
           "|---|---|---|---|---|---|---|---|---|"]
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        reached = sum(r["reached"] for r in rs)
        f2t = _ratio([{**r, "x": r["flops_to_target"]} for r in rs],
                     [{**b, "x": b["train_flops"]} for b in base_rows], "x")
        s2t = _ratio([{**r, "x": r["seconds_to_target"]} for r in rs],
                     [{**b, "x": b["wall_seconds"]} for b in base_rows], "x")
        out.append(f"| {m} | {_ms([r['final_val_loss'] for r in rs])} | {_ms([r['best_val_loss'] for r in rs])} | "
                   f"{_ratio(rs, base_rows, 'train_flops')} | {_ratio(rs, base_rows, 'wall_seconds')} | "
                   f"{reached}/{len(rs)} | {f2t} | {s2t} | "
                   f"{_ms([r['baseline_val_loss_at_same_flops'] for r in rs])} |")
    return "\n".join(out)


def mean_of(rows: list[dict], method: str, key: str) -> float | None:
    vals = [r[key] for r in rows if r["method"] == method and r.get(key) is not None]
    return statistics.mean(vals) if vals else None


def write_outputs(out: Path, rows: list[dict], report: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    (out / "report.md").write_text(report)


def plot_curves(path: Path, rows: list[dict], x: str, xlabel: str, title: str, logx: bool = False,
                target_label: str = "target (baseline final)") -> None:
    """Validation loss against ``x`` (flops / seconds / step), one line per method (seed mean of x and y)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in dict.fromkeys(r["method"] for r in rows):
        curves = [r["curve"] for r in rows if r["method"] == m]
        n = min(len(c) for c in curves)
        xs = [statistics.mean(c[i][x] for c in curves) for i in range(n)]
        ys = [statistics.mean(c[i]["val_loss"] for c in curves) for i in range(n)]
        ax.plot(xs[1:], ys[1:], marker=".", label=m)  # skip step 0 (untrained, off the scale)
    targets = {r["target_val_loss"] for r in rows}
    ax.axhline(statistics.mean(targets), color="grey", ls="--", lw=0.8, label=target_label)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def seeds_for(args) -> list[int]:
    n = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    if n <= 0:
        from ..errors import LeantrainError
        raise LeantrainError(f"--seeds must be positive, got {n}")
    return list(range(n))


def stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
