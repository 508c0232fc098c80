"""What every benchmark shares: running recipes interleaved, whole-split figures with noise bands,
cost-to-target, verdicts that respect the noise, results/report/plots.

Rules (``shared/specs/README.md``, "How we measure"):

* **Figures that decide come from the whole validation split.** Text runs evaluate a few fixed
  batches for their curves (cheap, comparable across runs); :class:`WholeSplit` re-measures on every
  non-overlapping window of the split the figures that decide: the final loss, the best-of-run loss
  (the weights at the best fixed-batch evaluation, kept in memory and re-scored at the end), and —
  at evaluations whose fixed-batch loss is within ``margin`` of the target — whether the target is
  reached. With ``mode="every"`` every evaluation is whole-split (the curves too). Classification
  evaluations are always whole-split. Every figure keeps its evaluation standard error.
* **Cost-to-target.** The same seed's baseline's whole-split final (or best) loss is the target; a
  method reports the FLOPs / seconds / steps of the first evaluation whose whole-split loss is at or
  below it (no interpolation: costs are resolved to the eval interval), or "not reached". Quality at
  a matched budget is the baseline's (fixed-batch) curve interpolated at the method's total FLOPs.
* **Noise bands.** A difference is called only when it exceeds both its evaluation noise (twice the
  standard error of the mean paired difference) and the seed spread (std of the per-seed paired
  differences); otherwise the verdict says "no difference measurable here".
* **Interleaving.** Methods run interleaved per seed (A B C, A B C, ...) so machine noise hits all
  alike; times are quoted as ratios to the baseline of the same invocation.
"""
from __future__ import annotations

import json
import math
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core import Event, Method, State, Trainer
from ..core.evaluation import EvalResult
from ..recipe import Recipe

WHOLE = "whole/val_loss"  # curve key of whole-split losses (and WHOLE + "_se", "whole/val_error")
MARGIN = 0.05
"""Fixed-batch loss within this of the target triggers a whole-split check (fixed batches of 10-20
× 12 windows sit within ~0.02 of the whole split; 0.05 leaves a wide berth)."""


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
    figures: dict = field(default_factory=dict)
    """Whole-split figures: ``final`` / ``best`` ({loss, loss_se, n[, error, error_se]}), ``best_step``,
    ``probes`` (whole-split evaluations made). Empty for synthetic runs (then the curve decides)."""


# ----------------------------------------------------------------------------------- measuring
class WholeSplit(Method):
    """Harness probe, not a training method: re-measures the deciding figures on the whole split."""
    name = "bench_whole_split"

    def __init__(self, target: float | None = None, mode: str = "near", margin: float = MARGIN):
        super().__init__()
        self.target, self.mode, self.margin = target, mode, margin
        self.reached = False
        self.best_fixed = math.inf
        self.snapshot: dict[str, torch.Tensor] | None = None
        self.figures: dict = {"probes": 0}

    def _measure(self, state: State) -> EvalResult:
        if not state.data.has_fixed_eval():  # the evaluation just made was already whole-split
            return state.val_result
        self.figures["probes"] += 1
        return state.evaluate("val", whole=True)

    def on_event(self, event: Event, state: State) -> None:
        if event is Event.EVAL_END:
            self._after_eval(state)
        elif event is Event.FIT_END and "best" not in self.figures:
            last_is_best = self.figures.get("best_step") == state.step and "final" in self.figures
            self.figures["best"] = self.figures["final"] if last_is_best else self._score_snapshot(state)

    def _after_eval(self, state: State) -> None:
        last = state.step >= state.max_steps
        near = (self.target is not None and not self.reached and state.val_loss <= self.target + self.margin)
        whole = None
        if self.mode == "every" or not state.data.has_fixed_eval() or near or last:
            whole = self._measure(state)
            for k, v in whole.row("whole/val").items():
                state.log(k, v)
            self.reached |= self.target is not None and whole.loss <= self.target
        if last:
            self.figures["final"] = _as_dict(whole)
        # best of run: whole-split where every evaluation has it, else the best fixed-batch evaluation's
        # weights, re-scored at the end (one copy of the weights in memory)
        value = whole.loss if whole is not None and self.mode == "every" else state.val_loss
        if value < self.best_fixed:
            self.best_fixed, self.figures["best_step"] = value, state.step
            if whole is not None and (self.mode == "every" or not state.data.has_fixed_eval()):
                self.figures["best"] = _as_dict(whole)
            else:
                self.figures.pop("best", None)
                self.snapshot = {k: v.detach().clone() for k, v in state.model.state_dict().items()}

    def _score_snapshot(self, state: State) -> dict:
        model = state.model
        current = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.snapshot)
        self.figures["probes"] += 1
        try:
            return _as_dict(state.evaluate("val", whole=True))
        finally:
            model.load_state_dict(current)


