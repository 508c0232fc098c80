"""Small methods of all three kinds, used to prove the method contract (not registered globally)."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from leantrain import Event, Method
from leantrain.config import check


@dataclass
class DecayConfig:
    p0: float = 0.2
    """Dropout rate at step 0, decayed linearly to 0."""


class LinearDropoutProbe(Method):
    """Schedule: sets every dropout site to p0·(1 − progress) before each step; records events."""
    name = "probe_schedule"
    Config = DecayConfig

    def __init__(self, cfg=None, tag: str = "probe"):
        super().__init__(cfg)
        self.tag, self.events, self.steps_seen = tag, [], 0

    def on_event(self, event, state):
        self.events.append((self.tag, event))
        if event is Event.STEP_START:
            p = self.cfg.p0 * (1 - state.progress)
            state.model.set_dropout(p)
            state.log(f"{self.tag}/p", p)
            self.steps_seen += 1

    def state_dict(self):
        return {"steps_seen": self.steps_seen}

    def load_state_dict(self, s):
        self.steps_seen = s["steps_seen"]


@dataclass
class GrowConfig:
    at_step: int = 4
    """Append a copy of the top block before this step."""
    copy_moments: bool = True
    """Start the new block's AdamW moments from the copied block's."""

    def validate(self):
        check(self.at_step >= 0, "at_step", "must be ≥ 0")


class GrowOneBlock(Method):
    """Surgery: at ``at_step`` duplicate the top block (a one-step gradual stacking)."""
    name = "probe_grow"
    Config = GrowConfig
    kind = "surgery"
    exclusive_group = "depth"

    def __init__(self, cfg=None):
        super().__init__(cfg)
        self.grown = False

    def _grow(self, model):
        top = len(model.blocks) - 1
        model.blocks.append(copy.deepcopy(model.blocks[top]))
        return top, top + 1

    def on_event(self, event, state):
        if event is Event.STEP_START and not self.grown and state.step == self.cfg.at_step:
            src, dst = self._grow(state.model)
            self.grown = True
            mapping = {}
            if self.cfg.copy_moments:
                mapping = {n.replace(f"blocks.{src}.", f"blocks.{dst}.", 1): n
                           for n, _ in state.model.named_parameters() if n.startswith(f"blocks.{src}.")}
            state.request_rebuild(mapping)

    def state_dict(self):
        return {"grown": self.grown}

    def load_state_dict(self, s):
        self.grown = s["grown"]

    def restore(self, state):
        if self.grown:
            self._grow(state.model)


class HalfBatchStrategy(Method):
    """Step strategy: forward/backward in two half-batches (gradient accumulation), mean loss."""
    name = "probe_strategy"
    kind = "step_strategy"

    def __init__(self, cfg=None):
        super().__init__(cfg)
        self.calls = 0

    def training_step(self, state, model, x, y):
        self.calls += 1
        total = 0.0
        for xs, ys in zip(x.chunk(2), y.chunk(2)):
            loss = model(xs, ys)[1] / 2
            loss.backward()
            total = total + loss.detach()
        return total


class OtherStrategy(HalfBatchStrategy):
    name = "probe_strategy_2"


class OtherDepth(Method):
    name = "probe_depth_2"
    exclusive_group = "depth"


@dataclass
class PhaseConfig:
    phase: int = 5
    """Steps at the start that this method takes over."""


class PhaseProbe(Method):
    """Surgery with a phase: ``setup`` attaches a trainable gain to the model; for the first ``phase``
    steps ``training_step`` replaces the step (loss scaled by the gain), and a tensor of its own
    (a running sum of the losses it saw) goes through ``tensors`` into checkpoints."""
    name = "probe_phase"
    Config = PhaseConfig
    kind = "surgery"
    replaces_steps = True

    def __init__(self, cfg=None):
        super().__init__(cfg)
        self.seen = torch.zeros(1, dtype=torch.float64)
        self.setup_calls = 0

    def setup(self, state):
        self.setup_calls += 1
        state.model.probe_gain = torch.nn.Parameter(torch.ones(()))

    def takes_step(self, state):
        return state.step < self.cfg.phase

    def training_step(self, state, model, x, y):
        loss = model(x, y)[1] * state.model.probe_gain
        loss.backward()
        self.seen += loss.item()
        return loss.detach()

    def flop_key(self, state):
        return self.takes_step(state)

    def tensors(self):
        return {"seen": self.seen}

    def load_tensors(self, tensors):
        self.seen = tensors["seen"].clone()
