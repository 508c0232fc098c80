"""Probe behind the Learngene Pool's default stitch init (issue 21): least squares on one training
batch against the learned init through the distillation projections (W = P̄_end·pinv(P̄_front)), on
a scaled-down pool — ancestry 4 × 96 (300 steps), auxiliaries 2 × 32 / 2 × 64 / 2 × 96 distilled
from it (150 steps each, 2 matched points), then the pool 150 steps at 3e-4 with each init. Prints
every descendant's loss at init (8 fixed validation batches: held out from both inits) and after
the family stage (whole validation split) and writes OUT/probe.json.

    python scripts/pool_init_probe.py OUT [SEED]
"""
import json
import sys
from pathlib import Path

import torch

from leantrain import Recipe, Trainer
from leantrain.data import fixed_batches


def gpt(width: int, heads: int, depth: int) -> dict:
    return {"name": "gpt", "n_layer": depth, "n_head": heads, "n_embd": width, "block_size": 64, "dropout": 0.0}


def train(steps: int, seed: int, lr: float = 2e-3) -> dict:
    return {"max_steps": steps, "batch_size": 12, "lr": lr, "min_lr": lr / 10, "warmup_steps": max(1, steps // 20),
            "eval_interval": steps, "eval_iters": 4, "log_interval": 50, "threads": 1, "seed": seed}


def main(root: Path, seed: int) -> None:
    def fit(d: dict, out: Path) -> None:
        Trainer(Recipe.from_dict(d), out, overwrite=True, verbose=False, progress=False).fit()

    fit({"model": gpt(96, 3, 4), "train": train(300, seed)}, root / "ancestry")
    auxiliaries = []
    for w, h in ((32, 1), (64, 2), (96, 3)):
        distil = [{"name": "learngene_distill", "ancestry": str(root / "ancestry"), "points": 2}]
        fit({"model": gpt(w, h, 2), "train": train(150, seed), "methods": distil}, root / f"aux{w}")
        auxiliaries.append(str(root / f"aux{w}"))
    out = {}
    for init in ("least_squares", "learned"):
        pool = [{"name": "learngene_pool", "auxiliaries": auxiliaries, "init": init, "final_eval": "whole"}]
        t = Trainer(Recipe.from_dict({"model": gpt(96, 3, 4), "train": train(150, seed, 3e-4), "methods": pool}),
                    root / f"pool_{init}", overwrite=True, verbose=False, progress=False)
        family = t.state.model.eval()
        batches = fixed_batches(t.state.data.val, 64, 12, 8, 1234)
        ids = [i for i, r in enumerate(family.routes) if r.kind == "descendant"]
        with torch.no_grad():
            start = {i: sum(family.forward_config(x, i, y)[1].item() for x, y in batches) / len(batches) for i in ids}
        family.train()
        t.fit()
        end = {i: t.methods[0].final["losses"][str(i)]["loss"] for i in ids}
        out[init] = {"start": start, "end": end}
        print(init, "start", [round(v, 3) for v in start.values()], "end", [round(v, 3) for v in end.values()],
              flush=True)
    (root / "probe.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 0)
