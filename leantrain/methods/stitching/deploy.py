"""Using a trained family: list its configurations (``leantrain pool list``) and export one as a
standalone ``stitched_gpt`` checkpoint (``leantrain export``) that ``sample`` and ``evaluate`` load
with no pool code: its recipe names model ``stitched_gpt`` and no methods."""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ...config import check, to_dict
from ...core import checkpoint
from ...core.loading import load_trained
from ...errors import LeantrainError
from ...registry import register_model
from .family import StitchedFamily
from .routes import Route, Segment, parse_stitch_key, stitch_key
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
    if fr.family.gpt_stacks:
        model = fr.family.materialize(config_id)
        spec = {"name": "stitched_gpt", **to_dict(model.config)}
    else:  # stacks leantrain does not own (hf): the route's stacks and stitches as a one-route family
        model = one_route(fr.family, config_id)
        spec = {"name": "stitched_route", "spec": model.spec(), "block_size": fr.family.block_size}
    recipe = {**fr.meta["recipe"], "model": spec, "methods": []}
    source = {"run": str(fr.path), "step": fr.meta["step"], "method": fr.method, **row}
    meta = {"recipe": recipe, **({"vocab": fr.meta["vocab"]} if "vocab" in fr.meta else {}), "world_size": 1,
            "val_loss": row["val_loss"], "best_val_loss": row["val_loss"], "methods": [], "exported_from": source}
    checkpoint.ensure_dir(out, "--out")
    checkpoint.save(out, fr.meta["step"], meta, {"model": checkpoint.model_tensors(model), "optimizer": {}, "rng": {}})
    checkpoint.write_text_atomic(out / "config.json", json.dumps(recipe, indent=1))
    return source


# ------------------------------------------------------------------- families of other models (hf)
def one_route(family: StitchedFamily, config_id: int) -> StitchedFamily:
    """Configuration ``config_id`` as a family of exactly that route: the stacks it passes through
    (whole: a stack's modules are kept as they are) and its stitch layers, renumbered."""
    r = family.route(config_id)
    used = list(dict.fromkeys(s.stack for s in r.segments))
    new = {old: i for i, old in enumerate(used)}
    keys = {}
    for k in r.stitches:
        a, b, layer = parse_stitch_key(k)
        keys[k] = stitch_key(new[a], new[b], layer)
    route = Route(r.kind, tuple(Segment(new[s.stack], s.start, s.stop) for s in r.segments),
                  tuple(keys[k] for k in r.stitches))
    with torch.random.fork_rng(devices=[]):
        out = StitchedFamily.from_spec({**family.spec(), "labels": [family.labels[i] for i in used],
                                        "stacks": [family.spec()["stacks"][i] for i in used],
                                        "routes": [{"kind": route.kind,
                                                    "segments": [[s.stack, s.start, s.stop] for s in route.segments],
                                                    "stitches": list(route.stitches)}]})
    out.to(next(family.parameters()).device)
    with torch.no_grad():
        for old, i in new.items():
            out.stacks[i].load_state_dict(family.stacks[old].state_dict())
        for k, nk in keys.items():
            out.stitches[nk].load_state_dict(family.stitches[k].state_dict())
    out.active = 0
    return out.eval()


@dataclass
class StitchedRouteConfig:
    spec: dict | None = None
    """The structure of a one-route family (``StitchedFamily.spec()``): the stacks' configs (models
    leantrain does not own, e.g. hf), the stitch layers, the route. Written by `leantrain export`."""
    block_size: int = 64
    """Context length in tokens (the family's)."""

    def validate(self) -> None:
        check(isinstance(self.spec, dict) and len(self.spec.get("routes", [])) == 1, "spec",
              "must be the structure of a family with exactly one route (written by leantrain export)")

    def adapt_to_data(self, info) -> None:
        """The stacks' configs fix the vocabulary: nothing to fill in."""


@register_model("stitched_route", config=StitchedRouteConfig, task="lm")
def stitched_route(cfg: StitchedRouteConfig) -> StitchedFamily:
    """An exported configuration of a family whose stacks are not leantrain GPTs: the family engine,
    one route (``load_trained`` / ``evaluate`` load it with its stacks' own code: transformers)."""
    family = StitchedFamily.from_spec(cfg.spec)
    family.active = 0
    return family


def export_hf(run: str | Path, out: str | Path, config: int | None = None, max_flops: float | None = None,
              max_params: int | None = None) -> dict:
    """``export --format hf`` of a family's configuration: one that is a single anchor / instance (one
    segment over a whole stack) is that stack's model, written with save_pretrained (and the run's
    tokenizer); a stitched route is refused with the reason."""
    from ...export import char_tokenizer
    fr = load_family(run)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LeantrainError(f"--out {out} already exists and is not an empty directory; name a new one")
    config_id = choose(fr, config, max_flops, max_params)
    r, fam = fr.family.route(config_id), fr.family
    seg = r.segments[0]
    if len(r.segments) > 1:
        raise LeantrainError(f"export --format hf: configuration {config_id} ({fam.describe(config_id)}) joins "
                             "segments of different widths with stitch layers, which no transformers model class "
                             "holds (every layer of one has the same width); export it with --format leantrain")
    stack = fam.stacks[seg.stack]
    view = getattr(stack, "export_pretrained", None)
    if view is None or (seg.start, seg.stop) != (0, fam.depth(seg.stack)):
        raise LeantrainError(f"export --format hf: configuration {config_id} ({fam.describe(config_id)}) is not a "
                             "whole Hugging Face stack; export it with --format leantrain")
    checkpoint.ensure_dir(out.parent, "directory of --out")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        stack.export_pretrained(tmp)
        if "vocab" in fr.meta:
            char_tokenizer(fr.meta["vocab"], fr.meta.get("mask_token_id")).save_pretrained(str(tmp))
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": str(out), "id": config_id, "route": fam.describe(config_id),
            "architecture": type(stack.hf).__name__, "params": fam.config_params(config_id)}


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
