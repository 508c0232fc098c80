"""Measurement shared by every run and benchmark: FLOPs, activation memory, time.

* FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` wrapped around a *real* training step
  (forward + backward). Matmul-type ops count 2 FLOPs per multiply-accumulate; elementwise ops
  (GELU, LayerNorm, softmax inside attention, the optimizer) are not counted. A step's count is
  cached by its shape key (batch shape, model shape, active subnetwork) and summed over the run.
* Activation memory: bytes saved for backward, seen through ``torch.autograd.graph.saved_tensors_hooks``,
  deduplicated by storage, parameters excluded — the total over a step, and the *peak live* bytes
  (saved and not yet released by autograd, at their maximum: what local learning reduces by freeing
  each module's graph early). Measured on the same steps as FLOPs (the first step of each shape),
  since it is a per-shape fact.
* ``forward_flops`` counts one inference forward the same way (deployment cost of a model).
"""
from .meter import (StepMeter, analytic_gpt_flops, analytic_resnet_flops, count_step, forward_flops,
                    measure_step, saved_tensor_bytes)

__all__ = ["StepMeter", "count_step", "measure_step", "forward_flops", "saved_tensor_bytes",
           "analytic_gpt_flops", "analytic_resnet_flops"]
