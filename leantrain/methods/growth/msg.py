"""MSG — masked structural growth (Yao et al., ICLR 2024; code cofe-ai/MSG ``grow_ops_v2.py``,
``utils_ex_v2.py``): strictly function-preserving growth of width (hidden size, heads, MLP units)
and depth, by masks that ramp the new structure in.

:func:`msg_grow` builds the target's tensors: the source's entries in the old slice, new entries
N(0, std) (LayerNorm γ = 1, biases 0), new blocks appended on top as copies of grown source blocks
(MSG's default) or random. :class:`MSGMasks` is what the forward needs during the ramp; it attaches
to a target GPT through PyTorch forward hooks, so ``leantrain/models/gpt.py`` needs no change:

* residual stream (pre-LN GPT [ours, the analogue of MSG's BERT masks; the same rule as the G_stack
  authors' port for pre-norm models]): every write — token + position embedding, attention and MLP
  output projections — is multiplied by m = (1…1, c…c) over (old, new) dimensions, so the new
  dimensions hold exactly 0 at c = 0;
* every LayerNorm takes its statistics with weights m (μ = Σ x·m / Σ m, σ² = Σ (x−μ)²·m / Σ m) and
  its output is multiplied by m (new in-columns then read zeros at c = 0);
* new heads' outputs and new MLP units' outputs (after GELU) are multiplied by c [ours: MSG masks
  q, k, v and the pre-activation; both vanish at c = 0 and are the identity at c = 1];
* a new block computes x + c·(F(x) − x) = c·F(x) + (1 − c)·x, MSG's form.

At c = 0 the target computes exactly the source's function; at c = 1 the masks are the identity
and are removed. :func:`carry_adam_state` copies AdamW moments into the old slice.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import functools

import torch

from ...errors import ConfigError
from ...models.gpt import GPT, GPTConfig
from ...models.protocol import adapt
from .layout import (ATTN_OUT, FINAL_NORM, MLP_IN, MLP_OUT, NORM_1, NORM_2, POSITION, PREFIX, QKV, TOKEN, Tensors,
                     module_of, check_growth, get_block, parameter_shapes, put_block, source_tensors)


@dataclass
class MSGGrowth:
    """Where the source sits inside the target, for masks and optimizer state."""
    source: GPTConfig
    target: GPTConfig
    block_source: list[int]
    """Target block j's source block (for new blocks: the block it was copied from, or -1 if random)."""

    @property
    def new_blocks(self) -> list[int]:
        return list(range(self.source.n_layer, self.target.n_layer))

    def old_index(self, name: str) -> tuple[torch.Tensor, ...] | None:
        """Per dimension, the indices of the target tensor ``name`` that hold the source's entries
        (None for parameters of new blocks)."""
        if name.startswith(f"{PREFIX}.") and int(name.split(".")[1]) >= self.source.n_layer:
            return None
        d1, d2 = self.source.n_embd, self.target.n_embd
        embd = torch.arange(d1)
        if name.endswith(f"{QKV}.weight") or name.endswith(f"{QKV}.bias"):
            rows = torch.cat([embd, embd + d2, embd + 2 * d2])  # q | k | v, each starting at a part
            return (rows, embd) if name.endswith("weight") else (rows,)
        if name.endswith(f"{MLP_IN}.weight"):
            return torch.arange(4 * d1), embd
        if name.endswith(f"{MLP_IN}.bias"):
            return (torch.arange(4 * d1),)
        if name.endswith(f"{MLP_OUT}.weight"):
            return embd, torch.arange(4 * d1)
        if name in (TOKEN, POSITION):
            return torch.arange(self.source.vocab_size if name == TOKEN else self.source.block_size), embd
        if name.endswith(f"{ATTN_OUT}.weight"):
            return embd, embd
        return (embd,)  # LayerNorms and the remaining biases


