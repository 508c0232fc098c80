"""Greedy local learning with context supply (ContSup) and its baselines: greedy SL, DGL, InfoPro,
AugLocal. Method card: README.md in this folder."""
from .context import FeatureEncoder, InputEncoder, TokenMap, parse_context
from .heads import (Decoder, LMLocalHead, auglocal_head, auglocal_layers, conv_head, dgl_head, linear_head,
                    pyramidal_depth, supcon_loss)
from .local import INFOPRO_WEIGHTS, VARIANTS, LocalConfig, LocalLearning, LocalModel, build_local_model
from .units import UnitView, balanced_cuts, equal_cuts, unit_activation_bytes, unit_view

__all__ = ["LocalLearning", "LocalConfig", "LocalModel", "build_local_model", "VARIANTS", "INFOPRO_WEIGHTS",
           "UnitView", "unit_view", "equal_cuts", "balanced_cuts", "unit_activation_bytes", "linear_head",
           "conv_head", "dgl_head", "auglocal_head", "auglocal_layers", "pyramidal_depth", "LMLocalHead",
           "Decoder", "supcon_loss", "InputEncoder", "FeatureEncoder", "TokenMap", "parse_context"]
