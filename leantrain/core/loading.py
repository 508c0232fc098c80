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
    for (name, cfg), saved in zip(recipe.methods, ckpt.meta["methods"]):
        method = get_method(name)(cfg)  # surgery methods rebuild the shape they trained to
        method.load_state_dict(saved["state"])
        method.restore(state)
    checkpoint.load_model_tensors(model, ckpt.model, ckpt.path)
    return Trained(model.eval(), recipe, ckpt)
