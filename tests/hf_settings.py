"""Tiny offline Hugging Face configs (2-4 layers, width 32) and the methods every family is tested with.

Shared by tests/test_hf.py and the torchrun worker tests/ddp_hf_worker.py.
"""
import copy
import os
from pathlib import Path

import numpy as np

FAMILIES = {
    "gpt2": {"model_type": "gpt2", "n_embd": 32, "n_layer": 4, "n_head": 4},
    "llama": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
              "num_attention_heads": 4, "num_key_value_heads": 2},  # grouped-query attention: 2 KV heads
    # alternating full / sliding-window layers (window 4 < the 16-token context: the masks differ)
    "qwen2": {"model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
              "num_attention_heads": 4, "num_key_value_heads": 2, "use_sliding_window": True, "sliding_window": 4,
              "layer_types": ["full_attention", "sliding_attention"] * 2},
    "bert": {"model_type": "bert", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
             "num_attention_heads": 4},
    "vit": {"model_type": "vit", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
            "num_attention_heads": 4, "patch_size": 4},
}

# Every schedule, depth method and local-learning variant this issue covers (what runs on token states).
METHODS = {
    "stochastic_depth": {"name": "stochastic_depth", "drop_rate": 0.5},
    "pld": {"name": "pld", "gamma": 0.2},
    "raptr": {"name": "raptr", "stages": [{"length": 0.5, "path_len": 2}, {"length": 0.5, "path_len": 4}]},
    # width: half the heads (by key/value group) and MLP units in the first stage, then the full model
    "raptr_width": {"name": "raptr", "stages": [{"length": 0.5, "keep_prob": 0.5, "width": 0.5},
                                                {"length": 0.5, "keep_prob": 1.0}]},
    "stacking": {"name": "stacking", "depths": [2, 3, 4], "init": "interleave", "optimizer_state": "copy"},
    "dynamic_dropout": {"name": "dynamic_dropout", "schedule": "linear", "p0": 0.1, "depth_profile": "linear"},
    "greedy": {"name": "local", "variant": "greedy", "modules": 2},
    "contsup": {"name": "local", "variant": "contsup", "modules": 3, "context": "R1E"},
}


def image_npz(path, n=96, classes=4, seed=0):
    """Random 3×8×8 uint8 images with labels: enough for a ViT to train a few steps. Written once,
    atomically (DDP ranks build the same recipe at the same time)."""
    path = Path(path)
    if not path.exists():
        rng = np.random.default_rng(seed)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        with open(tmp, "wb") as f:
            np.savez(f, x=rng.integers(0, 256, (n, 3, 8, 8), dtype=np.uint8), y=rng.integers(0, classes, n))
        os.replace(tmp, path)
    return str(path)


def hf_recipe(family: str, tmp_path, methods=(), steps: int = 6, **train) -> dict:
    data = {"name": "npz", "path": image_npz(tmp_path / "img.npz")} if family == "vit" else {}
    return {"data": data,
            "model": {"name": "hf", "config": copy.deepcopy(FAMILIES[family]), "block_size": 16},
            "train": {"max_steps": steps, "batch_size": 4, "warmup_steps": 1, "eval_interval": 3, "eval_iters": 2,
                      "log_interval": 1, **train},
            "methods": [dict(m) for m in methods]}
