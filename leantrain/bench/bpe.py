"""``leantrain bench bpe``: the baseline recipe and RaPTr on the bundled corpus as characters and as a
2,048-token byte-level BPE, compared in nats per *character* on the whole validation split.

The BPE is built at run time by ``leantrain tokenize`` (``data.shards.tokenize_files``: trained on
the training 90 % of the corpus, shards in a temporary directory, never committed). Its validation
split is the same last 10 % of the characters as the character-level split. Both levels train the
baseline recipe (nanoGPT's CPU recipe, ``leantrain/recipes/baseline_char.yaml``: 4 × 128, context 64, batch
12, 2000 steps) and RaPTr (``leantrain/recipes/raptr_char.yaml``: paths of 2 → 3 → 4 of the 4 blocks). A
context of 64 BPE tokens spans ≈ 2.8× the characters of 64 characters, and the BPE model's
embedding and head are larger (2,048 rows instead of 77): the figures compare the two set-ups as a
user would run them, not equal compute.

Nats per character: a whole-split figure is the mean loss per scored token (every non-overlapping
window, targets = tokens 1..n·T of the split); multiplied by n·T and divided by the number of
characters those target tokens decode to, it is the loss per character (the ratio of totals;
character level: a factor of 1). Its standard error is scaled by the same factor. Fixed-batch
curves are converted with the same factor (an approximation, for the plot only).
"""
from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import torch

from ..data import BUNDLED
from ..data.shards import tokenize_files
from ..data.tokenizer import load_tokenizer
from ..data.tokens import TokensConfig, TokensTask
from . import register_bench
from .common import (NOISE_RULE, Job, difference, report_table, result_rows, run_interleaved, seeds_for,
                     stderr_log, with_se, write_outputs)

