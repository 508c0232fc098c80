"""Progressive subnetworks (RaPTr) and the depth baselines: stochastic depth, PLD, gradual stacking.
Method card: README.md in this folder."""
from .layer_drop import ProgressiveLayerDrop, StochasticDepth, depth_keep_probs, pld_theta
from .raptr import RaPTr, RaPTrConfig, Stage, block_cost, sample_plan
from .stacking import Stacking, StackingConfig, stack_blocks
from .subnetworks import layer_drop_plan, sample_path, sample_units, stage_ends, step_generator

__all__ = ["RaPTr", "RaPTrConfig", "Stage", "StochasticDepth", "ProgressiveLayerDrop", "Stacking",
           "StackingConfig", "sample_plan", "sample_path", "sample_units", "layer_drop_plan",
           "stack_blocks", "step_generator", "stage_ends", "block_cost", "depth_keep_probs", "pld_theta"]
