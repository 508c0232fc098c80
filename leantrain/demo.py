"""``make demo``: train the baseline recipe on the bundled corpus, print a summary table, plot the
loss curves and print a sample. Runs that belong in the comparison are listed in DEMO_RUNS."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .cli import sample_text
from .core import Trainer
from .recipe import Recipe

OUT = Path("demo_out")
STEPS = 1000
CHUNK = 125
"""The runs train in turns of CHUNK steps (each turn resumes its run's checkpoint: bit-exact, so the
results are those of uninterrupted runs), so both see the same machine load over the demo and their
times compare; which run goes first alternates (ABBA) so a trend in the load cancels."""
# (label, bundled recipe, --set overrides). The baseline is nanoGPT's CPU recipe, shortened to 1000 steps.
# train.threads=1: a 2-core machine shared with anything else (a browser, a build) slows a 2-thread
# run in bursts — its threads wait on each other — and makes step times jumpy; one thread per run
# gives steadier timings (the committed benchmarks run the same way, --threads 1).
DEMO_RUNS = [
    ("baseline", "baseline_char", [f"train.max_steps={STEPS}", "train.threads=1"]),
    # RaPTr on the same model: random paths of 2 → 3 → 4 of the 4 blocks (0.75 of the block FLOPs).
    ("raptr", "raptr_char", [f"train.max_steps={STEPS}", "train.threads=1"]),
]


def train_interleaved(runs, out: Path, steps: int, chunk: int, log=print) -> dict[str, dict]:
    """Train every run of ``runs`` (label, recipe, overrides) to ``steps`` in turns of ``chunk`` steps,
    the order alternating each turn; returns each run's summary."""
    recipes = {label: Recipe.load(name, overrides) for label, name, overrides in runs}
    labels = list(recipes)
    summaries: dict[str, dict] = {}
    for turn, until in enumerate(range(chunk, steps + chunk, chunk)):
        for label in labels if turn % 2 == 0 else labels[::-1]:
            resume = out / label if turn else None
            trainer = Trainer(recipes[label], out / label, resume=resume, overwrite=not turn, verbose=False,
                              progress=False)
            summaries[label] = s = trainer.fit(until=min(until, steps))
            log(f"{label:<10} step {s['steps']:>5d}/{steps}  val loss {s['final_val_loss']:.4f} (step "
                f"{s['val_step']})  {s['wall_seconds']:6.1f} s of training")
    return summaries


def plot(runs: dict[str, list[dict]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, rows in runs.items():
        tr = [r for r in rows if "train_loss" in r]
        ev = [r for r in rows if "val_loss" in r and r["step"] > 0]
        axes[0].plot([r["step"] for r in tr], [r["train_loss"] for r in tr], lw=0.8, label=f"{label} train")
        axes[0].plot([r["step"] for r in ev], [r["val_loss"] for r in ev], marker="o", label=f"{label} val")
        axes[1].plot([r["flops"] for r in ev], [r["val_loss"] for r in ev], marker="o", label=label)
    axes[0].set(xlabel="step", ylabel="loss", title="loss vs steps")
    axes[1].set(xlabel="training FLOPs (measured)", ylabel="validation loss", title="validation loss vs FLOPs")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for label, recipe_file, overrides in DEMO_RUNS:
        print(f"== {label}: {recipe_file} {' '.join(overrides)}", flush=True)
    print(f"(interleaved: turns of {CHUNK} steps, each run resumed exactly from its checkpoint)", flush=True)
    summaries = train_interleaved(DEMO_RUNS, OUT, STEPS, CHUNK, log=lambda line: print(line, flush=True))
    curves = {label: [json.loads(x) for x in (OUT / label / "metrics.jsonl").read_text().splitlines()]
              for label in summaries}
    base = summaries[DEMO_RUNS[0][0]]
    print()
    print(f"{'run':<14} {'val loss':>9} {'best':>8} {'FLOPs':>10} {'× base':>7} {'train s':>8} {'× base':>7} "
          f"{'tok/s':>8} {'act MB':>7}")
    for label, s in summaries.items():
        print(f"{label:<14} {s['final_val_loss']:>9.4f} {s['best_val_loss']:>8.4f} {s['train_flops']:>10.3e} "
              f"{s['train_flops'] / base['train_flops']:>7.2f} {s['wall_seconds']:>8.1f} "
              f"{s['wall_seconds'] / base['wall_seconds']:>7.2f} {s['tokens_per_second']:>8.0f} "
              f"{s['peak_activation_bytes'] / 2**20:>7.1f}")
    print(f"(times: training only, one thread per run, the runs interleaved in turns of {CHUNK} steps so "
          "both saw the same load; one try — for a figure with seeds and noise bands: leantrain bench depth)")
    plot(curves, OUT / "loss.png")
    print(f"\nloss curves: {OUT / 'loss.png'}; runs in {OUT}/<run>/ (metrics.jsonl, summary.json)")
    print("\nsample from the baseline (leantrain sample --ckpt demo_out/baseline):")
    print(sample_text(OUT / DEMO_RUNS[0][0], prompt="\n", tokens=300))
    return 0


if __name__ == "__main__":
    sys.exit(main())