def _as_dict(r: EvalResult) -> dict:
    return {k: v for k, v in vars(r).items() if v is not None}


def run_job(job: Job, seed: int, target: float | None = None, mode: str = "near",
            out_dir: Path | None = None) -> Run:
    recipe = json.loads(json.dumps(job.recipe))
    recipe.setdefault("train", {})["seed"] = seed
    probe = WholeSplit(target, mode)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(out_dir or tmp)
        summary = Trainer(Recipe.from_dict(recipe), out, methods=[probe], overwrite=True, verbose=False,
                          progress=False).fit()
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return Run(job, seed, summary, [r for r in rows if "val_loss" in r], rows, probe.figures)


def run_interleaved(jobs: list[Job], seeds: list[int], log=print, baseline: str | None = None,
                    target: str = "final", mode: str = "near") -> list[Run]:
    """Every job for every seed, interleaved (A B C, A B C, ...). With ``baseline`` (run first in each
    seed's round), the other jobs know the target (the baseline's whole-split ``target`` figure:
    ``final`` or ``best``) and check reaching it on the whole split; ``mode="every"`` makes every
    evaluation whole-split instead (needed when the baseline is only chosen after all runs)."""
    runs = []
    total = len(jobs) * len(seeds)
    if baseline is not None:
        jobs = sorted(jobs, key=lambda j: j.method != baseline)
    for seed in seeds:
        goal = None
        for job in jobs:
            run = run_job(job, seed, goal, mode)
            runs.append(run)
            if job.method == baseline:
                goal = run.figures[target]["loss"]
            s, f = run.summary, run.figures
            log(f"[{len(runs)}/{total}] {job.method:<22s} seed {seed}: val {f['final']['loss']:.4f} "
                f"(best {f['best']['loss']:.4f}; whole split, {f['probes']} probes), {s['train_flops']:.3e} "
                f"FLOPs, {s['wall_seconds']:.1f}s")
    return runs


# ----------------------------------------------------------------------------------- figures
def decisive_key(curve: list[dict], metric: str = "loss") -> str:
    """The curve key that decides "reached": whole-split figures (``loss`` or ``error``) where the run
    has them."""
    whole = f"whole/val_{metric}"
    return whole if any(whole in r for r in curve) else f"val_{metric}"


def first_reaching(curve: list[dict], target: float, key: str = "val_loss") -> dict | None:
    return next((r for r in curve if key in r and r[key] <= target), None)


def interp(curve: list[dict], x_key: str, x: float) -> float | None:
    """val_loss at ``x`` on a curve, linearly interpolated; None beyond the curve's end."""
    pts = [(r[x_key], r["val_loss"]) for r in curve]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


def figures_of(run: Run) -> dict:
    """final / best figures ({loss, loss_se}) of a run: whole-split where measured, else its curve."""
    if "final" in run.figures:
        return run.figures
    c = run.curve
    best = min(c, key=lambda r: r["val_loss"])
    return {"final": {"loss": c[-1]["val_loss"], "loss_se": c[-1].get("val_loss_se", 0.0)},
            "best": {"loss": best["val_loss"], "loss_se": best.get("val_loss_se", 0.0)},
            "best_step": best["step"], "probes": 0}


