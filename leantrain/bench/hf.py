"""``leantrain bench hf``: the methods on Hugging Face models, and the trainer's overhead there.

A tiny Llama (grouped-query attention, SwiGLU, RMSNorm, rotary) and a tiny GPT-2, built from
config dicts (``model: {name: hf, config: ...}``), trained on the bundled Shakespeare characters
with the baseline, RaPTr (depth), stochastic depth and ContSup (local learning, K = 2) through the
same harness as every suite (interleaved seeds, whole-split figures, the noise rule, plots).

Overhead: the same HF model (the Llama), batches (leantrain's sampler) and optimizer (AdamW, the
same parameter groups, gradient clipping) trained by leantrain's Trainer, by a plain PyTorch loop
and by ``transformers.Trainer`` (which needs ``accelerate``), in interleaved rounds; per-step
medians and per-round ratios. Both loops' times exclude evaluation (neither evaluates); leantrain's
include its first, measured step.
"""
from __future__ import annotations

import copy
import statistics
import tempfile
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..core import Trainer
from ..data import BatchSampler, TextTask
from ..errors import LeantrainError
from ..recipe import Recipe
from . import register_bench
from .common import (NOISE_RULE, Job, difference, plot_curves, report_table, result_rows, run_interleaved,
                     seeds_for, stderr_log, write_outputs)

# 6 blocks × 64 dims, context 64: small enough for a run of a few minutes on a CPU core.
MODELS = {
    "llama": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 6,
              "num_attention_heads": 4, "num_key_value_heads": 2},
    "gpt2": {"model_type": "gpt2", "n_embd": 64, "n_layer": 6, "n_head": 4, "resid_pdrop": 0.0,
             "embd_pdrop": 0.0, "attn_pdrop": 0.0},
}
# RaPTr as bench depth runs it (path 3-4-5-6 of 6 blocks in four equal stages, first and last fixed).
METHODS = {
    "baseline": [],
    "raptr": [{"name": "raptr", "fixed": [0, -1], "sampling": "fixed_count", "scale": "sqrt_inverse_p",
               "stages": [{"path_len": n} for n in (3, 4, 5, 6)]}],
    "stochastic_depth": [{"name": "stochastic_depth", "drop_rate": 0.5, "profile": "linear"}],
    "contsup": [{"name": "local", "variant": "contsup", "modules": 2, "context": "E"}],
}


@dataclass(frozen=True)
class Setting:
    steps: int
    eval_interval: int
    eval_iters: int
    overhead_rounds: int
    overhead_steps: int


FULL = Setting(steps=600, eval_interval=50, eval_iters=10, overhead_rounds=5, overhead_steps=100)
QUICK = Setting(steps=12, eval_interval=6, eval_iters=2, overhead_rounds=2, overhead_steps=5)
BATCH, BLOCK, LR = 12, 64, 3e-3


def recipe(model: str, methods: list, s: Setting, threads: int) -> dict:
    return {"model": {"name": "hf", "config": copy.deepcopy(MODELS[model]), "block_size": BLOCK},
            "train": {"max_steps": s.steps, "batch_size": BATCH, "lr": LR, "min_lr": LR / 10,
                      "warmup_steps": max(1, s.steps // 20), "eval_interval": s.eval_interval,
                      "eval_iters": s.eval_iters, "log_interval": s.eval_interval, "threads": threads},
            "methods": copy.deepcopy(methods)}


# ----------------------------------------------------------------------------------- overhead
def _fresh(model_recipe: dict, seed: int):
    """The recipe's HF model, built as leantrain builds it (seeded), and the training text."""
    r = Recipe.from_dict(model_recipe)
    data = TextTask(r.data)
    r.model.adapt_to_data(data.info())
    from ..models.hf import build_hf_model
    torch.manual_seed(seed)
    return build_hf_model(r.model), r, data


def _optimizer(model, t):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=t.lr, betas=(t.beta1, t.beta2))


