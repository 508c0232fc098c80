"""``leantrain bench overhead``: nanoGPT parity and the trainer's per-step cost vs a plain loop.

Parity: the baseline recipe (nanoGPT's documented CPU recipe) trained by leantrain, against the
validation loss nanoGPT's own ``train.py`` reached on the same bundled corpus (measured once, see
NANOGPT_REFERENCE). Overhead: the same model, batches and optimizer trained by leantrain's Trainer
and by a plain PyTorch loop, in interleaved rounds (A B A B ...), per-step medians compared. The
plain loop is also a correctness reference: with the same seed its losses equal the trainer's.
The same rounds also time the trainer with ``train.compile`` and with ``train.grad_accum_steps: 2``
(half the micro-batch, the same samples per step), as steady-state per-step medians after a warm-up.
"""
from __future__ import annotations

import math
import statistics
import tempfile
import time

import torch
import torch._dynamo

from ..core import Callback, Trainer
from ..data import BatchSampler, TextTask
from ..errors import LeantrainError
from ..recipe import Recipe
from . import register_bench
from .common import mean_std, seeds_for, stderr_log, write_outputs

# nanoGPT (karpathy/nanoGPT train.py + model.py, unmodified) run on leantrain's bundled corpus with
# the bundled recipe baseline_char (leantrain/recipes/baseline_char.yaml): `train.py config/train_shakespeare_char.py --device=cpu
# --compile=False --eval_iters=20 --eval_interval=250 --block_size=64 --batch_size=12 --n_layer=4
# --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0`, torch 2.13.0 CPU,
# 2 cores, 2026-11-22 (seed 1337, its only one). Its eval draws 20 random validation batches; the
# whole-split figure is its final ckpt.pt evaluated with its own model.py on every non-overlapping
# 64-character window of the validation split (the same windows as Trainer.evaluate_split("val")).
NANOGPT_REFERENCE = {"val_loss": 1.9916, "full_val_split_loss": 1.9696, "ms_per_step": 31.66, "steps": 2000}


def plain_loop(recipe: Recipe, steps: int, seed: int) -> tuple[list[float], float]:
    """A minimal nanoGPT-style loop over leantrain's model and batches: (losses, seconds)."""
    from ..models.gpt import GPT
    t, cfg = recipe.train, recipe.model
    data = TextTask(recipe.data)
    cfg.vocab_size = cfg.vocab_size or data.vocab_size
    torch.manual_seed(seed)
    model = GPT(cfg)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=t.lr, betas=(t.beta1, t.beta2))
    sampler = BatchSampler(data.train, cfg.block_size, t.batch_size, seed)

    def get_lr(it):
        if it < t.warmup_steps:
            return t.lr * (it + 1) / (t.warmup_steps + 1)
        if it > t.decay_steps:
            return t.min_lr
        coeff = 0.5 * (1.0 + math.cos(math.pi * (it - t.warmup_steps) / (t.decay_steps - t.warmup_steps)))
        return t.min_lr + coeff * (t.lr - t.min_lr)

    losses = []
    t0 = time.perf_counter()
    for it in range(steps):
        for g in opt.param_groups:
            g["lr"] = get_lr(it)
        x, y = sampler.next()
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses, time.perf_counter() - t0


WARMUP_STEPS = 5
"""Steps left out of the steady-state medians (the first compiles, and FlopCounterMode measures)."""


class StepTimes(Callback):
    """Wall time of every training step (STEP_START to STEP_END)."""

    def __init__(self):
        self.seconds: list[float] = []
        self._t0 = 0.0

    def on_step_start(self, state) -> None:
        self._t0 = time.perf_counter()

    def on_step_end(self, state) -> None:
        self.seconds.append(time.perf_counter() - self._t0)

    def steady_ms(self) -> float:
        return 1000 * statistics.median(self.seconds[WARMUP_STEPS:] or self.seconds)


