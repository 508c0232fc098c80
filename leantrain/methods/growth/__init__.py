"""Model growth: initialise a large GPT from a trained small one — Mango, LiGO, bert2BERT (FPI,
AKI), StackBERT, G_stack, MSG, Net2Net. The functional core, the operator phase (``phase.py``) and
the ``grow`` method (``grow.py``); method card: README.md in this folder.

Every operator maps a trained source :class:`~leantrain.models.gpt.GPT` to a target
:class:`~leantrain.models.gpt.GPTConfig` and returns the target's tensors keyed like
``GPT.named_parameters()``; :func:`build_model` makes the target model from them.
"""
from .copying import aki, copy_width, fpi, gstack, net2net, stack_depth, stack_order, stackbert
from .layout import (GrowthOperator, TrainedOperator, WidthMaps, build_model, check_growth, copy_maps,
                     dense_operator_size, load_tensors, parameter_shapes, source_tensors, unit_map)
from .ligo import LiGOOperator
from .mango import MangoOperator, from_blocks, mango_maps, to_blocks, tr_mpo
from .msg import MSGGrowth, MSGMasks, carry_adam_state, masked_layer_norm, msg_grow, ramp_value
from .phase import OperatorPhase
from .grow import Grow, GrowConfig  # registers the `grow` method

__all__ = ["Grow", "GrowConfig", "OperatorPhase",
           "stackbert", "gstack", "fpi", "aki", "net2net", "copy_width", "stack_depth", "stack_order",
           "msg_grow", "MSGGrowth", "MSGMasks", "ramp_value", "masked_layer_norm", "carry_adam_state",
           "MangoOperator", "LiGOOperator", "GrowthOperator", "TrainedOperator", "tr_mpo", "to_blocks", "from_blocks", "mango_maps",
           "WidthMaps", "copy_maps", "unit_map", "check_growth", "build_model", "load_tensors",
           "source_tensors", "parameter_shapes", "dense_operator_size"]