def plain_loop(model_recipe: dict, steps: int, seed: int) -> float:
    """A minimal PyTorch loop over the same HF model and leantrain's batches: seconds."""
    model, r, data = _fresh(model_recipe, seed)
    model.train()
    opt = _optimizer(model, r.train)
    sampler = BatchSampler(data.train, BLOCK, BATCH, seed)
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y = sampler.next()
        logits = model(input_ids=x, use_cache=False).logits
        F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), r.train.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def hf_trainer_loop(model_recipe: dict, steps: int, seed: int) -> float:
    """``transformers.Trainer`` on the same model, batches (leantrain's sampler) and optimizer: seconds
    of ``train()`` (no evaluation, logging or saving)."""
    try:
        import accelerate  # noqa: F401  (transformers.Trainer needs it)
        from transformers import Trainer as HFTrainer
        from transformers import TrainingArguments
    except ImportError:
        raise LeantrainError("bench hf compares with transformers.Trainer, which needs `accelerate`: "
                             "pip install 'leantrain[hf]'") from None
    model, r, data = _fresh(model_recipe, seed)
    sampler = BatchSampler(data.train, BLOCK, BATCH, seed)
    batches = [sampler.next() for _ in range(steps)]

    class Batches(torch.utils.data.Dataset):  # one item = one whole batch (batch size 1, collated away)
        def __len__(self):
            return len(batches)

        def __getitem__(self, i):
            return batches[i]

    class NextTokenTrainer(HFTrainer):  # the loss leantrain computes (targets already shifted)
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            logits = model(input_ids=inputs["input_ids"], use_cache=False).logits
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), inputs["labels"].reshape(-1))
            return (loss, logits) if return_outputs else loss

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, max_steps=steps, per_device_train_batch_size=1,
                                 max_grad_norm=r.train.grad_clip, logging_strategy="no", save_strategy="no",
                                 report_to=[], use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
                                 seed=seed, remove_unused_columns=False)
        opt = _optimizer(model, r.train)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
        trainer = NextTokenTrainer(model=model, args=args, train_dataset=Batches(), optimizers=(opt, sched),
                                   data_collator=lambda items: {"input_ids": items[0][0], "labels": items[0][1]})
        t0 = time.perf_counter()
        trainer.train()
        return time.perf_counter() - t0


def leantrain_loop(model_recipe: dict, steps: int, seed: int) -> float:
    r = copy.deepcopy(model_recipe)
    r["train"].update({"max_steps": steps, "seed": seed, "eval_interval": steps, "eval_iters": 1})
    with tempfile.TemporaryDirectory() as tmp:
        return Trainer(Recipe.from_dict(r), tmp, verbose=False, progress=False).fit()["wall_seconds"]


def overhead(s: Setting, threads: int) -> dict:
    model_recipe = recipe("llama", [], s, threads)
    loops = {"plain": plain_loop, "leantrain": leantrain_loop, "transformers_trainer": hf_trainer_loop}
    ms = {k: [] for k in loops}
    for i in range(s.overhead_rounds):  # interleaved: A B C, A B C, ...
        for name, loop in loops.items():
            ms[name].append(1000 * loop(model_recipe, s.overhead_steps, i) / s.overhead_steps)
        stderr_log(f"  overhead round {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f} ms/step" for k, v in ms.items()))
    ratio = lambda a, b: statistics.median(x / y for x, y in zip(ms[a], ms[b]))  # noqa: E731
    return {"ms_per_step": ms, "leantrain_over_plain": ratio("leantrain", "plain"),
            "leantrain_over_transformers_trainer": ratio("leantrain", "transformers_trainer"),
            "rounds": s.overhead_rounds, "steps": s.overhead_steps, "config": model_recipe}


# ----------------------------------------------------------------------------------- the suite
def _add_args(p) -> None:
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for every run (default 1)")
    p.add_argument("--models", default="llama,gpt2", help="comma-separated: llama, gpt2 (default both)")


