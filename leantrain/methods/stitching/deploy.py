"""Using a trained family: list its configurations (``leantrain pool list``) and export one as a
standalone ``stitched_gpt`` checkpoint (``leantrain export``) that ``sample`` and ``evaluate`` load
with no pool code: its recipe names model ``stitched_gpt`` and no methods."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ...config import to_dict
from ...core import checkpoint
from ...core.loading import load_trained
from ...errors import LeantrainError
from .family import StitchedFamily
from .pareto import dominated, pick_within_budget
from .sources import method_state

FAMILY_METHODS = ("snnet", "learngene_pool")


@dataclass
class FamilyRun:
    """A trained family with what its run recorded."""
    family: StitchedFamily
    meta: dict
    """The checkpoint's state.json."""
    path: Path
    """The checkpoint directory."""
    method: str
    final: dict
    """The end-of-training evaluation of every configuration (empty if there was none yet)."""

    def losses(self) -> list[float | None]:
        got = self.final.get("losses", {})
        return [got[str(i)]["loss"] if str(i) in got else None for i in range(self.family.num_configs)]

    def rows(self) -> list[dict]:
        """id, kind, route, params, flops, val_loss, val_loss_se of every configuration."""
        got = self.final.get("losses", {})
        return [{"id": r.id, "kind": r.kind, "route": r.route, "params": r.params, "flops": r.flops,
                 "val_loss": got.get(str(r.id), {}).get("loss"), "val_loss_se": got.get(str(r.id), {}).get("loss_se")}
                for r in self.family.table()]


def load_family(run: str | Path) -> FamilyRun:
    """The family of a run trained with ``snnet`` or ``learngene_pool`` (any of its checkpoints)."""
    trained = load_trained(run)
    if not isinstance(trained.model, StitchedFamily):
        names = [m["name"] for m in trained.ckpt.meta.get("methods", [])]
        raise LeantrainError(f"{run} holds a {trained.recipe.model_name!r} model (methods {names}), not a "
                             "stitched family; families are trained with methods snnet or learngene_pool")
    meta = trained.ckpt.meta
    name = next(n for n in FAMILY_METHODS if method_state(meta, n) is not None)
    return FamilyRun(trained.model, meta, trained.ckpt.path, name, method_state(meta, name).get("final") or {})


def choose(fr: FamilyRun, config: int | None = None, max_flops: float | None = None,
           max_params: int | None = None) -> int:
    """A configuration id: ``config`` itself (checked), or the best within a budget — the lowest
    end-of-training val loss among those that fit, or the costliest if the run has no such losses."""
    if config is not None:
        fr.family.route(config)  # one-line error if out of range
        return config
    rows = fr.family.table()
    return pick_within_budget([r.flops for r in rows], [r.params for r in rows], fr.losses(), max_flops, max_params)


def export(run: str | Path, out: str | Path, config: int | None = None, max_flops: float | None = None,
           max_params: int | None = None) -> dict:
    """Write one configuration of ``run``'s family to ``out`` as a standalone checkpoint; returns what
    was exported (id, route, params, FLOPs, val loss)."""
    fr = load_family(run)
    out = Path(out)
    if (out / "checkpoints").exists() or (out / "state.json").exists():
        raise LeantrainError(f"--out {out} already holds a checkpoint; choose another directory")
    config_id = choose(fr, config, max_flops, max_params)
    row = fr.rows()[config_id]
    model = fr.family.materialize(config_id)
    recipe = {**fr.meta["recipe"], "model": {"name": "stitched_gpt", **to_dict(model.config)}, "methods": []}
    source = {"run": str(fr.path), "step": fr.meta["step"], "method": fr.method, **row}
    meta = {"recipe": recipe, **({"vocab": fr.meta["vocab"]} if "vocab" in fr.meta else {}), "world_size": 1,
            "val_loss": row["val_loss"], "best_val_loss": row["val_loss"], "methods": [], "exported_from": source}
    checkpoint.ensure_dir(out, "--out")
    checkpoint.save(out, fr.meta["step"], meta, {"model": checkpoint.model_tensors(model), "optimizer": {}, "rng": {}})
    checkpoint.write_text_atomic(out / "config.json", json.dumps(recipe, indent=1))
    return source


def _count(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:g}"


def pool_list(run: str | Path) -> str:
    """The text ``leantrain pool list`` prints: every configuration, the Pareto front (val loss vs
    inference FLOPs, where the run has end-of-training losses), dominated count, stored parameters."""
    fr = load_family(run)
    rows = fr.rows()
    scored = [r for r in rows if r["val_loss"] is not None]
    front = set()
    if scored:
        dom = dominated([(r["flops"], r["val_loss"]) for r in scored])
        front = {r["id"] for r, d in zip(scored, dom) if not d}
    route_w = max(len(r["route"]) for r in rows)
    lines = [f"{fr.path} ({fr.method}, {fr.family.scheme}, step {fr.meta['step']}): "
             f"{len(rows)} configurations; FLOPs = one inference forward of {fr.family.block_size} tokens",
             f"     {'id':>3}  {'kind':<10}  {'route':<{route_w}}  {'params':>10}  {'FLOPs':>8}  val loss"]
    for r in rows:
        loss = "–" if r["val_loss"] is None else f"{r['val_loss']:.4f} ± {r['val_loss_se']:.4f}"
        mark = "*" if r["id"] in front else " "
        lines.append(f"  {mark}  {r['id']:>3}  {r['kind']:<10}  {r['route']:<{route_w}}  {r['params']:>10,}  "
                     f"{_count(r['flops']):>8}  {loss}")
    if scored:
        lines.append(f"* = Pareto front (val loss vs FLOPs, {fr.final['split']} at step {fr.final['step']}); "
                     f"{len(scored) - len(front)} of {len(scored)} configurations are dominated by another "
                     "of this family")
    else:
        lines.append("no val losses yet: every configuration is scored when training ends "
                     "(final_eval), which also gives the Pareto front")
    s = fr.family.stored_params()
    lines.append(f"stored parameters: {s['total']:,} (stacks {s['stacks']:,} + stitch layers {s['stitches']:,})")
    return "\n".join(lines)
