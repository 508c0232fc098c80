"""The canonical table: every registered method with small settings that train on the tiny recipe.

tests/test_all_methods.py trains each for a few steps, checkpoints, resumes and compares with an
uninterrupted run. Add one entry per registered method: name -> recipe `methods:` options, or a
function ``(tmp_path) -> options`` for a method that needs something made first (e.g. a trained
source run to grow from); ``options_for`` resolves either.
"""


def trained_run(tmp_path, name: str, model: dict, methods: list | None = None, steps: int = 3) -> str:
    """A few steps of the tiny recipe with ``model`` changes, trained into ``tmp_path / name``: the
    source runs (anchors, ancestry, auxiliaries) that stitching methods are built from."""
    from leantrain import Recipe, Trainer

    from .conftest import tiny
    out = tmp_path / name
    recipe = tiny(model=model, train={"max_steps": steps, "eval_interval": steps}, methods=methods or [])
    Trainer(Recipe.from_dict(recipe), out, verbose=False, progress=False).fit()
    return str(out)


def snnet_settings(tmp_path) -> dict:
    """SN-Net v2 over anchors 2 × 16 and 4 × 32 (a depth multiple), LoRA stitches, FLOPs bins."""
    anchors = [trained_run(tmp_path, "anchor16", {"n_layer": 2, "n_embd": 16}),
               trained_run(tmp_path, "anchor32", {"n_embd": 32})]
    return {"anchors": anchors, "version": "v2", "lora_rank": 2, "sampling": "flops_binned", "flops_bins": 3,
            "final_eval": "fixed"}


def ancestry_run(tmp_path) -> str:
    return trained_run(tmp_path, "ancestry", {"n_embd": 32})


def learngene_pool_settings(tmp_path) -> dict:
    """Two 3-block auxiliaries (16 and 32 wide) of a 4 × 32 ancestry; soft distillation from it."""
    ancestry = ancestry_run(tmp_path)
    aux = [trained_run(tmp_path, f"aux{w}", {"n_layer": 3, "n_embd": w},
                       [{"name": "learngene_distill", "ancestry": ancestry}]) for w in (16, 32)]
    return {"auxiliaries": aux, "distill": True, "final_eval": "fixed"}


def grow_settings(tmp_path) -> dict:
    """Mango growing a trained 2-block, 1-head, 16-dim source (head size 16, the tiny target's) into the
    tiny recipe's 4 × 32 model; the operator phase ends after step 7, so the resume at step 5 is mid-phase
    (tests/test_grow.py resumes after it)."""
    source = trained_run(tmp_path, "grow_source", {"n_layer": 2, "n_head": 1, "n_embd": 16}, steps=6)
    return {"source": source, "operator": "mango", "rank": 2, "operator_steps": 7, "operator_lr": 0.01,
            "operator_warmup": 2, "eval_after_growth": False}


SETTINGS: dict[str, dict] = {
    # progressive/: 4 blocks, 12 steps; every stage boundary and the stacking growth (steps 4, 8)
    # fall on both sides of the resume point.
    "raptr": {"stages": [{"length": 0.25, "path_len": 2}, {"length": 0.25, "keep_prob": 0.5, "width": 0.5},
                         {"length": 0.5, "path_len": 4}], "warmup": 0.1, "freeze_skipped_in_optimizer": False},
    "stochastic_depth": {"drop_rate": 0.5},
    "pld": {"gamma": 0.1},
    "stacking": {"depths": [2, 3, 4], "init": "interleave", "optimizer_state": "copy"},
    # dropout/: the validation rule (evaluations at steps 0, 6, 12: it lowers the rate after step 6)
    # over a linear depth profile, with attention dropout on its own cosine schedule.
    "dynamic_dropout": {"schedule": "validation", "delta": 0.05, "depth_profile": "linear",
                        "sites": {"attention": {"schedule": "cosine", "p0": 0.2}}},
    # local/: three modules of the tiny GPT with context supply from the embedding and the last input
    "local": {"variant": "contsup", "modules": 3, "context": "R1E"},
    # stitching/: each trains its tiny source runs first (3 steps each).
    "snnet": snnet_settings,
    "learngene_distill": lambda tmp_path: {"ancestry": ancestry_run(tmp_path), "points": 2},
    "learngene_pool": learngene_pool_settings,
    # growth/: Mango (rank 2) from a source trained first, operator phase across the resume point.
    "grow": grow_settings,
}


def options_for(name: str, tmp_path) -> dict:
    """The options of ``name`` (made in ``tmp_path`` if the entry is a function)."""
    entry = SETTINGS[name]
    return entry(tmp_path) if callable(entry) else dict(entry)
