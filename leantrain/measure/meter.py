from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Callable, Collection, Hashable, Iterator

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

_aten = torch.ops.aten


def _cpu_flash_fwd(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_flash_bwd(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# FlopCounterMode (torch 2.13) knows the CUDA SDPA kernels but not the CPU flash kernel, which would
# make attention free on CPU. Count it with torch's own SDPA formulas.
_EXTRA_FORMULAS = {
    _aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_fwd,
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_bwd,
}


class _Saved:
    """What the autograd graph holds for one saved tensor while measuring: dropping it (when the
    graph frees its saved tensors after backward) marks the storage as released."""
    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


class _SavedBytes:
    """Bytes of non-parameter storages saved for backward while active, deduplicated by storage:
    ``total`` over the whole step, and ``peak`` of the bytes saved and not yet released at once —
    what a method that frees graphs early (local learning) reduces. A storage counts again if it is
    saved anew after all its earlier saves were released."""

    def __init__(self, params):
        self.param_ptrs = {p.untyped_storage().data_ptr() for p in params}
        self.live: dict[int, list[int]] = {}  # storage pointer -> [saves alive, bytes]
        self.bytes = 0  # total
        self.live_bytes = 0
        self.peak = 0

    def pack(self, t: torch.Tensor):
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # e.g. tensor subclasses without storage
            return t
        ptr = storage.data_ptr()
        if ptr in self.param_ptrs:
            return t
        entry = self.live.get(ptr)
        if entry is None:
            entry = self.live[ptr] = [0, storage.nbytes()]
            self.bytes += entry[1]
            self.live_bytes += entry[1]
            self.peak = max(self.peak, self.live_bytes)
        entry[0] += 1
        saved = _Saved(t)
        weakref.finalize(saved, self._release, ptr)
        return saved

    @staticmethod
    def unpack(saved):
        return saved.tensor if isinstance(saved, _Saved) else saved

    def _release(self, ptr: int) -> None:
        entry = self.live[ptr]
        entry[0] -= 1
        if entry[0] == 0:
            self.live_bytes -= entry[1]
            del self.live[ptr]


@contextlib.contextmanager
def saved_tensor_bytes(params) -> Iterator[_SavedBytes]:
    """Measure bytes saved for backward in the block: ``.bytes`` (total) and ``.peak`` (alive at once)."""
    rec = _SavedBytes(params)
    with torch.autograd.graph.saved_tensors_hooks(rec.pack, rec.unpack):
        yield rec


def count_step(fn: Callable[[], object], params) -> tuple[int, int, object]:
    """Run ``fn`` (forward + backward) once under both counters: (flops, saved bytes, result)."""
    flops, saved, _, out = measure_step(fn, params)
    return flops, saved, out


def measure_step(fn: Callable[[], object], params) -> tuple[int, int, int, object]:
    """Run ``fn`` (forward + backward) once, measured: (flops, total saved bytes, peak live saved
    bytes, result)."""
    flop_counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)
    with flop_counter, saved_tensor_bytes(params) as saved:
        out = fn()
    return flop_counter.get_total_flops(), saved.bytes, saved.peak, out


def forward_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Matmul FLOPs of one inference forward ``model(x)``: eval mode, no autograd graph (e.g. the
    deployment cost of one configuration of a model family)."""
    flop_counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), flop_counter:
            model(x)
    finally:
        model.train(was_training)
    return flop_counter.get_total_flops()


class StepMeter:
    """Per-run totals: measured FLOPs (cached per step shape), and the largest step's bytes saved for
    backward — in total (``peak_activation_bytes``) and alive at once (``peak_live_activation_bytes``)."""

    def __init__(self):
        self.flops_by_key: dict[Hashable, int] = {}
        self.total_flops = 0
        self.peak_activation_bytes = 0
        self.peak_live_activation_bytes = 0
        self.restored: dict[str, int] = {}
        """Counts of a resumed run's earlier steps, by ``repr(key)`` (see ``cache_state``)."""

    def cache_state(self) -> dict[str, int]:
        """The FLOP cache by ``repr(key)``, for checkpoints. A resumed run that restores it measures
        exactly the steps an uninterrupted run measures: measuring is not numerically inert (under
        FlopCounterMode, e.g., SiLU's backward rounds differently), so re-measuring a step shape
        after resume would change its gradients in the last bits."""
        return {**self.restored, **{repr(k): v for k, v in self.flops_by_key.items()}}

    def step(self, key: Hashable, fn: Callable[[], object], params) -> object:
        """Run one training step ``fn``, adding its FLOPs (measured the first time ``key`` is seen)."""
        if key not in self.flops_by_key and repr(key) in self.restored:
            self.flops_by_key[key] = self.restored[repr(key)]
        if key in self.flops_by_key:
            out = fn()
        else:
            flops, saved, live, out = measure_step(fn, params)
            self.flops_by_key[key] = flops
            self.peak_activation_bytes = max(self.peak_activation_bytes, saved)
            self.peak_live_activation_bytes = max(self.peak_live_activation_bytes, live)
        self.total_flops += self.flops_by_key[key]
        return out


def analytic_gpt_flops(n_layer: int, n_embd: int, block_size: int, vocab_size: int, batch_size: int,
                       train: bool = True) -> int:
    """Independent count of a GPT step's matmul FLOPs (2 per MAC), no elementwise ops.

    Per token and block: qkv 2·3C², output projection 2·C², MLP 2·8C², attention scores and values
    2·2·T·C (SDPA computes the full T×T product; causality is a mask). Head: 2·C·V. Backward costs
    twice the forward matmuls, plus one recomputation of the scores (flash-style SDPA backward).
    """
    C, T, L, V = n_embd, block_size, n_layer, vocab_size
    tokens = batch_size * T
    dense = tokens * (L * 24 * C * C + 2 * C * V)
    attn = tokens * L * 4 * T * C
    if not train:
        return dense + attn
    return 3 * dense + attn + 2 * attn + attn // 2  # attention backward: 5 bmm of the forward's 2


def analytic_resnet_flops(depth: int, input_shape: tuple[int, ...], num_classes: int, batch_size: int,
                          width: float = 1.0, shortcut: str = "projection", train: bool = True,
                          blocks: Collection[int] | None = None) -> int:
    """Independent count of a CIFAR ResNet step's conv and linear FLOPs (2 per MAC), no elementwise ops.

    ``input_shape`` is one sample's (C, L) or (C, H, W). A conv with k^d taps, C_in → C_out channels
    and P output positions costs 2·B·P·k^d·C_in·C_out forward. Backward computes a weight gradient
    and an input gradient of the same cost each, except for the stem: its input (the data) needs no
    gradient, so PyTorch does not compute one. BatchNorm, ReLU, the average pool and the zero-padding
    shortcut are elementwise and not counted. ``blocks``: indices of the blocks a plan runs (None = all).
    """
    c_in, *spatial = input_shape
    n, taps = (depth - 2) // 6, 3 ** len(spatial)
    widths = [max(1, round(c * width)) for c in (16, 32, 64)]

    def positions(stride: int) -> int:  # a stride-2, padding-1 conv maps a size s to ceil(s / 2)
        return math.prod(-(-s // stride) for s in spatial)

    stem = 2 * batch_size * positions(1) * taps * c_in * widths[0]
    body, c, stride, index = 0, widths[0], 1, 0
    for stage, w in enumerate(widths):
        for j in range(n):
            down = stage > 0 and j == 0
            stride *= 2 if down else 1
            if blocks is None or index in blocks:
                macs = positions(stride) * taps * (c * w + w * w)
                if down and shortcut == "projection":
                    macs += positions(stride) * c * w  # conv1×1 shortcut
                body += 2 * batch_size * macs
            c, index = w, index + 1
    fc = 2 * batch_size * widths[-1] * num_classes
    forward = stem + body + fc
    return 3 * forward - stem if train else forward