def result_rows(suite: str, runs: list[Run], baseline: str, target_key: str = "final_val_loss") -> list[dict]:
    """One row per method × seed; the target is the same-seed baseline's ``target_key`` figure
    (``final_val_loss``, ``best_val_loss``, or ``final_val_error`` / ``best_val_error`` for
    classification; whole-split where measured)."""
    which, metric = target_key.split("_")[0], target_key.split("_")[-1]  # final | best, loss | error
    base = {r.seed: r for r in runs if r.job.method == baseline}
    rows = []
    for r in runs:
        fig, bfig = figures_of(r), figures_of(base[r.seed])
        target, target_se = bfig[which][metric], bfig[which][f"{metric}_se"]
        hit = first_reaching(r.curve, target, decisive_key(r.curve, metric))
        s = r.summary
        row = {"suite": suite, "method": r.job.method, "seed": r.seed, "config": s["config"],
               "final_val_loss": fig["final"]["loss"], "final_val_loss_se": fig["final"]["loss_se"],
               "best_val_loss": fig["best"]["loss"], "best_val_loss_se": fig["best"]["loss_se"],
               "best_step": fig["best_step"],
               "final_val_loss_batches": s["final_val_loss"], "best_val_loss_batches": s["best_val_loss"],
               "whole_split_probes": fig["probes"],
               "train_flops": s["train_flops"], "wall_seconds": s["wall_seconds"],
               "target_metric": f"val_{metric}", "target_val_loss" if metric == "loss" else "target_val_error": target,
               "target_se": target_se, "reached": hit is not None,
               "flops_to_target": hit["flops"] if hit else None,
               "seconds_to_target": hit["seconds"] if hit else None,
               "steps_to_target": hit["step"] if hit else None,
               "baseline_val_loss_at_same_flops": interp(base[r.seed].curve, "flops", s["train_flops"]),
               "peak_activation_bytes": s["peak_activation_bytes"],
               "tokens_per_second": s.get("tokens_per_second"), "note": r.job.note,
               "curve": [{k: c[k] for k in ("step", "val_loss", "val_loss_se", "flops", "seconds") if k in c}
                         | {k: v for k, v in c.items() if "/" in k or k == "train_eval_loss"}
                         for c in r.curve]}
        for k in ("final_val_error", "best_val_error", "test_error", "test_error_se", "test_loss"):
            if k in s:
                row[k] = s[k]
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------- noise bands
@dataclass
class Difference:
    """A method's figure minus the baseline's, paired by seed, with both noise measures."""
    delta: float
    """Mean over seeds of the per-seed difference."""
    eval_se: float
    """Standard error of ``delta`` from evaluation noise: √(Σ_seeds (SE_a² + SE_b²)) / n."""
    seed_std: float | None
    """Std over seeds of the per-seed differences (None with one seed)."""
    n: int

    @property
    def measurable(self) -> bool:
        """|Δ| exceeds twice its evaluation SE and the seed spread (one seed: the SE test alone)."""
        return abs(self.delta) > 2 * self.eval_se and (self.seed_std is None or abs(self.delta) > self.seed_std)

    def word(self, lower: str = "lower", higher: str = "higher") -> str:
        if not self.measurable:
            return "no difference measurable here"
        return lower if self.delta < 0 else higher

    def __str__(self) -> str:
        spread = f", seed std {self.seed_std:.4f}" if self.seed_std is not None else ", 1 seed"
        return f"Δ {self.delta:+.4f} (2·SE {2 * self.eval_se:.4f}{spread})"


def difference(rows: list[dict], method: str, baseline: str, key: str = "final_val_loss") -> Difference | None:
    """``key`` of ``method`` minus ``baseline``'s, per seed (``key + '_se'`` gives the SEs)."""
    base = {r["seed"]: r for r in rows if r["method"] == baseline}
    pairs = [(r, base[r["seed"]]) for r in rows if r["method"] == method and r["seed"] in base
             and r.get(key) is not None and base[r["seed"]].get(key) is not None]
    if not pairs:
        return None
    deltas = [a[key] - b[key] for a, b in pairs]
    var = sum(a.get(key + "_se", 0.0) ** 2 + b.get(key + "_se", 0.0) ** 2 for a, b in pairs)
    return Difference(statistics.mean(deltas), math.sqrt(var) / len(pairs),
                      statistics.stdev(deltas) if len(deltas) > 1 else None, len(pairs))


