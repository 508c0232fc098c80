"""Rebuild a trained model from a checkpoint alone (sample, evaluate, growth sources, stitching anchors).

The checkpoint's recipe holds the model config with every data-decided field filled in (vocabulary,
channels, classes), and surgery methods replay the structure they trained to (``Method.restore``)
before the weights are loaded — no data and no training code is needed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..recipe import Recipe
from ..registry import get_data, get_method, get_model
from . import checkpoint
from .state import State


@dataclass
class Trained:
    model: torch.nn.Module
    """The model in eval mode, weights loaded."""
    recipe: Recipe
    ckpt: checkpoint.Checkpoint

    @property
    def task(self) -> str:
        """``lm`` or ``classification``: the kind of data the model was trained on."""
        return get_data(self.recipe.data_name).task


def load_trained(path: str | Path) -> Trained:
    """The model of a run or checkpoint directory, with the recipe it was trained with."""
    ckpt = checkpoint.load(path)
    recipe = Recipe.from_dict(ckpt.meta["recipe"])
    model = get_model(recipe.model_name)[0](recipe.model)
    state = State(recipe=recipe, model=model, optimizer=None, data=None)
    methods = [get_method(name)(cfg) for name, cfg in recipe.methods]
    for method, saved in zip(methods, ckpt.meta["methods"]):
        method.load_state_dict(saved["state"])
    for method in methods:  # methods rebuild the structure they trained to (lifecycle as in the trainer)
        method.setup(state)
    for method in methods:
        method.restore(state)
    checkpoint.load_model_tensors(state.model, ckpt.model, ckpt.path)
    for method in methods:
        method.load_tensors(checkpoint.method_tensors(ckpt, method.name))
    return Trained(state.model.eval(), recipe, ckpt)
