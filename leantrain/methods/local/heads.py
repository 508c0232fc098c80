"""Local heads (what turns a module's output into its local loss), the InfoPro decoder, SupCon.

Layers follow the reference code named in each docstring (``shared/specs/local_learning.md``), in
1-D (signals) or 2-D (images) as the model's features are; a GPT's local head is a LayerNorm and an
LM head. A head's output is the class logits (cross-entropy) or a ``feature_dim`` embedding
(supervised contrastive loss).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...models.resnet import BasicBlock, batch_norm, conv


class GlobalPool(nn.Module):
    """Mean over every spatial position: (B, C, ...) → (B, C)."""

    def forward(self, x):
        return x.flatten(2).mean(-1)


class AdaptivePool(nn.Module):
    """Adaptive average pooling to ``size`` per spatial dim, 1-D or 2-D."""

    def __init__(self, dims: int, size: int | tuple[int, ...]):
        super().__init__()
        self.dims, self.size = dims, size

    def forward(self, x):
        pool = F.adaptive_avg_pool1d if self.dims == 1 else F.adaptive_avg_pool2d
        return pool(x, self.size)


def linear_head(channels: int, out: int) -> nn.Module:
    """Greedy supervised learning (``0c1f``): global average pool + one linear layer."""
    return nn.Sequential(GlobalPool(), nn.Linear(channels, out))


def conv_head(dims: int, channels: int, out: int, widest: int, feature_dim: int = 128) -> nn.Module:
    """``1c2f`` (InfoPro / ContSup reference): conv3×3 to the next stage's width (stride 2; at the
    widest stage the same width, stride 1) + BN + ReLU → global pool → FC(feature_dim) → ReLU → FC(out)."""
    wide, stride = (2 * channels, 2) if channels < widest else (channels, 1)
    return nn.Sequential(conv(dims, channels, wide, 3, stride), batch_norm(dims, wide), nn.ReLU(),
                         GlobalPool(), nn.Linear(wide, feature_dim), nn.ReLU(inplace=True),
                         nn.Linear(feature_dim, out))


def dgl_head(dims: int, channels: int, size: int, out: int) -> nn.Module:
    """DGL's auxiliary network (eugenium/DGL ``auxiliary_nets_study``, as ported by AugLocal): pool to
    ⌈size/4⌉ → 3 × (conv1×1 + BN + ReLU) → pool to min(⌈size/4⌉, 2) → 2 × (linear + BN + ReLU) → linear.
    ``size``: the feature map's side (length for 1-D)."""
    first = math.ceil(size / 4)
    last = min(first, 2)
    feat = channels * last ** dims
    layers: list[nn.Module] = [AdaptivePool(dims, first)]
    for _ in range(3):
        layers += [conv(dims, channels, channels, 1), batch_norm(dims, channels), nn.ReLU()]
    layers += [AdaptivePool(dims, last), nn.Flatten()]
    for _ in range(2):
        layers += [nn.Linear(feat, feat, bias=False), nn.BatchNorm1d(feat), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(feat, out))


def auglocal_layers(net_dim: list[int], layer: int, depth: int) -> list[int]:
    """AugLocal's uniform sampling: the ``depth`` later layers whose architecture the auxiliary network
    of the module ending at ``layer`` copies, j_i = round(l + (L − l − 1)·i/d), i = 1..d (all the
    remaining layers if fewer than d are left)."""
    n = len(net_dim)
    if depth >= n - 1 - layer:
        return list(range(layer + 1, n))
    return [round(layer + (n - layer - 1) / depth * i) for i in range(1, depth + 1)]


def pyramidal_depth(d: int, k: int, modules: int, tau: float = 0.5) -> int:
    """AugLocal's depth for the k-th (0-based) local module of M: d_k = max(1, round(d·(1 − kτ/(M−2))
    + kτ/(M−2))), shrinking toward the output (M = 2: d)."""
    if modules <= 2:
        return d
    r = k * tau / (modules - 2)
    return max(1, round(d * (1 - r) + r))


