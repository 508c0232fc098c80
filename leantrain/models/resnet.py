"""The CIFAR ResNet-(6n+2) of He et al. ("Deep Residual Learning for Image Recognition", CVPR 2016),
1-D (signals, e.g. MNIST-1D) or 2-D (images, e.g. CIFAR-10), whose blocks methods can skip or run
one unit at a time.

Stem conv3×3 + BN + ReLU (16·width channels); three stages of n BasicBlocks (16, 32, 64 channels ×
width; stride 2 at the first block of stages 2 and 3); global average pool + linear. depth = 6n + 2.

Interface for training-efficiency methods (all inert by default):

* **Units** (local learning). ``model.units`` is the ordered list ``[stem, *blocks, head]``
  (3n + 2 modules): applying them in order to an input gives exactly ``forward``'s logits.
  ``model.unit_channels[i]`` is unit i's output channels (the head's: the number of classes) and
  ``model.unit_strides[i]`` the total downsampling factor of its feature map with respect to the
  input (1, 2 or 4; None for the head, whose output is a (B, classes) vector).
  ``model.unit_shapes(input_shape)`` gives each unit's output shape for one sample, e.g.
  (32, 20) after a stage-2 block on a (1, 40) signal (a stride-2 conv maps a size s to ceil(s/2)).
* **Block plan** (stochastic depth, RaPTr by depth), as in :mod:`leantrain.models.gpt`:
  ``model.blocks`` is the ModuleList of the 3n BasicBlocks; ``model.plan`` a list of
  :class:`~leantrain.models.protocol.BlockPlan` or None. In training mode only the listed blocks run, in
  the listed order, each residual branch multiplied by ``plan.scale``; a skipped block is the
  identity (its input is a ReLU output, so ReLU(0·branch + x) = x). Evaluation always runs the full
  model. ``model.always_run`` holds the indices of the blocks whose shortcut changes the shape
  (the first block of stages 2 and 3): they cannot be skipped, and a plan that omits one raises
  ValueError. Width slicing is not supported (``heads``/``hidden`` must be None).
  ``model.shape_key()`` is what changes a training step's FLOPs besides the batch shape.

These are the ``units``, ``pipeline``, ``blocks`` and ``plan`` capabilities of the model protocol
(:mod:`leantrain.models.protocol`), which ResNet implements natively.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch.nn as nn
import torch.nn.functional as F

from ..config import check
from ..registry import register_model
from .protocol import BlockPlan, ModelProtocol, Units

STAGE_WIDTHS = (16, 32, 64)


@dataclass
class ResNetConfig:
    depth: int = 32
    """Number of weighted layers, 6n + 2 (20, 32, 44, 56, 110, ...): n BasicBlocks per stage."""
    width: float = 1.0
    """Channel multiplier on the stage widths 16/32/64 (channels rounded to the nearest int, at least 1)."""
    dims: int | None = None
    """1 (signals, input (C, L)) or 2 (images, input (C, H, W)); null = from the data's input shape."""
    in_channels: int | None = None
    """Input channels; null = taken from the data."""
    num_classes: int | None = None
    """Number of classes; null = taken from the data."""
    shortcut: Literal["projection", "padding"] = "projection"
    """Shortcut of the downsampling blocks. projection: conv1×1 + BN (the InfoPro/ContSup reference
    code); padding: subsample by 2 and append zero channels, no parameters (He et al., option A)."""

    def validate(self) -> None:
        check(self.depth >= 8 and (self.depth - 2) % 6 == 0, "depth",
              f"must be 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...), got {self.depth}")
        check(self.width > 0, "width", f"must be positive, got {self.width}")
        check(self.dims in (None, 1, 2), "dims", f"must be 1, 2 or null, got {self.dims}")
        for key in ("in_channels", "num_classes"):
            value = getattr(self, key)
            check(value is None or value > 0, key, f"must be positive, got {value}")
        check(self.shortcut in ("projection", "padding"), "shortcut",
              f"must be 'projection' or 'padding', got {self.shortcut!r}")

    def adapt_to_data(self, info) -> None:
        """Take dims, input channels and classes from the data (``info``: a :class:`leantrain.data.DataInfo`)."""
        check(info.task == "classification", "model.name",
              f"resnet classifies arrays but the data is a {info.task!r} task")
        shape = tuple(info.input_shape or ())
        check(len(shape) in (2, 3), "model.dims",
              f"the data's samples have shape {shape}; resnet takes (C, L) or (C, H, W)")
        if self.dims is None:
            self.dims = len(shape) - 1
        check(self.dims == len(shape) - 1, "model.dims",
              f"{self.dims} does not fit the data's sample shape {shape} ({len(shape) - 1}-D)")
        if self.in_channels is None:
            self.in_channels = shape[0]
        check(self.in_channels == shape[0], "model.in_channels",
              f"{self.in_channels} does not match the data's {shape[0]} channels")
        if self.num_classes is None:
            self.num_classes = info.num_classes
        check(self.num_classes >= info.num_classes, "model.num_classes",
              f"{self.num_classes} is fewer than the data's {info.num_classes} classes")

    def stage_channels(self) -> tuple[int, ...]:
        return tuple(max(1, round(c * self.width)) for c in STAGE_WIDTHS)


