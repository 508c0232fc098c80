"""The operator phase of a trained growth operator (Mango, LiGO): the target runs functionally on the
operator's output, and only the operator learns — with its own AdamW and learning-rate schedule,
never the run's (LiGO's reference trained its operator under the run's 10k-step warm-up by accident).

One :class:`OperatorPhase` step is a training step of the run: the trainer's meter counts its FLOPs
and time. Its state — the source's weights, the operator's parameters and AdamW moments — goes into
the run's checkpoints (:meth:`tensors`), so a resumed run continues the phase exactly without the
source run.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.func import functional_call

from ...core import State, distributed
from ...models.gpt import GPT, GPTConfig
from .layout import Tensors, TrainedOperator, load_tensors


def gpt_from_tensors(cfg: GPTConfig, tensors: Tensors, device: torch.device) -> GPT:
    """A GPT holding ``tensors``; its random init does not touch the run's random stream."""
    with torch.random.fork_rng(devices=[]):
        model = GPT(cfg).to(device)
    load_tensors(model, tensors)
    return model.eval()


def average_gradients(params: list[torch.Tensor], loss: torch.Tensor) -> torch.Tensor:
    """Under DDP: replace each gradient by its mean over ranks (one all-reduce) and return the sum of
    the ranks' losses, so that every rank sees a non-finite loss if one rank has it. ``functional_call``
    runs the target outside the DDP wrapper, so nothing else synchronises the operator.
    Parameters without a gradient (blocks a subnetwork skipped: the same on every rank) are left out."""
    if not distributed.active():
        return loss.detach()
    grads = [p.grad for p in params if p.grad is not None]
    flat = distributed.sum_tensor(torch.cat([loss.detach().reshape(1).float()] + [g.reshape(-1) for g in grads]))
    world = distributed.rank_world()[1]
    offset = 1
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g) / world)
        offset += g.numel()
    return flat[0]


class OperatorPhase:
    """A growth operator, its AdamW, and the source weights it was built from."""

    def __init__(self, operator: TrainedOperator, source: Tensors, *, lr: float, warmup: int,
                 weight_decay: float, betas: tuple[float, float], grad_clip: float):
        self.operator = operator
        self.source = source
        """The source GPT's parameters (checkpointed: the operator's frozen inputs are rebuilt from them)."""
        self.lr, self.warmup, self.grad_clip = lr, warmup, grad_clip
        self.optimizer = torch.optim.AdamW(operator.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)

    def lr_at(self, step: int) -> float:
        """Linear warm-up over ``warmup`` steps (the trainer's formula), then constant."""
        return self.lr * min(1.0, (step + 1) / (self.warmup + 1))

    def step(self, state: State, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One operator step on the task loss; returns the loss (non-finite if the step was not taken)."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(state.step)
        weights = self.operator()  # outside autocast: the contraction stays in fp32
        with state.autocast():
            loss = functional_call(state.model, weights, (x, y))[1]
        state.backward(loss)  # divided by grad_accum_steps: the operator's gradients accumulate
        if state.micro_batch == 0:
            self._micro_losses = []
        self._micro_losses.append(loss.detach().float())
        if not state.last_micro_batch:
            return loss.detach()
        params = [p for p in self.operator.parameters() if p.grad is not None]
        # every micro-batch's loss takes part in the finite check (their sum)
        total = loss if len(self._micro_losses) == 1 else torch.stack(self._micro_losses).sum()
        losses = average_gradients(params, total)
        norm = (torch.nn.utils.clip_grad_norm_(params, self.grad_clip) if self.grad_clip > 0
                else torch.nn.utils.get_total_norm([p.grad for p in params]))
        # The same decision on every rank (averaged gradients, summed losses); the trainer then sees a
        # non-finite loss and stops or skips the step as train.on_nonfinite says.
        finite = math.isfinite(losses.item()) and math.isfinite(norm.item())
        if finite:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach() if finite else torch.full((), math.nan)

    @torch.no_grad()
    def sync(self, model: GPT) -> None:
        """Put the operator's current target into ``model``'s own weights (before an evaluation, and
        when a checkpoint is loaded), so the model is the target the operator makes now."""
        load_tensors(model, self.operator.materialize())

    # -- checkpointing -------------------------------------------------------------------------
    def tensors(self) -> Tensors:
        out = {f"source/{k}": v for k, v in self.source.items()}
        for name, p in self.operator.named_parameters():
            out[f"operator/{name}"] = p.detach()
            for slot, v in self.optimizer.state.get(p, {}).items():
                out[f"adam/{name}/{slot}"] = v
        return out

    @classmethod
    def from_tensors(cls, tensors: Tensors, source_cfg: GPTConfig, device: torch.device,
                     make_operator: Callable[[GPT], TrainedOperator], source_model=None,
                     **options) -> "OperatorPhase":
        """Rebuild a phase saved by :meth:`tensors` (``make_operator(source)`` gives an operator of the
        saved shape; its parameters and moments are then replaced by the saved ones). ``source_model``:
        the source already rebuilt (any model; otherwise a GPT of ``source_cfg``)."""
        part = lambda prefix: {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}  # noqa: E731
        source = {k: v.to(device) for k, v in part("source/").items()}
        operator = make_operator(source_model if source_model is not None else
                                 gpt_from_tensors(source_cfg, source, device))
        operator.load_state_dict(part("operator/"))
        phase = cls(operator, source, **options)
        params = dict(operator.named_parameters())
        for key, v in part("adam/").items():
            name, slot = key.rsplit("/", 1)
            p = params[name]
            phase.optimizer.state[p][slot] = v.clone() if slot == "step" else v.to(p.device).clone()
        return phase