def leantrain_round(recipe: Recipe, steps: int, seed: int, **train) -> tuple[float, dict]:
    """One leantrain run of ``steps`` steps (``train``: key overrides): (seconds, summary with
    ``steady_ms``, the median step time after the warm-up)."""
    r = Recipe.from_dict(recipe.to_dict())
    r.train.max_steps, r.train.seed, r.train.eval_interval = steps, seed, steps
    r.train.lr_decay_steps = recipe.train.decay_steps
    for k, v in train.items():
        setattr(r.train, k, v)
    times = StepTimes()
    with tempfile.TemporaryDirectory() as tmp:
        s = Trainer(r, tmp, verbose=False, progress=False, callbacks=[times]).fit()
    return s["wall_seconds"], {**s, "steady_ms": times.steady_ms()}


def _add_args(p) -> None:
    p.add_argument("--recipe", default="baseline_char",
                   help="the baseline recipe: a bundled name or a YAML file (default: baseline_char)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for both loops")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend of the compiled rounds (default inductor; eager/aot_eager "
                        "only check the harness)")


@register_bench("overhead", "nanoGPT parity of the baseline recipe, and per-step time vs a plain "
                "PyTorch loop", _add_args)
def run(args) -> int:
    torch.set_num_threads(args.threads)
    recipe = Recipe.load(args.recipe)
    seeds = seeds_for(args)
    steps, rounds = (30, 2) if args.quick else (200, 5)
    stderr_log(f"overhead: {rounds} interleaved rounds of {steps} steps (plain loop, leantrain)"
               + (" [--quick: smoke test, not for quoting]" if args.quick else ""))
    if recipe.train.batch_size % 2:
        raise LeantrainError(f"bench overhead: the accumulation rounds halve train.batch_size "
                             f"({recipe.train.batch_size}); use an even batch size")
    plain_ms, lt_ms, steady = [], [], {"eager": [], "compiled": [], "accum2": []}
    graphs = []
    for i in range(rounds):
        _, sec = plain_loop(Recipe.from_dict(recipe.to_dict()), steps, seed=i)
        plain_ms.append(1000 * sec / steps)
        sec, s = leantrain_round(recipe, steps, seed=i)
        lt_ms.append(1000 * sec / steps)
        steady["eager"].append(s["steady_ms"])
        torch._dynamo.reset()  # each compiled round compiles afresh (no recompile limit reached across rounds)
        _, s = leantrain_round(recipe, steps, seed=i, compile=True, compile_backend=args.compile_backend)
        steady["compiled"].append(s["steady_ms"])
        graphs.append(s["compiled_graphs"])
        _, s = leantrain_round(recipe, steps, seed=i, batch_size=recipe.train.batch_size // 2, grad_accum_steps=2)
        steady["accum2"].append(s["steady_ms"])
        stderr_log(f"  round {i + 1}: plain {plain_ms[-1]:.2f} ms/step, leantrain {lt_ms[-1]:.2f} ms/step; "
                   f"steady: eager {steady['eager'][-1]:.2f}, compiled {steady['compiled'][-1]:.2f}, "
                   f"2 micro-batches {steady['accum2'][-1]:.2f} ms/step")
    ratio = statistics.median(lt / pl for lt, pl in zip(lt_ms, plain_ms))
    compiled_ratio = statistics.median(c / e for c, e in zip(steady["compiled"], steady["eager"]))
    accum_ratio = statistics.median(a / e for a, e in zip(steady["accum2"], steady["eager"]))

    parity = []
    if not args.quick:
        for seed in seeds:
            r = Recipe.from_dict(recipe.to_dict())
            r.train.seed = seed
            with tempfile.TemporaryDirectory() as tmp:
                trainer = Trainer(r, tmp, verbose=False, progress=False)
                s = trainer.fit()
            whole = trainer.evaluate_split("val")  # every non-overlapping window: a low-noise figure
            full, windows = whole.loss, whole.n
            parity.append({"seed": seed, "final_val_loss": s["final_val_loss"], "full_val_split_loss": full,
                           "full_val_split_loss_se": whole.loss_se,
                           "ms_per_step": 1000 * s["wall_seconds"] / s["steps"]})
            stderr_log(f"  parity seed {seed}: val {s['final_val_loss']:.4f} (whole split {full:.4f}), "
                       f"{parity[-1]['ms_per_step']:.1f} ms/step")

    rows = [{"suite": "overhead", "method": "plain_loop", "round": i, "ms_per_step": p} for i, p in enumerate(plain_ms)]
    rows += [{"suite": "overhead", "method": "leantrain", "round": i, "ms_per_step": v} for i, v in enumerate(lt_ms)]
    rows += [{"suite": "step_options", "method": f"leantrain_{k}", "round": i, "steady_ms_per_step": v,
              **({"compile_backend": args.compile_backend, "compiled_graphs": graphs[i]} if k == "compiled" else {})}
             for k, vs in steady.items() for i, v in enumerate(vs)]
    rows += [{"suite": "parity", "method": "leantrain", "config": recipe.to_dict() | {"train": {
        **recipe.to_dict()["train"], "seed": p["seed"]}}, **p} for p in parity]
    lines = ["# leantrain bench overhead", "",
             f"Command: `leantrain bench overhead{' --quick' if args.quick else ''}` "
             f"(threads={args.threads}, recipe {args.recipe})",
             "" if not args.quick else "\n**--quick: 1 short configuration, a smoke test — do not quote.**", "",
             "## Per-step time, interleaved rounds", "",
             "| | median ms/step | rounds |", "|---|---|---|",
             f"| plain PyTorch loop | {statistics.median(plain_ms):.2f} | {rounds} × {steps} steps |",
             f"| leantrain Trainer | {statistics.median(lt_ms):.2f} | {rounds} × {steps} steps |",
             f"| ratio leantrain / plain (median of per-round ratios) | {ratio:.3f}× | |", "",
             "Both include the first step; leantrain's first step also runs FlopCounterMode and the "
             "saved-tensor hooks (measurement), and its time excludes evaluation, as the plain loop has none.",
             "", "## Step options, the same interleaved rounds", "",
             f"Steady state: the median step time after the first {WARMUP_STEPS} steps of each run (compilation "
             "and the first step's measurement left out).", "",
             "| leantrain | median steady ms/step | ratio to eager (median of per-round ratios) |", "|---|---|---|",
             f"| eager (as above) | {statistics.median(steady['eager']):.2f} | 1 |",
             f"| train.compile ({args.compile_backend}; {statistics.median(graphs):.0f} graph(s) compiled per run) | "
             f"{statistics.median(steady['compiled']):.2f} | {compiled_ratio:.3f}× |",
             f"| train.grad_accum_steps 2 × batch {recipe.train.batch_size // 2} (same samples per step) | "
             f"{statistics.median(steady['accum2']):.2f} | {accum_ratio:.3f}× |"]
    if parity:
        ref = NANOGPT_REFERENCE
        fixed = [p["final_val_loss"] for p in parity]
        whole = [p["full_val_split_loss"] for p in parity]
        diff = statistics.mean(whole) - ref["full_val_split_loss"]
        lines += ["", "## Parity with nanoGPT (baseline recipe, 2000 steps)", "",
                  "| | val loss, eval batches | val loss, whole validation split | ms/step |",
                  "|---|---|---|---|",
                  f"| nanoGPT train.py (reference, 1 run, seed 1337) | {ref['val_loss']:.4f} (20 random batches) | "
                  f"{ref['full_val_split_loss']:.4f} | {ref['ms_per_step']:.1f} |",
                  f"| leantrain ({len(parity)} seed(s)) | {mean_std(fixed, '.4f')} (20 fixed batches) | "
                  f"{mean_std(whole, '.4f')} | {statistics.median(p['ms_per_step'] for p in parity):.1f} |", "",
                  f"Difference on the whole validation split ({windows:,} non-overlapping windows, the "
                  f"same for both): {diff:+.4f} — {'within' if abs(diff) <= 0.03 else 'OUTSIDE'} the ±0.03 bar. "
                  "Twenty 12×64 batches give a noisy figure (nanoGPT's went up from 1.976 at step 1750 to "
                  "1.992 at 2000), so the whole split is the comparison that counts. nanoGPT's figures were "
                  "measured once on this machine with its own, unmodified train.py (see NANOGPT_REFERENCE "
                  "in leantrain/bench/overhead.py)."]
    report = "\n".join(lines) + "\n"
    write_outputs(args.out, rows, report)
    print(report)
    return 0