def conv(dims: int, c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Module:
    Conv = nn.Conv1d if dims == 1 else nn.Conv2d
    return Conv(c_in, c_out, kernel, stride, padding=kernel // 2, bias=False)  # BN follows: no bias


def batch_norm(dims: int, channels: int) -> nn.Module:
    return nn.BatchNorm1d(channels) if dims == 1 else nn.BatchNorm2d(channels)


class Stem(nn.Module):
    def __init__(self, dims: int, c_in: int, c_out: int):
        super().__init__()
        self.conv = conv(dims, c_in, c_out, 3)
        self.bn = batch_norm(dims, c_out)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)), inplace=True)


class PaddingShortcut(nn.Module):
    """He et al.'s option A: keep every stride-th sample and append zero channels. No parameters."""

    def __init__(self, dims: int, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.dims, self.extra, self.stride = dims, c_out - c_in, stride

    def forward(self, x):
        x = x[(slice(None), slice(None)) + (slice(None, None, self.stride),) * self.dims]
        return F.pad(x, (0, 0) * self.dims + (0, self.extra))  # F.pad lists the last dim first


class BasicBlock(nn.Module):
    """x -> ReLU(scale · BN(conv3(ReLU(BN(conv3(x))))) + shortcut(x))."""

    def __init__(self, dims: int, c_in: int, c_out: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1 = conv(dims, c_in, c_out, 3, stride)
        self.bn1 = batch_norm(dims, c_out)
        self.conv2 = conv(dims, c_out, c_out, 3)
        self.bn2 = batch_norm(dims, c_out)
        self.changes_shape = stride != 1 or c_in != c_out
        if not self.changes_shape:
            self.shortcut = nn.Identity()
        elif shortcut == "projection":
            self.shortcut = nn.Sequential(conv(dims, c_in, c_out, 1, stride), batch_norm(dims, c_out))
        else:
            self.shortcut = PaddingShortcut(dims, c_in, c_out, stride)

    def forward(self, x, scale: float = 1.0):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)), inplace=True)))
        y = y * scale if scale != 1.0 else y
        return F.relu(y + self.shortcut(x), inplace=True)


