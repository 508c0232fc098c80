"""``leantrain bench dropout``: dynamic dropout schedules against a tuned fixed rate, where dropout matters.

Regime (calibrated on this 2-core machine): a 2-layer, 96-wide char GPT (batch 32 × context 64,
lr 3e-3 → 3e-4 over 600 steps) trained on only the first 20,000 characters of the Shakespeare
training split, validated on the usual held-out 10%. It sees the small training set about 60
times, so without dropout it overfits within the run (validation loss turns up after ~400 steps)
while one run stays under a minute on one core. Why not the usual recipe: on the full corpus, or
with the 4×128 model at batch 12 in a one-minute budget, the model is still under-trained at the
end and any dropout only slows it down (no-dropout wins; measured while calibrating); dropout
needs many epochs over the data to pay off, and this small model buys them cheaply.

The fixed-rate sweep (FIXED_RATES, 0 included so the report shows whether dropout matters here)
picks the baseline: the lowest mean best validation loss over seeds. Its best validation loss
(same seed) is the target; each method reports the steps, FLOPs and seconds at which it first
reaches it, as multiples of what the baseline needed to reach its own best. The schedules were
set once, before running them (SCHEDULES): they start at 0.2, nanoGPT's and the paper's fixed
rate for Shakespeare, and the decays have about the mean rate of the 0.1 fixed run.

Every evaluation is on the whole validation split (the baseline is only known after all runs, so
the whole-split curve is what "reached its best" is judged on; this small model makes that cheap).

``--preset paper`` is the paper's own setting (nanoGPT's shakespeare_char recipe: 6 layers, 6 heads,
384 dims, context 256, batch 64, dropout 0.2, 5000 iterations, lr 1e-3 → 1e-4, warm-up 100) on the
full corpus, on a CUDA device in bf16.
"""
from __future__ import annotations

import statistics
from pathlib import Path

import torch

from . import register_bench
from .common import (NOISE_RULE, WHOLE, Job, difference, mean_of, mean_std, plot_curves, result_rows,
                     run_interleaved, seeds_for, stderr_log, with_se, write_outputs)

TRAIN_CHARS = 20_000
STEPS = 600
EVALS = 20  # evaluations per run (plus step 0): costs to target are resolved to STEPS / EVALS steps
FIXED_RATES = (0.0, 0.1, 0.2, 0.3)
SCHEDULES: dict[str, dict] = {
    "linear": {"schedule": "linear", "p0": 0.2, "p_min": 0.0},
    "exponential": {"schedule": "exponential", "p0": 0.2, "p_min": 0.0, "k": 3.0},
    "cosine": {"schedule": "cosine", "p0": 0.2, "p_min": 0.0},
    "step": {"schedule": "step", "p0": 0.2, "milestones": [[0.33, 0.1], [0.67, 0.0]]},
    "validation": {"schedule": "validation", "p0": 0.2, "p_min": 0.0, "p_max": 0.3, "delta": 0.02},
    "validation+depth": {"schedule": "validation", "p0": 0.2, "p_min": 0.0, "p_max": 0.3, "delta": 0.02,
                         "depth_profile": "linear"},
}
GOAL_STEPS, GOAL_LOSS = 0.8, 0.02  # reach the target in ≤ 0.8× the steps; best val loss ≥ 0.02 lower