VOCAB = 2048
STEPS = {"full": 2000, "quick": 300}
EVAL = {"full": (250, 20), "quick": (100, 10)}
MODEL = {"name": "gpt", "n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "dropout": 0.0, "bias": False}
RAPTR = {"name": "raptr", "stages": [{"path_len": 2}, {"path_len": 3}, {"path_len": 4}], "fixed": [0, -1]}
LEVELS = ("char", "bpe")


def train_section(steps: int, quick: bool, threads: int) -> dict:
    """leantrain/recipes/baseline_char.yaml's train section (steps and evaluation shortened with --quick)."""
    interval, iters = EVAL["quick" if quick else "full"]
    return {"max_steps": steps, "batch_size": 12, "lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 100,
            "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.99, "grad_clip": 1.0, "eval_interval": interval,
            "eval_iters": iters, "log_interval": 10, "threads": threads}


def jobs(level: str, data: dict, train: dict) -> list[Job]:
    base = {"data": data, "model": MODEL, "train": train}
    return [Job(f"{level}/baseline", {**base, "methods": []}, "leantrain/recipes/baseline_char.yaml"),
            Job(f"{level}/raptr", {**base, "methods": [RAPTR]}, "leantrain/recipes/raptr_char.yaml")]


def chars_per_token(shards: Path, block_size: int) -> dict:
    """Tokens scored by a whole-split evaluation of val and the characters they decode to."""
    task = TokensTask(TokensConfig(path=str(shards)))
    tok = load_tokenizer(shards / "tokenizer.json")
    starts = task.whole_starts("val", block_size)
    ids = task.arrays["val"]
    if task.is_subset("val", block_size):
        chars = sum(len(tok.decode(ids[s + 1: s + 1 + block_size].tolist())) for s in starts.tolist())
    else:  # every window: the targets are one contiguous run of tokens
        chars = len(tok.decode(ids[1: 1 + len(starts) * block_size].tolist()))
    tokens = len(starts) * block_size
    return {"tokens": tokens, "chars": chars, "factor": tokens / chars, "windows": len(starts)}


def add_per_char(rows: list[dict], factors: dict[str, float]) -> None:
    for r in rows:
        f = factors[r["method"].split("/")[0]]
        r["nats_per_token_factor"] = f
        for k in ("final_val_loss", "best_val_loss"):
            r[f"{k}_per_char"] = r[k] * f
            r[f"{k}_per_char_se"] = r[f"{k}_se"] * f


def _add_args(p) -> None:
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads for every run (1: robust to a second process on 2 cores)")


@register_bench("bpe", "the baseline recipe and RaPTr on the bundled corpus as characters and as a 2,048-token "
                "BPE (built by leantrain tokenize), in nats per character", _add_args)
def run(args) -> int:
    torch.set_num_threads(args.threads)
    seeds = seeds_for(args)
    steps = STEPS["quick" if args.quick else "full"]
    train = train_section(steps, args.quick, args.threads)
    stderr_log(f"bpe: char and {VOCAB}-token BPE × (baseline, raptr) × {len(seeds)} seed(s), {steps} steps each"
               + (" [--quick: smoke test, not for quoting]" if args.quick else ""))
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "bpe"
        meta = tokenize_files([BUNDLED], shards, vocab_size=VOCAB, val_fraction=0.1, progress=False)
        scored = chars_per_token(shards, MODEL["block_size"])
        factors = {"char": 1.0, "bpe": scored["factor"]}
        rows = []
        for level, data in (("char", {"name": "text", "path": None}), ("bpe", {"name": "tokens", "path": str(shards)})):
            runs = run_interleaved(jobs(level, data, train), seeds, log=stderr_log, baseline=f"{level}/baseline")
            rows += result_rows("bpe", runs, f"{level}/baseline")
    for r in rows:  # the shards lived in a temporary directory: say how to rebuild them
        if r["config"]["data"]["name"] == "tokens":
            r["config"]["data"]["path"] = f"<leantrain tokenize {BUNDLED.name} --vocab-size {VOCAB} --out DIR>"
    add_per_char(rows, factors)
    for r in rows:
        r["tokenized"] = {**{k: v for k, v in meta.items() if k != "inputs"}, "scored": scored}
    text = report(rows, args, seeds, steps, meta, scored)
    write_outputs(args.out, rows, text)
    plot(args.out / "val_per_char_vs_flops.png", rows, factors)
    print(text)
    return 0


def report(rows, args, seeds, steps, meta, scored) -> str:
    cmd = "leantrain bench bpe" + (" --quick" if args.quick else "") + (
        f" --seeds {len(seeds)}" if args.seeds is not None else "") + f" --threads {args.threads}"
    lines = [f"# leantrain bench bpe{' (--quick: smoke test, not for quoting)' if args.quick else ''}", "",
             f"Command: `{cmd}`. Seeds {seeds}, {steps} steps per run.", "",
             f"BPE: `leantrain tokenize {BUNDLED.name} --vocab-size {VOCAB}` at run time — a byte-level BPE of "
             f"{meta['vocab_size']:,} tokens trained on the training 90 % ({meta['train_chars']:,} characters → "
             f"{meta['train_tokens']:,} tokens); validation: the same last 10 % of the characters as the "
             f"character-level split ({meta['val_chars']:,} characters → {meta['val_tokens']:,} tokens). A "
             f"whole-split evaluation scores {scored['windows']} windows of 64 tokens: {scored['tokens']:,} "
             f"target tokens decoding to {scored['chars']:,} characters, so nats/char = nats/token × "
             f"{scored['factor']:.4f} ({1 / scored['factor']:.3f} characters per token).", "",
             "## Whole validation split, nats per character", "",
             "| data | method | final val, nats/char | best val, nats/char | final val, nats/token | train FLOPs |",
             "|---|---|---|---|---|---|"]
    for m in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == m]
        level, method = m.split("/")
        lines.append(f"| {level} | {method} | {with_se(rs, 'final_val_loss_per_char')} | "
                     f"{with_se(rs, 'best_val_loss_per_char')} | {with_se(rs, 'final_val_loss')} | "
                     f"{statistics.mean(r['train_flops'] for r in rs):.3e} |")
    lines += ["", "mean ± seed std [evaluation SE]. " + NOISE_RULE, ""]
    for level in LEVELS:
        base = f"{level}/baseline"
        d = difference(rows, f"{level}/raptr", base)
        lines += [f"## {level}: RaPTr against the baseline (per token, same-seed target)", "",
                  without_wall(report_table([r for r in rows if r["method"].startswith(level + "/")], base)), "",
                  f"RaPTr − baseline, final whole-split loss: {d} → {d.word()}." if d else "", ""]
    dc = difference([{**r, "method": r["method"].split("/")[1] + "@" + r["method"].split("/")[0]} for r in rows],
                    "baseline@bpe", "baseline@char", "final_val_loss_per_char")
    if dc:
        lines += ["## BPE against characters (baseline recipe, nats per character)", "",
                  f"BPE − char: {dc} → {dc.word()}.", ""]
    lines += ["Wall times are not quoted: this suite ran on a shared machine (losses are deterministic).", ""]
    return "\n".join(lines)


def without_wall(table: str) -> str:
    """The harness's table without its wall-time columns (not quoted from this suite: shared machine)."""
    lines = [line.strip("|").split("|") for line in table.splitlines()]
    keep = [i for i, h in enumerate(lines[0]) if not h.strip().startswith(("wall s", "s to target"))]
    return "\n".join("|" + "|".join(cells[i] for i in keep) + "|" for cells in lines)


def plot(path: Path, rows: list[dict], factors: dict[str, float]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in dict.fromkeys(r["method"] for r in rows):
        f = factors[m.split("/")[0]]
        curves = [r["curve"] for r in rows if r["method"] == m]
        n = min(len(c) for c in curves)
        xs = [statistics.mean(c[i]["flops"] for c in curves) for i in range(1, n)]
        ys = [statistics.mean(c[i]["val_loss"] for c in curves) * f for i in range(1, n)]
        ax.plot(xs, ys, marker=".", label=m, ls="-" if m.startswith("bpe") else "--")
    ax.set_xlabel("training FLOPs (measured)")
    ax.set_ylabel("validation loss, nats per character (fixed batches)")
    ax.set_title("characters vs 2,048-token BPE on the bundled corpus")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
