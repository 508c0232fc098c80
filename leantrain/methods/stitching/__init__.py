"""Stitched model families: SN-Net v1/v2 and Learngene Pool, one engine. Method card: README.md.

The functional core: build a family from trained GPTs, enumerate its configurations with their
parameters and FLOPs, initialise stitch layers, sample one configuration per step, export one
configuration as a standalone :class:`~leantrain.models.StitchedGPT`. The registered methods
(``snnet``, ``learngene_distill``, ``learngene_pool``) are in :mod:`.methods`; ``leantrain export`` and
``leantrain pool list`` in :mod:`.deploy`.
"""
from .deploy import FamilyRun, export, load_family, pool_list
from .family import ConfigRow, StitchedFamily, StitchLayer, learngene_pool, snnet_family
from .learngene import (LearngeneDistillation, auxiliary_config, matched_blocks, record_features,
                        soft_cross_entropy, soft_distillation_loss)
from .methods import LearngeneDistill, LearngenePool, SNNet
from .pareto import dominated, pareto_front, pick_within_budget
from .routes import (V2_KINDS, Route, Segment, learngene_routes, snnet_v1_routes, snnet_v2_routes,
                     stitch_key, window_positions)
from .sampling import flops_bins, sample_config
from .stitch_init import (block_inputs, init_learned, init_least_squares, projection_stitch,
                          least_squares, stitch_positions)

__all__ = ["StitchedFamily", "StitchLayer", "ConfigRow", "snnet_family", "learngene_pool",
           "Route", "Segment", "V2_KINDS", "window_positions", "snnet_v1_routes", "snnet_v2_routes",
           "learngene_routes", "stitch_key", "least_squares", "block_inputs", "stitch_positions",
           "init_least_squares", "projection_stitch", "init_learned", "flops_bins", "sample_config",
           "dominated", "pareto_front", "pick_within_budget", "LearngeneDistillation", "auxiliary_config",
           "matched_blocks", "record_features", "soft_cross_entropy", "soft_distillation_loss",
           "SNNet", "LearngeneDistill", "LearngenePool", "FamilyRun", "load_family", "export", "pool_list"]