def base_recipe(steps: int, threads: int) -> dict:
    return {"data": {"train_chars": TRAIN_CHARS},
            "model": {"n_layer": 2, "n_head": 4, "n_embd": 96, "block_size": 64, "dropout": 0.0},
            "train": {"max_steps": steps, "batch_size": 32, "lr": 3.0e-3, "min_lr": 3.0e-4,
                      "warmup_steps": 50, "eval_interval": steps // EVALS, "eval_iters": 10,
                      "eval_train": True, "log_interval": steps // EVALS, "threads": threads}}


PAPER_STEPS = 5000


def paper_recipe(steps: int = PAPER_STEPS, override: dict | None = None) -> dict:
    """nanoGPT's shakespeare_char recipe, the paper's setting, on CUDA in bf16 (``override``: merged
    into the sections, for the CPU test that keeps the preset from rotting)."""
    r = {"data": {},
         "model": {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256, "dropout": 0.0},
         "train": {"max_steps": steps, "batch_size": 64, "lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 100,
                   "beta2": 0.99, "eval_interval": 250, "eval_iters": 200, "eval_train": True,
                   "log_interval": 50, "device": "cuda", "precision": "bf16"}}
    for section, values in (override or {}).items():
        r[section] = {**r[section], **values}
    return r


def fixed(p: float) -> str:
    return f"fixed {p}"


def jobs(steps: int, threads: int, base: dict | None = None) -> list[Job]:
    base = base or base_recipe(steps, threads)
    constant = [Job(fixed(p), {**base, "model": {**base["model"], "dropout": p}},
                 note=f"constant rate {p} (model.dropout)") for p in FIXED_RATES]
    scheduled = [Job(name, {**base, "methods": [{"name": "dynamic_dropout", **opts}]},
                     note=", ".join(f"{k}={v}" for k, v in opts.items())) for name, opts in SCHEDULES.items()]
    return constant + scheduled


def add_dropout_figures(rows: list[dict], baseline: str) -> None:
    """Per row: the final train–val gap, and steps/FLOPs/seconds to target as multiples of the
    baseline's cost of reaching its own best (same seed)."""
    base = {r["seed"]: r for r in rows if r["method"] == baseline}
    for r in rows:
        last = r["curve"][-1]
        r["gap"] = last["val_loss"] - last["train_eval_loss"]
        b = base[r["seed"]]
        for key in ("steps", "flops", "seconds"):
            mine = r[f"{key}_to_target"]
            r[f"{key}_to_target_ratio"] = None if mine is None else mine / b[f"{key}_to_target"]


def regime_check(rows: list[dict], baseline: str) -> list[str]:
    """Does dropout matter in this run: does the best fixed rate beat none, and does it overfit?"""
    none, best = mean_of(rows, fixed(0.0), "best_val_loss"), mean_of(rows, baseline, "best_val_loss")
    gap = mean_of(rows, baseline, "gap")
    rise = mean_of(rows, baseline, "final_val_loss") - best
    d = difference(rows, baseline, fixed(0.0), "best_val_loss") if baseline != fixed(0.0) else None
    matters = (f"Dropout matters here: `{baseline}` ends with a best val loss {none - best:.4f} below no dropout "
               f"({d.word('measurably', 'higher?')}, {d})." if d is not None and d.measurable else
               f"`{baseline}` ends with a best val loss {none - best:.4f} below no dropout, but {d}: **not a "
               "measurable difference here** — dropout barely matters in this run." if d is not None else
               "**No dropout was the best fixed rate: in this run dropout does not pay off** (the regime is "
               "not one where dropout matters, e.g. a run too short to overfit).")
    overfits = "overfits" if gap >= 0.1 else "does not clearly overfit"
    return [matters, f"The baseline {overfits}: final train–val gap {gap:.3f}; its final val loss is "
            f"{rise:.4f} above its best (0 = still improving at the end)."]


def verdict(rows: list[dict], baseline: str) -> list[str]:
    lines, winners = [], []
    for m in SCHEDULES:
        rs = [r for r in rows if r["method"] == m]
        d = difference(rows, m, baseline, "best_val_loss")
        gain = -d.delta
        ratios = [r["steps_to_target_ratio"] for r in rs]
        speed = statistics.mean(ratios) if None not in ratios else None
        ok = gain >= GOAL_LOSS and d.measurable and speed is not None and speed <= GOAL_STEPS
        winners += [m] if ok else []
        reach = (f"reaches the target in {speed:.2f}× the baseline's steps" if speed is not None else
                 f"does not reach the target in {ratios.count(None)}/{len(ratios)} seed(s)")
        better = "lower" if gain > 0 else "higher"
        lines.append(f"- **{m}**: best val loss {abs(gain):.4f} {better} than `{baseline}` — "
                     f"{d.word('lower', 'higher')}, {d}; {reach} — "
                     f"{'meets the goal' if ok else 'does not meet the goal'}.")
    goal = (f"(target reached in ≤ {GOAL_STEPS}× the baseline's steps *and* best val loss ≥ {GOAL_LOSS} "
            "lower, measurably, mean over seeds)")
    head = (f"**Goal {goal} met by: {', '.join(winners)}.**" if winners else
            f"**No schedule meets the goal** {goal}.")
    return regime_check(rows, baseline) + ["", head, ""] + lines


def sweep_table(rows: list[dict], baseline: str) -> list[str]:
    lines = ["| rate | best val loss | final val loss | final train–val gap | best at step |",
             "|---|---|---|---|---|"]
    for p in FIXED_RATES:
        rs = [r for r in rows if r["method"] == fixed(p)]
        at = [min(r["curve"], key=lambda c: c["val_loss"])["step"] for r in rs]
        lines.append(f"| {p}{' (baseline)' if fixed(p) == baseline else ''} | "
                     f"{with_se(rs, 'best_val_loss')} | {with_se(rs, 'final_val_loss')} | "
                     f"{mean_std([r['gap'] for r in rs], '.3f')} | {mean_std(at, '.0f')} |")
    return lines


def method_table(rows: list[dict], baseline: str) -> list[str]:
    lines = ["| method | best val loss | Δ vs baseline | difference | final val loss | final gap | reached | "
             "steps to target (× base) | FLOPs to target (× base) | s to target (× base) | train s (× base) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    base = {r["seed"]: r for r in rows if r["method"] == baseline}
    for m in [baseline] + list(SCHEDULES):
        rs = [r for r in rows if r["method"] == m]
        delta = [r["best_val_loss"] - base[r["seed"]]["best_val_loss"] for r in rs]
        d = difference(rows, m, baseline, "best_val_loss")
        wall = [r["wall_seconds"] / base[r["seed"]]["wall_seconds"] for r in rs]
        to_target = " | ".join(mean_std([r[f"{k}_to_target_ratio"] for r in rs], ".2f")
                               for k in ("steps", "flops", "seconds"))
        judged = "–" if m == baseline else d.word()
        lines.append(f"| {m} | {with_se(rs, 'best_val_loss')} | {mean_std(delta, '+.4f')} | {judged} | "
                     f"{with_se(rs, 'final_val_loss')} | {mean_std([r['gap'] for r in rs], '.3f')} | "
                     f"{sum(r['reached'] for r in rs)}/{len(rs)} | {to_target} | {mean_std(wall, '.2f')} |")
    return lines


NOTES = [
    "- Dropout is the identity at inference (`model.eval()`): no dropout schedule changes inference speed, "
    "FLOPs or memory. The paper's inference-efficiency claim is not reproduced because it cannot hold.",
    "- FLOPs count matmul-type ops (dropout itself is elementwise). On CPU, SDPA with a non-zero attention "
    "dropout runs its math path instead of the fused kernel (whose backward recomputes, so p = 0 steps count "
    "~1–2% more FLOPs; the two step kinds are measured separately), and p = 0 skips dropout altogether: "
    "schedules that reach 0 train faster per step (train s column).",
    "- Plots: `val_vs_step.png`, `val_vs_flops.png`, `val_vs_seconds.png` (seed means of the baseline and "
    "the schedules), `dropout_rate.png` (mean rate over sites and blocks, per schedule).",
]


def report(rows: list[dict], baseline: str, args, seeds: list[int], steps: int) -> str:
    m, t, d = rows[0]["config"]["model"], rows[0]["config"]["train"], rows[0]["config"]["data"]
    preset = f" --preset {args.preset}" if args.preset != "cpu" else ""
    lines = ["# leantrain bench dropout", "",
             f"Command: `leantrain bench dropout{preset}{' --quick' if args.quick else ''} --seeds {len(seeds)} "
             f"--threads {args.threads}`; {len(seeds)} seed(s), {steps} steps per run"
             + (f", on {t['device']}" + (f" ({t['precision']} autocast)" if t["precision"] != "fp32" else "")
                if t["device"] != "cpu" else "")
             + ".", ""]
    if args.quick:
        lines += ["**--quick: 1 seed, half-length runs — a smoke test, not a result. Do not quote.**", ""]
    chars = f"the first {d['train_chars']:,} training characters" if d.get("train_chars") else "the full training split"
    lines += [f"Regime: {m['n_layer']} layers × {m['n_embd']} wide, context {m['block_size']}, batch "
              f"{t['batch_size']}, lr {t['lr']:g} → {t['min_lr']:g}, on {chars}, evaluated every "
              f"{t['eval_interval']} steps on the **whole validation split** (every non-overlapping window; "
              "every loss below is whole-split and reads mean ± seed std [evaluation SE]); the gap is "
              f"against `train_eval_loss` on {t['eval_iters']} fixed training batches. Why this regime: see "
              "`leantrain/bench/dropout.py`.", "",
              "## Fixed-rate sweep", ""] + sweep_table(rows, baseline)
    lines += ["", f"Baseline: **{baseline}** (lowest mean best validation loss). Target per seed: its best "
              "validation loss. Costs to target are multiples of what the baseline needed to reach its "
              "own best (same seed). " + NOISE_RULE, ""] + method_table(rows, baseline)
    lines += ["", "Schedules (set before running, not tuned on these seeds):", ""]
    lines += [f"- {m}: {', '.join(f'{k}={v}' for k, v in opts.items())}" for m, opts in SCHEDULES.items()]
    lines += ["", "## Verdict", ""] + verdict(rows, baseline) + ["", "## Notes", ""] + NOTES
    return "\n".join(lines) + "\n"


def plot_rates(path: Path, rows: list[dict], baseline: str) -> None:
    """Mean dropout rate over training per schedule (seed 0), the baseline's rate dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    seed = min(r["seed"] for r in rows)
    for r in rows:
        if r["seed"] == seed and r["method"] in SCHEDULES:
            pts = [(c["step"], c["dynamic_dropout/p"]) for c in r["curve"]]
            ax.step(*zip(*pts), where="pre", label=r["method"])  # logged rate = the one the last step used
    rate = next(r["config"]["model"]["dropout"] for r in rows if r["method"] == baseline)
    ax.axhline(rate, color="grey", ls="--", lw=0.8, label=f"{baseline} (baseline)")
    ax.set_xlabel("step")
    ax.set_ylabel("dropout rate (mean over sites and blocks)")
    ax.set_title(f"Dropout rate per schedule (seed {seed})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _add_args(p) -> None:
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads for every run (1: robust to a second process on 2 cores)")
    p.add_argument("--preset", choices=["cpu", "paper"], default="cpu",
                   help="cpu: the calibrated overfitting regime below (default); paper: the paper's own "
                   "setting, nanoGPT's shakespeare_char recipe (6×384, context 256, batch 64, 5000 steps) on "
                   "a CUDA device in bf16")


@register_bench("dropout", "dynamic dropout schedules vs the best fixed dropout rate, in an overfitting "
                "regime", _add_args)
def run(args) -> int:
    torch.set_num_threads(args.threads)
    paper = args.preset == "paper"
    if paper and not torch.cuda.is_available():
        from ..errors import LeantrainError
        raise LeantrainError("--preset paper runs on a CUDA device (bf16); none is available here")
    full = PAPER_STEPS if paper else STEPS
    steps = full // 2 if args.quick else full
    return run_suite(args, paper_recipe(steps) if paper else None, steps)


def run_suite(args, base: dict | None, steps: int) -> int:
    """The sweep and the schedules on ``base`` (None: the CPU regime), report and plots in args.out."""
    seeds = seeds_for(args)
    stderr_log(f"dropout: {len(FIXED_RATES)} fixed rates + {len(SCHEDULES)} schedules × {len(seeds)} seed(s), "
               f"{steps} steps each" + (" [--quick: smoke test, not for quoting]" if args.quick else ""))
    runs = run_interleaved(jobs(steps, args.threads, base), seeds, log=stderr_log, mode="every")
    baseline = min((fixed(p) for p in FIXED_RATES),
                   key=lambda m: statistics.mean(r.figures["best"]["loss"] for r in runs if r.job.method == m))
    rows = result_rows("dropout", runs, baseline, target_key="best_val_loss")
    add_dropout_figures(rows, baseline)
    text = report(rows, baseline, args, seeds, steps)
    write_outputs(args.out, rows, text)
    label = "target (baseline best)"
    shown = [r for r in rows if r["method"] == baseline or r["method"] in SCHEDULES]
    plot_curves(args.out / "val_vs_step.png", shown, "step", "step", "Validation loss", target_label=label, y=WHOLE)
    plot_curves(args.out / "val_vs_flops.png", shown, "flops", "training FLOPs", "Validation loss vs FLOPs",
                target_label=label, y=WHOLE)
    plot_curves(args.out / "val_vs_seconds.png", shown, "seconds", "training seconds",
                "Validation loss vs time", target_label=label, y=WHOLE)
    plot_rates(args.out / "dropout_rate.png", rows, baseline)
    print(text)
    return 0