def auglocal_head(dims: int, net_dim: list[int], layer: int, depth: int, out: int) -> nn.Module:
    """AugLocal (ChenxiangMA/AugLocal ``unifSamp``): new BasicBlocks with the widths of the sampled later
    layers (stride 2 wherever the width doubles, no weight sharing), then pool + linear (with a BN
    before the linear when the network is one block deep)."""
    blocks, c_in, pools = [], net_dim[layer], 0
    for j in auglocal_layers(net_dim, layer, depth):
        pools += int(math.log2(net_dim[j] // c_in)) if net_dim[j] >= c_in else 0
        stride = 2 if pools >= 1 else 1
        pools -= 1 if pools >= 1 else 0
        blocks.append(BasicBlock(dims, c_in, net_dim[j], stride, "projection"))
        c_in = net_dim[j]
    tail: list[nn.Module] = [GlobalPool()] + ([nn.BatchNorm1d(c_in)] if depth <= 1 else [])
    return nn.Sequential(*blocks, *tail, nn.Linear(c_in, out))


class LMLocalHead(nn.Module):
    """A GPT module's local head [ours]: LayerNorm + LM head, optionally tied to the token embedding."""

    def __init__(self, channels: int, vocab: int, tie: nn.Parameter | None = None):
        super().__init__()
        self.ln = nn.LayerNorm(channels)
        self.lm = nn.Linear(channels, vocab, bias=False)
        nn.init.normal_(self.lm.weight, std=0.02)
        self.tied = [tie] if tie is not None else None  # not registered: the embedding owns it

    def forward(self, h):
        return F.linear(self.ln(h), self.tied[0] if self.tied else self.lm.weight)


class TokenClassHead(nn.Module):
    """A local head for token states of a classifier (a ViT module) [ours]: LayerNorm, the first
    ([CLS]) token, a linear map to the classes — the shape of ViT's own head."""

    def __init__(self, channels: int, classes: int):
        super().__init__()
        self.ln = nn.LayerNorm(channels)
        self.fc = nn.Linear(channels, classes)

    def forward(self, h):
        return self.fc(self.ln(h)[:, 0, :])


class Decoder(nn.Module):
    """InfoPro's reconstruction decoder: interpolate to the input's size → conv3×3(C→12) + BN + ReLU →
    conv3×3(12 → input channels) [→ sigmoid]. With ``bce`` (inputs in [0, 1], e.g. images) the loss is
    BCE against the de-normalised input, as in the reference; otherwise [ours] MSE against the
    normalised input (signals such as MNIST-1D are not in [0, 1])."""

    def __init__(self, dims: int, channels: int, in_channels: int, size: tuple[int, ...], bce: bool):
        super().__init__()
        self.size, self.bce, self.dims = tuple(size), bce, dims
        self.net = nn.Sequential(conv(dims, channels, 12, 3), batch_norm(dims, 12), nn.ReLU(),
                                 nn.Conv1d(12, in_channels, 3, padding=1) if dims == 1 else
                                 nn.Conv2d(12, in_channels, 3, padding=1))

    def forward(self, h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        mode = "linear" if self.dims == 1 else "bilinear"
        y = self.net(F.interpolate(h, size=self.size, mode=mode, align_corners=True))
        if self.bce:
            return F.binary_cross_entropy(torch.sigmoid(y), target)
        return F.mse_loss(y, target)


def supcon_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020; one view per sample, as InfoPro uses it) on
    L2-normalised features: for each anchor, −mean over its positives of log softmax over all others.
    Anchors without a positive in the batch are left out."""
    z = F.normalize(features, dim=1)
    logits = z @ z.T / temperature
    n = len(labels)
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    count = positives.sum(1)
    keep = count > 0
    if not keep.any():
        return features.sum() * 0.0  # no anchor has a positive: no signal, but a graph
    mean_log_prob = log_prob.masked_fill(~positives, 0.0).sum(1)[keep] / count[keep]
    return -mean_log_prob.mean()