class Head(nn.Module):
    """Global average pool over the spatial dims, then a linear classifier."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(2).mean(-1))


class ResNet(nn.Module, ModelProtocol):
    CAPABILITIES = frozenset({"blocks", "plan", "units", "pipeline"})

    def __init__(self, cfg: ResNetConfig):
        super().__init__()
        assert None not in (cfg.dims, cfg.in_channels, cfg.num_classes), \
            "dims, in_channels and num_classes must be set (the trainer takes them from the data)"
        self.config = cfg
        n, dims = (cfg.depth - 2) // 6, cfg.dims
        widths = cfg.stage_channels()
        self.stem = Stem(dims, cfg.in_channels, widths[0])
        blocks, c_in, strides, stride = [], widths[0], [1], 1
        for stage, c_out in enumerate(widths):
            for j in range(n):
                s = 2 if stage > 0 and j == 0 else 1
                blocks.append(BasicBlock(dims, c_in, c_out, s, cfg.shortcut))
                c_in, stride = c_out, stride * s
                strides.append(stride)
        self.blocks = nn.ModuleList(blocks)
        self.head = Head(widths[-1], cfg.num_classes)
        self.plan: list[BlockPlan] | None = None
        self.always_run: tuple[int, ...] = tuple(i for i, b in enumerate(blocks) if b.changes_shape)
        self.unit_channels: tuple[int, ...] = (widths[0], *(b.bn2.num_features for b in blocks),
                                               cfg.num_classes)
        self.unit_strides: tuple[int | None, ...] = (*strides, None)
        self._init_weights()

    def _init_weights(self) -> None:
        # As the local-learning reference code (InfoPro, ContSup): conv weights N(0, 2/n) with
        # n = kernel elements × output channels, BN γ = 1, β = 0. The linear layer keeps PyTorch's
        # default init (uniform ±1/√fan_in for weight and bias), as the reference code does.
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                n = math.prod(m.kernel_size) * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def units(self) -> list[nn.Module]:
        """[stem, *blocks, head]: applied in order they compute ``forward``'s logits (no plan)."""
        return [self.stem, *self.blocks, self.head]

    def unit_shapes(self, input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Each unit's output shape for one sample of ``input_shape`` ((C, L) or (C, H, W))."""
        spatial, shapes = tuple(input_shape[1:]), []
        for c, s in zip(self.unit_channels[:-1], self.unit_strides[:-1]):
            shapes.append((c, *(-(-d // s) for d in spatial)))  # each stride-2 conv: ceil(d / 2)
        return shapes + [(self.unit_channels[-1],)]

    # -- the model protocol (leantrain.models.protocol)
    def why_not(self, name: str) -> str | None:
        return {"plan_width": "its blocks are convolutions, with no attention heads or MLP units to slice",
                "dropout": "it has no dropout sites",
                "depth_change": "its blocks differ in shape from stage to stage, so copies do not fit",
                "weight_roles": "its weights are convolutions, not transformer blocks",
                "stages": "it has no token embedding (its units are stem, blocks, head)"}.get(name)

    def local_units(self, input_shape: tuple[int, ...]) -> Units:
        """[stem, *blocks, head] with their output shapes for one sample of ``input_shape``."""
        units = self.units
        return Units(units, self.unit_shapes(tuple(input_shape)), "conv1d" if len(input_shape) == 2 else "conv2d",
                     [list(u.parameters()) for u in units])

    def check_plan(self, plan: list[BlockPlan]) -> None:
        """Raise ValueError unless ``plan`` runs blocks in increasing order, keeps every always-run
        block and asks for no width slicing."""
        idx = [bp.index for bp in plan]
        if any(b <= a for a, b in zip(idx, idx[1:])) or not all(0 <= i < len(self.blocks) for i in idx):
            raise ValueError(f"a ResNet plan must list block indices in increasing order within "
                             f"0..{len(self.blocks) - 1}, got {idx}")
        missing = sorted(set(self.always_run) - set(idx))
        if missing:
            raise ValueError(f"plan skips blocks {missing}, whose shortcut changes the feature-map "
                             f"shape; they must always run (model.always_run = {self.always_run})")
        if any(bp.heads is not None or bp.hidden is not None or bp.width_scale != 1.0 for bp in plan):
            raise ValueError("ResNet blocks support no width slicing (BlockPlan heads/hidden must be None)")

    def run_blocks(self, x):
        if self.plan is None or not self.training:
            for block in self.blocks:
                x = block(x)
            return x
        self.check_plan(self.plan)
        for bp in self.plan:
            x = self.blocks[bp.index](x, bp.scale)
        return x

    def forward(self, x, targets=None):
        assert x.dim() == self.config.dims + 2, \
            f"expected a batch of {self.config.dims}-D samples (B, C, ...), got shape {tuple(x.shape)}"
        logits = self.head(self.run_blocks(self.stem(x)))
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits, targets)

    def shape_key(self) -> tuple:
        """What determines a training step's FLOPs besides the batch shape (for FLOP caching).
        Blocks differ in cost from stage to stage, so a plan's key lists the blocks it runs."""
        c = self.config
        base = (c.depth, c.dims, c.shortcut, self.unit_channels)
        if self.plan is None or not self.training:
            return base
        return base + (tuple(bp.index for bp in self.plan),)


@register_model("resnet", config=ResNetConfig, task="classification")
def resnet(cfg: ResNetConfig) -> ResNet:
    return ResNet(cfg)
