"""Mixed precision and gradient accumulation for one training step: the autocast context, the loss
scaling of fp16 (``torch.amp.GradScaler``) and the 1/N of N accumulated micro-batches.

fp32 with one micro-batch is the identity: the forward runs without autocast and ``backward`` is
``loss.backward()``, so the default path computes exactly what it did before these options existed.
"""
from __future__ import annotations

import contextlib

import torch

from ..errors import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(t, device: torch.device) -> str:
    """The precision a run uses on ``device`` (``amp: true`` is bf16), or a ConfigError: autocast runs
    on CUDA, and on CPU only when the recipe sets train.device: cpu itself."""
    name = t.autocast_precision
    if name == "fp32" or device.type == "cuda":
        return name
    if t.amp:
        raise ConfigError("train.amp: bf16 autocast is CUDA only and no CUDA device is in use; drop "
                          "train.amp, or for bfloat16 autocast on CPU set train.precision: bf16 and "
                          "train.device: cpu")
    if t.device != "cpu":
        raise ConfigError(f"train.precision: {name} runs on CUDA and train.device: {t.device} chose "
                          f"{device.type}; for {name} autocast on CPU set train.device: cpu explicitly "
                          "(rarely faster than fp32 there)")
    return name


class Precision:
    """``autocast()`` and ``backward(loss)`` for a run's micro-batches; ``scaler`` for fp16."""

    def __init__(self, name: str, device: torch.device, grad_accum_steps: int = 1):
        self.name = name
        self.dtype = DTYPES.get(name)
        self.device_type = device.type
        self.accum = grad_accum_steps
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        if self.accum > 1:
            loss = loss / self.accum
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        loss.backward()

    # -- the scaler's state (checkpoint meta: JSON, exact — the scale is a power of two)
    def state_dict(self) -> dict | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