@register_bench("hf", "tiny Llama and GPT-2 (transformers) with the baseline, RaPTr, stochastic depth and "
                "ContSup; overhead vs a plain loop and transformers.Trainer", _add_args)
def run(args) -> int:
    s = QUICK if args.quick else FULL
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        raise LeantrainError(f"--models: {bad[0] if bad else args.models!r} is not one of {', '.join(MODELS)}")
    torch.set_num_threads(args.threads)
    seeds = seeds_for(args)
    tag = " [--quick: 1 seed, short runs — a smoke test, not for quoting]" if args.quick else ""
    all_rows, sections, plots = [], [], []
    for m in models:
        jobs = [Job(name, recipe(m, methods, s, args.threads)) for name, methods in METHODS.items()]
        stderr_log(f"hf/{m}: {len(jobs)} methods × {len(seeds)} seed(s), {s.steps} steps{tag}")
        runs = run_interleaved(jobs, seeds, log=stderr_log, baseline="baseline")
        rows = result_rows(f"hf/{m}", runs, baseline="baseline")
        all_rows += rows
        for x, label in (("flops", "training FLOPs (measured)"), ("seconds", "training seconds (evaluation excluded)")):
            name = f"{m}_val_loss_vs_{x}.png"
            plot_curves(args.out / name, rows, x, label, f"hf {m}: validation loss vs {x}")
            plots.append(name)
        verdicts = []
        for method in METHODS:
            d = difference(rows, method, "baseline") if method != "baseline" else None
            if d is not None:
                verdicts.append(f"- {method}: final val loss {d.word()} than the baseline ({d})." if d.measurable
                                else f"- {method}: no difference in final val loss measurable here ({d}).")
        sections += [f"## {m}: {MODELS[m]}", "", report_table(rows, "baseline"), "", *verdicts, ""]
    stderr_log(f"hf: overhead, {s.overhead_rounds} interleaved rounds of {s.overhead_steps} steps{tag}")
    o = overhead(s, args.threads)
    all_rows.append({"suite": "hf/overhead", **o})
    med = {k: statistics.median(v) for k, v in o["ms_per_step"].items()}
    cmd = f"leantrain bench hf{' --quick' if args.quick else ''} --seeds {len(seeds)} --threads {args.threads}"
    if args.models != "llama,gpt2":
        cmd += f" --models {args.models}"
    lines = ["# leantrain bench hf", "", f"Command: `{cmd}`", "",
             *([f"**--quick: {len(seeds)} seed(s) and {s.steps}-step runs — a smoke test, not for quoting.**", ""]
               if args.quick else []),
             f"Hugging Face models built from config dicts, trained on the bundled Shakespeare characters "
             f"(context {BLOCK}, batch {BATCH}, {s.steps} steps, lr {LR:g} → {LR / 10:g} cosine), methods "
             f"interleaved per seed, {args.threads} thread(s). Evaluation every {s.eval_interval} steps on "
             f"{s.eval_iters} fixed batches; the deciding figures are whole-split. FLOPs measured (matmuls, 2 "
             "per MAC). " + NOISE_RULE, "", *sections,
             "## Overhead on the Llama (same model, batches and optimizer)", "",
             "| loop | median ms/step |", "|---|---|",
             *[f"| {k} | {v:.2f} |" for k, v in med.items()], "",
             f"leantrain / plain loop: {o['leantrain_over_plain']:.3f}× (goal ≤ 1.05×); leantrain / "
             f"transformers.Trainer: {o['leantrain_over_transformers_trainer']:.3f}× (goal ≤ 1×); medians of "
             f"per-round ratios over {o['rounds']} rounds of {o['steps']} steps.", "",
             "Plots: " + ", ".join(plots) + "."]
    report = "\n".join(lines) + "\n"
    write_outputs(args.out, all_rows, report)
    print(report)
    return 0