def _embed(old: torch.Tensor, new: torch.Tensor, index: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``new`` with ``old`` written at the cross product of ``index``."""
    new = new.clone()
    if len(index) == 1:
        new[index[0]] = old
    else:
        new[index[0][:, None], index[1]] = old
    return new


def _fresh(name: str, shape: torch.Size, std: float, like: torch.Tensor, generator) -> torch.Tensor:
    """MSG's init of new entries: weights N(0, std), LayerNorm γ = 1, biases 0."""
    if name.endswith("bias"):
        return torch.zeros(shape, dtype=like.dtype, device=like.device)
    module = name.rsplit(".", 1)[0]
    if module == FINAL_NORM or module.endswith((f".{NORM_1}", f".{NORM_2}")):
        return torch.ones(shape, dtype=like.dtype, device=like.device)
    return (torch.randn(shape, generator=generator) * std).to(like)


def msg_grow(source: GPT, target: GPTConfig, std: float = 0.02,
             new_blocks: Literal["copy", "random"] = "copy",
             generator: torch.Generator | None = None) -> tuple[Tensors, MSGGrowth]:
    """The target's tensors and the growth record; run the target with :class:`MSGMasks` at c = 0.

    New blocks (target blocks L₁…L₂−1) are appended on top. ``copy`` (MSG's default): copies of
    the grown source blocks in MSG's order — the whole stack as often as it fits, then the top
    L₂ mod L₁ blocks; ``random``: fresh N(0, std) weights. Either way they start masked.
    """
    src = source.config
    check_growth(src, target, "msg")
    if new_blocks not in ("copy", "random"):
        raise ConfigError(f"new_blocks: expected 'copy' or 'random', got {new_blocks!r}")
    growth = MSGGrowth(src, target, list(range(src.n_layer)))
    shapes = parameter_shapes(target)
    old = source_tensors(source)
    out: Tensors = {}
    for name, shape in shapes.items():
        index = growth.old_index(name)
        if index is None:
            continue
        out[name] = _embed(old[name], _fresh(name, shape, std, old[name], generator), index)
    for j, i in enumerate(msg_block_order(src.n_layer, target.n_layer), start=src.n_layer):
        if new_blocks == "copy":
            put_block(out, j, {k: v.clone() for k, v in get_block(out, i).items()})
        else:
            put_block(out, j, {k: _fresh(f"{PREFIX}.{j}.{k}", v.shape, std, v, generator)
                               for k, v in get_block(out, i).items()})
        growth.block_source.append(i if new_blocks == "copy" else -1)
    return out, growth


def msg_block_order(n_src: int, n_tgt: int) -> list[int]:
    """Source block of each new block, MSG's order: the whole stack as often as it fits, then the
    top n_tgt mod n_src blocks."""
    top = n_tgt % n_src
    return list(range(n_src)) * (n_tgt // n_src - 1) + list(range(n_src - top, n_src))


# ---------------------------------------------------------------------------- the ramp's masks
def ramp_value(steps_since_growth: int, ramp_steps: int) -> float:
    """c rises linearly from 0 (at growth) to 1 after ``ramp_steps`` steps."""
    return 1.0 if ramp_steps <= 0 else min(1.0, steps_since_growth / ramp_steps)


def masked_layer_norm(x: torch.Tensor, m: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm with statistics over the dimensions weighted by ``m``, output multiplied by ``m``."""
    n = m.sum()
    mu = (x * m).sum(-1, keepdim=True) / n
    var = ((x - mu).square() * m).sum(-1, keepdim=True) / n
    y = (x - mu) * torch.rsqrt(var + eps) * weight
    return (y if bias is None else y + bias) * m


class MaskValue:
    """MSG's mask value ``c`` ∈ [0, 1] and the (1, …, 1, c, …, c) masks it makes; the hooks that apply
    them are the subclasses' (MSGMasks for leantrain's GPT, roles.RoleMasks for models by weight roles)."""

    def __init__(self, value: float = 0.0):
        self.value = value
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def set_value(self, c: float) -> None:
        if not 0.0 <= c <= 1.0:
            raise ValueError(f"mask value must be in [0, 1], got {c}")
        self.value = c

    def mask(self, n_old: int, like: torch.Tensor) -> torch.Tensor:
        """(1, …, 1, c, …, c) over ``like``'s last dimension: ones on its first ``n_old`` entries."""
        m = torch.full((like.shape[-1],), self.value, dtype=like.dtype, device=like.device)
        m[:n_old] = 1.0
        return m


class MSGMasks(MaskValue):
    """The forward-time part of MSG: masks with value ``c`` on a grown GPT, through forward hooks.

    ``attach(model)`` once after loading the grown tensors, ``set_value(c)`` every step of the
    ramp, ``detach()`` when c reaches 1 (the hooks then do nothing but cost). Width slicing by a
    ``BlockPlan`` (RaPTr) bypasses the projection modules and is not supported during the ramp.
    """

    def __init__(self, growth: MSGGrowth, value: float = 0.0):
        super().__init__(value)
        self.growth = growth

    def attach(self, model: GPT) -> None:
        if self.handles:
            raise RuntimeError("MSGMasks is already attached")
        d1, hook = self.growth.source.n_embd, self.handles.append
        blocks = adapt(model).blocks
        if self.growth.target.n_embd > d1:
            for emb in (model.get_submodule(module_of(TOKEN)), model.get_submodule(module_of(POSITION))):
                hook(emb.register_forward_hook(self._stream))
            norms = [b.get_submodule(n) for b in blocks for n in (NORM_1, NORM_2)]
            for ln in [model.get_submodule(FINAL_NORM)] + norms:
                hook(ln.register_forward_hook(self._layer_norm))
            for b in blocks:
                # heads' channels, MLP units
                for proj, n_old in ((b.get_submodule(ATTN_OUT), d1), (b.get_submodule(MLP_OUT), 4 * d1)):
                    hook(proj.register_forward_pre_hook(functools.partial(self._new_units, n_old)))
                    hook(proj.register_forward_hook(self._stream))
        for j in self.growth.new_blocks:
            hook(blocks[j].register_forward_hook(self._new_block))

    # -- the hooks (forward hooks get (module, args, output), pre-hooks (module, args))
    def _stream(self, module, args, out):
        return out * self.mask(self.growth.source.n_embd, out)

    def _layer_norm(self, module, args, out):
        x = args[0]
        return masked_layer_norm(x, self.mask(self.growth.source.n_embd, x), module.weight, module.bias)

    def _new_units(self, n_old, module, args):
        return (args[0] * self.mask(n_old, args[0]),)

    def _new_block(self, module, args, out):
        x = args[0]
        return x + self.value * (out - x)

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


# ------------------------------------------------------------------------------- optimizer state
def carry_adam_state(old_state: dict[str, dict[str, torch.Tensor]], growth: MSGGrowth,
                     target: Tensors) -> dict[str, dict[str, torch.Tensor]]:
    """AdamW state for the target's parameters: the source's moments in the old slice, zeros in the
    new entries, the step count kept (MSG's ``transfer_states``). New blocks get no state (fresh).

    ``old_state``: source parameter name → {"step", "exp_avg", "exp_avg_sq"}; ``target``: the
    target's tensors (for shapes)."""
    out = {}
    for name, t in target.items():
        index = growth.old_index(name)
        if index is None or name not in old_state:
            continue
        s = old_state[name]
        out[name] = {"step": s["step"].clone() if torch.is_tensor(s["step"]) else s["step"],
                     **{k: _embed(s[k], torch.zeros_like(t, dtype=s[k].dtype), index)
                        for k in ("exp_avg", "exp_avg_sq")}}
    return out