NOISE_RULE = ("Differences are called only when they exceed both noise measures: twice the evaluation "
              "standard error of the mean paired difference (√(SE_a² + SE_b²) per seed from the per-window "
              "or per-sample values of the whole split — conservative, as both runs are scored on the same "
              "samples) and the std over seeds of the paired differences; otherwise: \"no difference "
              "measurable here\".")


# ----------------------------------------------------------------------------------- formatting
def mean_std(values: list[float | None], fmt: str = ".4f", std_fmt: str | None = None) -> str:
    """'mean ± std' over the values that exist ('–' if none; no std for one). The std takes
    ``std_fmt`` (default: ``fmt`` without a sign)."""
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:{fmt}}"
    return f"{statistics.mean(vals):{fmt}} ± {statistics.stdev(vals):{std_fmt or fmt.lstrip('+')}}"


def with_se(rows: list[dict], key: str, fmt: str = ".4f") -> str:
    """'mean ± seed std [SE x]': the seed spread and the (root-mean-square) evaluation SE."""
    ses = [r[key + "_se"] for r in rows if r.get(key + "_se") is not None]
    se = f" [SE {math.sqrt(statistics.mean(s * s for s in ses)):{fmt}}]" if ses else ""
    return mean_std([r.get(key) for r in rows], fmt) + se


def _ms(values: list[float | None]) -> str:  # the report table's compact form
    return mean_std(values, ".4g", ".2g")


def _ratio(rows, base_rows, key) -> str:
    by_seed = {b["seed"]: b for b in base_rows}
    ratios = [r[key] / by_seed[r["seed"]][key] for r in rows
              if r.get(key) is not None and by_seed.get(r["seed"], {}).get(key)]
    return _ms(ratios) + "×" if ratios else "–"


def report_table(rows: list[dict], baseline: str) -> str:
    """Markdown table: whole-split figures (mean ± seed std [eval SE]), per-seed ratios to the baseline."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    base_rows = [r for r in rows if r["method"] == baseline]
    out = ["| method | final val loss | best val loss | Δ final vs base | train FLOPs (× base) | wall s (× base) | "
           "reached target | FLOPs to target (× base total) | s to target (× base total) | "
           "base loss at same FLOPs |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        reached = sum(r["reached"] for r in rs)
        f2t = _ratio([{**r, "x": r["flops_to_target"]} for r in rs],
                     [{**b, "x": b["train_flops"]} for b in base_rows], "x")
        s2t = _ratio([{**r, "x": r["seconds_to_target"]} for r in rs],
                     [{**b, "x": b["wall_seconds"]} for b in base_rows], "x")
        d = difference(rows, m, baseline)
        delta = "–" if m == baseline or d is None else f"{d.delta:+.4f} ({d.word()})"
        out.append(f"| {m} | {with_se(rs, 'final_val_loss')} | {with_se(rs, 'best_val_loss')} | {delta} | "
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
                target_label: str = "target (baseline final)", y: str = "val_loss") -> None:
    """Validation loss (``y`` of the curve rows) against ``x`` (flops / seconds / step), one line per
    method (seed mean of x and y)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in dict.fromkeys(r["method"] for r in rows):
        curves = [[c for c in r["curve"] if y in c] for r in rows if r["method"] == m]
        n = min(len(c) for c in curves)
        xs = [statistics.mean(c[i][x] for c in curves) for i in range(n)]
        ys = [statistics.mean(c[i][y] for c in curves) for i in range(n)]
        ax.plot(xs[1:], ys[1:], marker=".", label=m)  # skip step 0 (untrained, off the scale)
    targets = {r["target_val_loss"] for r in rows}
    ax.axhline(statistics.mean(targets), color="grey", ls="--", lw=0.8, label=target_label)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation loss" + (" (whole split)" if y == WHOLE else ""))
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
