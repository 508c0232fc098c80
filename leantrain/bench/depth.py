"""``leantrain bench depth``: RaPTr (depth, width, both) against full training, the compute-matched
shorter schedule, and stochastic depth, PLD and gradual stacking matched to RaPTr's FLOPs.

A deeper, narrow character GPT (12 blocks × 64 dims) on the bundled Shakespeare corpus, so there
are enough blocks to drop. Every depth method spends the same expected block FLOPs as RaPTr depth
(6-8-10-12 of 12 blocks in four equal stages = 0.75 of the blocks): stacking by its 6-9-12 schedule
(as in the RaPTr paper), stochastic depth and PLD by a rate solved for it (bisection on each
method's exact expected fraction). The shorter baseline runs max_steps × RaPTr's expected *total*
FLOP fraction (embedding and head included), with the whole LR schedule compressed.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import build
from ..data import TextConfig, TextTask
from ..measure import analytic_gpt_flops
from ..methods.progressive import ProgressiveLayerDrop, RaPTr, RaPTrConfig, StochasticDepth
from ..methods.progressive.layer_drop import PLDConfig, StochasticDepthConfig
from ..models.gpt import GPTConfig
from . import register_bench
from .common import (NOISE_RULE, Job, difference, plot_curves, report_table, result_rows, run_interleaved,
                     seeds_for, stderr_log, write_outputs)



@dataclass(frozen=True)
class Setting:
    """One configuration of the suite: model, batch, schedule, evaluation, device."""
    name: str
    model: dict
    batch: int
    steps: dict
    """max_steps, full run and --quick."""
    eval: dict
    """(eval_interval, eval_iters), full run and --quick."""
    lr: float
    warmup: float = 0.05
    """Warm-up steps as a fraction of max_steps."""
    train: dict = field(default_factory=dict)
    """Further train keys (device, precision)."""
    target: str = "final"
    """The baseline figure that is the target: final, or best (a run that overfits)."""
    mode: str = "near"
    """Whole-split evaluation: near the target only (CPU), or at every evaluation (cheap on a GPU)."""


# The CPU setting. LR: the best of 1e-3, 3e-3, 6e-3, 1e-2 for the baseline (1 seed); every method uses it.
CPU = Setting("cpu", {"name": "gpt", "n_layer": 12, "n_head": 4, "n_embd": 64, "block_size": 64, "dropout": 0.0},
              batch=12, steps={"full": 1000, "quick": 400}, eval={"full": (25, 12), "quick": (20, 8)}, lr=1e-2)
# --preset paper: the deepest GPT one GPU trains in about ten minutes on the char corpus (48 blocks × 512,
# ≈151M parameters, context 256, batch 64: ≈16 TFLOPs a step, ≈0.1 s on an H100 in bf16 at 40% MFU).
# It sees the corpus ≈50 times, so dropout 0.2 (nanoGPT's Shakespeare setting) and the baseline's *best*
# val loss is the target. Not tuned (no GPU was lent when it was written).
PAPER = Setting("paper", {"name": "gpt", "n_layer": 48, "n_head": 8, "n_embd": 512, "block_size": 256,
                          "dropout": 0.2},
                batch=64, steps={"full": 3000, "quick": 600}, eval={"full": (100, 20), "quick": (100, 20)},
                lr=6e-4, train={"device": "cuda", "precision": "bf16"}, target="best", mode="every")
SETTINGS = {"cpu": CPU, "paper": PAPER}
TUNED = ("RaPTr sampling fixed_count and scale sqrt_inverse_p, stochastic depth linear, PLD θ̄ = 0.5 and "
         "stacking interleave with reset optimizer state were each the best of one small 1-seed tuning "
         "pass per method family (RaPTr: scale ×3, sampling ×2; stochastic depth: linear / uniform; PLD: "
         "θ̄ 0.5 / 0.25; stacking: copy_top / interleave, reset / copy; see the method card)")

# RaPTr schedules: four equal stages ending on the full model; first and last block always run.
RAPTR = {"fixed": [0, -1], "sampling": "fixed_count", "scale": "sqrt_inverse_p",
         "freeze_skipped_in_optimizer": True}
DEPTH = [1 / 2, 2 / 3, 5 / 6, 1]       # path lengths, of n_layer: 6-8-10-12 of 12 blocks = 0.75 of the FLOPs
WIDTH = [0.5, 0.75, 0.75, 1.0]         # 2-3-3-4 of 4 heads, 128-192-192-256 of 256 units: 0.75
DEPTH_WIDTH = [(2 / 3, 0.75), (5 / 6, 0.75), (1, 0.75), (1, 1.0)]  # ≈ 0.72
STACKING = [1 / 2, 3 / 4, 1]           # 6-9-12: the RaPTr paper's stacking baseline
SCALE_ABLATION = ("none", "inverse_p")  # the scale rules other than RAPTR's, on RaPTr depth
RAPTR_VARIANTS = ("raptr", "raptr_width", "raptr_depth_width")
MATCHED = ("baseline_short", "stochastic_depth", "pld", "stacking")


def raptr_entry(stages: list[tuple[int, float]], **options) -> dict:
    return {"name": "raptr", **RAPTR, **options,
            "stages": [{"path_len": m, "width": w} for m, w in stages]}


def model_config(setting: Setting = CPU) -> GPTConfig:
    return GPTConfig(**{k: v for k, v in setting.model.items() if k != "name"})


def depths(fractions, n_layer: int) -> list[int]:
    return [round(f * n_layer) for f in fractions]


def total_fraction(block_fraction: float, cfg: GPTConfig, vocab: int, batch: int) -> float:
    """Whole-step FLOP fraction when the blocks cost ``block_fraction`` (analytic split blocks/head)."""
    head = analytic_gpt_flops(0, cfg.n_embd, cfg.block_size, vocab, batch)
    full = analytic_gpt_flops(cfg.n_layer, cfg.n_embd, cfg.block_size, vocab, batch)
    return (head + block_fraction * (full - head)) / full


def solve_decreasing(fraction_of, target: float, lo: float, hi: float) -> float:
    """x in [lo, hi] with fraction_of(x) = target, for fraction_of decreasing in x (bisection)."""
    if not fraction_of(hi) <= target <= fraction_of(lo):
        raise ValueError(f"a block FLOP fraction of {target:.3f} is out of reach in [{lo}, {hi}]")
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fraction_of(mid) > target else (lo, mid)
    return (lo + hi) / 2


def matched_rates(target: float, cfg: GPTConfig, steps: int) -> dict[str, float]:
    """Stochastic depth's drop rate (linear profile) and PLD's γ (θ̄ = 0.5, the paper's) whose
    expected block FLOP fraction over ``steps`` equals ``target``."""
    sd = solve_decreasing(lambda d: StochasticDepth(StochasticDepthConfig(drop_rate=d))
                          .expected_block_fraction(cfg, steps), target, 0.0, 0.99)
    gamma = solve_decreasing(lambda g: ProgressiveLayerDrop(PLDConfig(gamma=g))
                             .expected_block_fraction(cfg, steps), target, 0.0, 1.0)
    return {"drop_rate": round(sd, 4), "gamma": float(f"{gamma:.4g}")}


def make_jobs(mode: str, threads: int, setting: Setting = CPU) -> tuple[list[Job], dict]:
    """The suite's jobs, and facts for the report (fractions, matched rates, stage boundaries)."""
    steps = setting.steps[mode]
    every, iters = setting.eval[mode]
    cfg = model_config(setting)
    L = cfg.n_layer

    def recipe(methods=(), max_steps=steps) -> dict:
        return {"model": setting.model, "methods": list(methods),
                "train": {"max_steps": max_steps, "batch_size": setting.batch, "lr": setting.lr,
                          "min_lr": setting.lr / 10, "warmup_steps": round(setting.warmup * max_steps),
                          "eval_interval": every, "eval_iters": iters, "log_interval": 5, "threads": threads,
                          **setting.train}}

    path = depths(DEPTH, L)
    depth = raptr_entry([(m, 1.0) for m in path])
    raptr = RaPTr(build(RaPTrConfig, {k: v for k, v in depth.items() if k != "name"}))
    block_fraction = raptr.expected_block_fraction(cfg, steps)
    vocab = TextTask(TextConfig()).vocab_size
    short = round(steps * total_fraction(block_fraction, cfg, vocab, setting.batch))
    rates = matched_rates(block_fraction, cfg, steps)
    stacking = {"name": "stacking", "depths": depths(STACKING, L), "init": "interleave", "optimizer_state": "reset"}
    depth_width = [(round(f * L), w) for f, w in DEPTH_WIDTH]
    jobs = [
        Job("baseline", recipe()),
        Job("baseline_short", recipe(max_steps=short),
            f"{short} steps = max_steps × RaPTr depth's expected total FLOP fraction; LR schedule compressed"),
        Job("raptr", recipe([depth]), f"path lengths {'-'.join(map(str, path))} of {L}, equal stages"),
        Job("raptr_width", recipe([raptr_entry([(L, w) for w in WIDTH])]), f"widths {WIDTH}, all blocks"),
        Job("raptr_depth_width", recipe([raptr_entry(depth_width)]), f"(path, width) {depth_width}"),
        Job("stochastic_depth", recipe([{"name": "stochastic_depth", "profile": "linear",
                                         "drop_rate": rates["drop_rate"]}]),
            "linear profile, drop rate solved for RaPTr depth's block FLOPs"),
        Job("pld", recipe([{"name": "pld", "theta_bar": 0.5, "gamma": rates["gamma"]}]),
            "θ̄ = 0.5, γ solved for RaPTr depth's block FLOPs"),
        Job("stacking", recipe([stacking]),
            f"{'-'.join(map(str, stacking['depths']))}, equal stages (the RaPTr paper's baseline), "
            "interleaved copies"),
    ] + [Job(f"raptr_scale_{rule}", recipe([raptr_entry([(m, 1.0) for m in path], scale=rule)]),
             "scale ablation") for rule in SCALE_ABLATION]
    facts = {"steps": steps, "short_steps": short, "block_fraction": block_fraction, "rates": rates,
             "boundaries": raptr.stage_ends(steps)[1:-1], "eval": (every, iters), "setting": setting,
             "stacking": stacking["depths"]}
    return jobs, facts


# ------------------------------------------------------------------------------------ report
def _per_seed(rows: list[dict], method: str, key: str, base_key: str) -> list[float | None]:
    base = {r["seed"]: r for r in rows if r["method"] == "baseline"}
    return [None if r[key] is None else r[key] / base[r["seed"]][base_key]
            for r in rows if r["method"] == method]


def verdict(rows: list[dict]) -> list[str]:
    """Plain sentences against the goal: RaPTr reaches the baseline's final val loss (whole split)
    with ≤ 0.75× its FLOPs and ≤ 0.80× its wall time, and ends below the compute-matched
    alternatives — "below" only where the difference exceeds the noise (see NOISE_RULE)."""
    lines = []
    for m in RAPTR_VARIANTS:
        flops = _per_seed(rows, m, "flops_to_target", "train_flops")
        secs = _per_seed(rows, m, "seconds_to_target", "wall_seconds")
        n, hit = len(flops), sum(f is not None for f in flops)
        if hit < n:
            reach = f"reaches the target on only {hit}/{n} seed(s): the goal is **not met**"
        else:
            f, s = statistics.mean(flops), statistics.mean(secs)
            ok = f <= 0.75 and s <= 0.80
            reach = (f"reaches the target on {n}/{n} seed(s) with {f:.2f}× the baseline's FLOPs (goal "
                     f"≤ 0.75×) and {s:.2f}× its wall time (goal ≤ 0.80×): **{'met' if ok else 'not met'}**")
        others = []
        for o in ("baseline", *MATCHED):
            d = difference(rows, m, o)
            word = d.word("**below**", "above") if o != "baseline" else d.word("below", "above")
            others.append(f"{o}: {word}, {d}")
        lines.append(f"- **{m}** {reach}. Final val loss (whole split) against {'; '.join(others)}.")
    return lines


def plot_boundaries(path: Path, runs, boundaries: list[int], window: int) -> None:
    """Train loss (the subnetwork's, seed mean) and full-model val loss around RaPTr's stage boundaries."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(boundaries), figsize=(4.2 * len(boundaries), 4), squeeze=False)
    for ax, b in zip(axes[0], boundaries):
        for i, m in enumerate(("baseline", *RAPTR_VARIANTS)):
            mine = [r.rows for r in runs if r.job.method == m]
            for key, style in (("train_loss", "-"), ("val_loss", "o")):
                steps = [r["step"] for r in mine[0] if key in r and abs(r["step"] - b) <= window]
                ys = [statistics.mean(next(x[key] for x in rs if x["step"] == s and key in x) for rs in mine)
                      for s in steps]
                ax.plot(steps, ys, style, color=f"C{i}", ms=4, lw=1,
                        label=f"{m} {'train' if key == 'train_loss' else 'val'}")
        ax.axvline(b, color="grey", ls="--", lw=0.8)
        ax.set(title=f"stage boundary at step {b}", xlabel="step", ylabel="loss")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.suptitle("around RaPTr's stage boundaries: train loss (lines; RaPTr's is its subnetwork's) and "
                 "validation loss (dots; always the full model)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plots(out: Path, rows: list[dict], runs, facts: dict) -> list[str]:
    plot_curves(out / "val_loss_vs_flops.png", rows, "flops", "training FLOPs (measured)",
                "depth: validation loss vs FLOPs")
    plot_curves(out / "val_loss_vs_seconds.png", rows, "seconds", "training seconds (evaluation excluded)",
                "depth: validation loss vs wall time")
    plot_boundaries(out / "stage_boundaries.png", runs, facts["boundaries"], facts["steps"] // 10)
    return ["val_loss_vs_flops.png", "val_loss_vs_seconds.png", "stage_boundaries.png"]


def render(args, rows, jobs, facts, n_seeds, plots) -> str:
    every, iters = facts["eval"]
    st = facts["setting"]
    m, L = st.model, st.model["n_layer"]
    preset = f" --preset {st.name}" if st.name != "cpu" else ""
    cmd = (f"leantrain bench depth{preset}{' --quick' if args.quick else ''} --seeds {n_seeds} "
           f"--threads {args.threads}")
    measured = {j.method: statistics.mean(_per_seed(rows, j.method, "train_flops", "train_flops"))
                for j in jobs}
    how = ("every evaluation is whole-split (every non-overlapping window of the validation split; the "
           "curves too)" if st.mode == "every" else
           f"evaluation every {every} steps on {iters} fixed batches (the full model always) gives the curves, "
           "the plots and the matched-budget column. **The figures that decide are whole-split**: final and "
           f"best val loss are re-measured on every non-overlapping {m['block_size']}-character window of the "
           "validation split (best = the weights of the best fixed-batch evaluation); \"reached\" is judged "
           "on the whole split at every evaluation whose fixed-batch loss is within 0.05 of the target")
    precision = st.train.get("precision", "fp32")
    device = (f" on {st.train['device']}" + (f" ({precision})" if precision != "fp32" else "")
              if st.train.get("device") else "")
    lines = [
        "# leantrain bench depth", "", f"Command: `{cmd}`", "",
        *([f"**--quick: {n_seeds} seed(s) and short runs — a smoke test, not for quoting.**", ""]
          if args.quick else []),
        f"Model: GPT {L} blocks × {m['n_embd']} dims, {m['n_head']} heads, context {m['block_size']}, dropout "
        f"{m['dropout']}, batch {st.batch}, {facts['steps']} steps (lr {st.lr:g} → {st.lr / 10:g} cosine, "
        f"warm-up {st.warmup:.0%}), bundled Shakespeare{device}; {n_seeds} seed(s), methods interleaved per "
        f"seed, {args.threads} thread(s). Evaluation: {how}.", "",
        f"Losses read mean ± seed std [evaluation SE]. Target = the same seed's full baseline's whole-split "
        f"{st.target} val loss. FLOPs are measured "
        "(matmuls, 2 per MAC; elementwise ops excluded); seconds are training time without evaluation. "
        "Ratios are per seed against the baseline's *total* FLOPs / seconds, then averaged. "
        + NOISE_RULE, "",
        report_table(rows, "baseline"), "",
        "## Verdict", "",
        f"Goal: RaPTr reaches the baseline's {st.target} val loss with ≤ 0.75× its FLOPs and ≤ 0.80× its wall "
        "time, and ends below the compute-matched shorter baseline and the FLOP-matched stochastic depth, "
        "PLD and stacking.", "",
        *verdict(rows), "",
        "## Jobs and how they were matched", "",
        f"RaPTr depth's expected block FLOP fraction is {facts['block_fraction']:.3f}; stochastic depth "
        f"(linear, drop rate {facts['rates']['drop_rate']}) and PLD (θ̄ 0.5, γ {facts['rates']['gamma']}) "
        f"use the rate whose exact expected block fraction equals it; stacking {'-'.join(map(str, facts['stacking']))} "
        f"in equal stages spends the same by construction; the shorter baseline runs {facts['short_steps']} steps.", "",
        "| method | measured FLOPs × base | setting |", "|---|---|---|",
        *[f"| {j.method} | {measured[j.method]:.3f} | {j.note or '–'} |" for j in jobs], "",
        f"{TUNED}. RaPTr settings: {RAPTR} (raptr_scale_* rows ablate the scale rule). Stage boundaries "
        f"of every RaPTr variant: steps {facts['boundaries']}. Exact configs are in results.json.", "",
        "Plots: " + ", ".join(plots) + ".",
    ]
    return "\n".join(lines) + "\n"


def _add_args(p) -> None:
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads for every run (default 1: two threads on a busy 2-core "
                   "machine can be many times slower)")
    p.add_argument("--preset", choices=sorted(SETTINGS), default="cpu",
                   help="cpu: 12 × 64 GPT, 1000 steps (default); paper: the deepest GPT one GPU trains in "
                   "about ten minutes (48 × 512, context 256, batch 64, 3000 steps) on CUDA in bf16")


@register_bench("depth", "RaPTr (depth/width) vs full training, a compute-matched shorter schedule, "
                "stochastic depth, PLD and stacking", _add_args)
def run(args) -> int:
    mode = "quick" if args.quick else "full"
    setting = SETTINGS[args.preset]
    if setting.train.get("device") == "cuda" and not torch.cuda.is_available():
        from ..errors import LeantrainError
        raise LeantrainError(f"--preset {args.preset} runs on a CUDA device; none is available here")
    return run_setting(args, setting, mode)


def run_setting(args, setting: Setting, mode: str) -> int:
    jobs, facts = make_jobs(mode, args.threads, setting)
    seeds = seeds_for(args)
    stderr_log(f"depth: {len(jobs)} methods × {len(seeds)} seed(s), {facts['steps']} steps"
               + (" [--quick: 1 seed, short runs — a smoke test, not for quoting]" if args.quick else ""))
    runs = run_interleaved(jobs, seeds, log=stderr_log, baseline="baseline", target=setting.target,
                           mode=setting.mode)
    rows = result_rows("depth", runs, baseline="baseline", target_key=f"{setting.target}_val_loss")
    for row, r in zip(rows, runs):
        row["train_curve"] = [{k: x[k] for k in ("step", "train_loss", "raptr/stage") if k in x}
                              for x in r.rows if "train_loss" in x]
    args.out.mkdir(parents=True, exist_ok=True)
    plots = _plots(args.out, rows, runs, facts)
    report = render(args, rows, jobs, facts, len(seeds), plots)
    write_outputs(args.out, rows, report)
    print(report)
    return 0
