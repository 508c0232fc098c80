"""ContSup's context supply: encoders that add context from outside the lossy chain to a module's input.

At the cut after module k the next module's input is
    h^c = sg(h_k) + [E]·M^E(x) + Σ_{j<n} M^R_j(sg(input of module k − j))
(sg = detach; fusion by element-wise addition, out of place). The encoders are trained by the next
module's loss and stay in the deployed model. Reference layers (Tab-ct/ContSup), 1-D or 2-D:
  E: conv3×3(C_in→12)+BN+ReLU → conv3×3(12→C)+BN+ReLU → adaptive average pool to the feature size;
  R: conv1×1(C_src→C)+BN+ReLU → adaptive average pool to the feature size.
[ours] ``cheap_e``: pool the input to the feature size first, then convolve (the reference E runs at
full resolution: +89% inference MACs at K = 16 on ResNet-32). For a GPT [ours, beyond the papers]
E maps the embedding output and R an earlier module's input through a linear map (identity at init).
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn

from ...errors import ConfigError
from ...models.resnet import batch_norm, conv
from .heads import AdaptivePool


def parse_context(spec: str) -> tuple[bool, int]:
    """``none`` | ``E`` | ``R<n>`` | ``R<n>E`` → (use E, n)."""
    if spec in ("none", "R0"):
        return False, 0
    if spec == "E":
        return True, 0
    m = re.fullmatch(r"R(\d+)(E?)", spec)
    if not m or int(m.group(1)) < 1:
        raise ConfigError(f"methods.local.context: {spec!r} is not none, E, R<n> or R<n>E (n ≥ 1)")
    return bool(m.group(2)), int(m.group(1))


def feature_size(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape[1:])


class InputEncoder(nn.Module):
    """Context E for feature maps: the raw input encoded to (C, size)."""

    def __init__(self, dims: int, in_channels: int, channels: int, size: tuple[int, ...], cheap: bool):
        super().__init__()
        self.pool = AdaptivePool(dims, size)
        self.cheap = cheap
        self.net = nn.Sequential(conv(dims, in_channels, 12, 3), batch_norm(dims, 12), nn.ReLU(),
                                 conv(dims, 12, channels, 3), batch_norm(dims, channels), nn.ReLU())

    def forward(self, x):
        return self.net(self.pool(x)) if self.cheap else self.pool(self.net(x))


class FeatureEncoder(nn.Module):
    """Context R for feature maps: an earlier module's input, conv1×1 to C, pooled to the size."""

    def __init__(self, dims: int, src_channels: int, channels: int, size: tuple[int, ...]):
        super().__init__()
        self.net = nn.Sequential(conv(dims, src_channels, channels, 1), batch_norm(dims, channels), nn.ReLU(),
                                 AdaptivePool(dims, size))

    def forward(self, h):
        return self.net(h)


class TokenMap(nn.Module):
    """Context for token states [ours]: a linear map C→C, the identity at initialisation."""

    def __init__(self, channels: int):
        super().__init__()
        self.map = nn.Linear(channels, channels, bias=False)
        with torch.no_grad():
            self.map.weight.copy_(torch.eye(channels))

    def forward(self, h):
        return self.map(h)
