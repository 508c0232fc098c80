"""Learngene Pool's distillation stage: small auxiliary models learn from one large ancestry model.

Loss [code: superselll/learngenepool, criterion2.py, ``distill_loss='all'``]::

    α·CE(z_s, y) + (1 − α)·[SoftCE(z_s/T, z_t/T) + Σ_p MSE(h_s^p, P^map_p h_t^p) + Σ_p MSE(a_s^p, P^att_p a_t^p)]

with h the block outputs, a the self-attention outputs (before the residual add) at matched blocks p,
and P learnable ``Linear(D_teacher → D_student)`` projections, trained with the student. α = 0.1, T = 1.
The hidden-state projections later initialise the pool's stitch layers (:func:`.stitch_init.init_learned`).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...errors import ConfigError
from ...models import protocol
from ...models.gpt import GPT, GPTConfig


def auxiliary_config(ancestry: GPTConfig, n_layer: int, n_embd: int, n_head: int) -> GPTConfig:
    """An auxiliary model's config: fewer (or as many) blocks and a narrower (or equal) width than the
    ancestry, same vocabulary, context and bias."""
    if n_embd > ancestry.n_embd:
        raise ConfigError(f"the ancestry (n_embd={ancestry.n_embd}) is narrower than its auxiliary model "
                          f"(n_embd={n_embd})")
    if n_layer > ancestry.n_layer:
        raise ConfigError(f"the ancestry ({ancestry.n_layer} blocks) is shallower than its auxiliary model "
                          f"({n_layer} blocks)")
    cfg = GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=ancestry.block_size,
                    vocab_size=ancestry.vocab_size, dropout=ancestry.dropout, bias=ancestry.bias)
    cfg.validate()
    return cfg


def matched_blocks(n_student: int, n_teacher: int, points: int = 3) -> list[tuple[int, int]]:
    """(student block, teacher block) pairs at the ends of ``points`` equal thirds (or halves, …) of
    each model: 9 and 12 blocks, 3 points → (2, 3), (5, 7), (8, 11) as in the reference code."""
    if not 1 <= points <= n_student:
        raise ConfigError(f"distillation points must be in [1, {n_student}] (the student's blocks), "
                          f"got {points}")
    return [(p * n_student // points - 1, p * n_teacher // points - 1) for p in range(1, points + 1)]


@contextlib.contextmanager
def record_features(model: GPT, blocks: Sequence[int]) -> Iterator[dict[str, dict[int, torch.Tensor]]]:
    """Within the block, forwards of ``model`` record ``hidden[i]`` (output of block i) and ``attn[i]``
    (its self-attention output, before the residual add) for each i in ``blocks``."""
    rec: dict[str, dict[int, torch.Tensor]] = {"hidden": {}, "attn": {}}

    def keep(kind: str, i: int):
        def hook(module, args, output):  # hf modules return (hidden, attention weights, ...) tuples
            rec[kind][i] = output[0] if isinstance(output, tuple) else output
        return hook

    view = protocol.require(model, "weight_roles", "learngene distillation")
    roles = view.weight_roles().blocks
    handles = []
    for i in blocks:
        block = view.blocks[i]
        handles.append(block.register_forward_hook(keep("hidden", i)))
        handles.append(block.get_submodule(roles[i].attention).register_forward_hook(keep("attn", i)))
    try:
        yield rec
    finally:
        for h in handles:
            h.remove()


def soft_cross_entropy(logits: torch.Tensor, teacher_logits: torch.Tensor,
                       temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy of the student against the teacher's softened distribution, summed over the
    vocabulary and averaged over tokens."""
    log_p = F.log_softmax(logits / temperature, dim=-1)
    q = F.softmax(teacher_logits / temperature, dim=-1)
    return -(q * log_p).sum(-1).mean()


def soft_distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                           alpha: float, temperature: float = 1.0) -> torch.Tensor:
    """α·CE(z, y) + (1 − α)·SoftCE(z/T, z_t/T): optional soft distillation of pool descendants from
    the ancestry, and the logit part of the auxiliary models' loss."""
    ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
    return alpha * ce + (1 - alpha) * soft_cross_entropy(logits, teacher_logits, temperature)


class LearngeneDistillation(nn.Module):
    """An auxiliary model with its distillation projections: the module one distillation run trains
    (so the projections are in its optimizer and its checkpoints)."""

    def __init__(self, student: GPT, teacher_width: int, teacher_blocks: int, points: int = 3,
                 alpha: float = 0.1, temperature: float = 1.0):
        super().__init__()
        from .family import stack_width
        c_s = stack_width(student)
        if c_s > teacher_width:
            raise ConfigError(f"the ancestry (n_embd={teacher_width}) is narrower than its auxiliary model "
                              f"(n_embd={c_s})")
        self.student = student
        self.pairs = matched_blocks(len(student.blocks), teacher_blocks, points)
        self.alpha, self.temperature = alpha, temperature
        self.hidden_proj = nn.ModuleList(nn.Linear(teacher_width, c_s) for _ in self.pairs)
        self.attn_proj = nn.ModuleList(nn.Linear(teacher_width, c_s) for _ in self.pairs)
        self.parts: dict[str, torch.Tensor] = {}  # the last distillation loss's terms, for logging

    def forward(self, idx, targets=None, teacher: GPT | None = None):
        """(logits, loss). Without ``teacher``: the student's own cross-entropy (evaluation). With
        it: the distillation loss, its terms in ``self.parts``; the teacher runs in eval mode without
        a graph. Under DDP call it through the wrapper: the projections must run inside the wrapped
        forward for their gradients to be reduced."""
        if teacher is None:
            return self.student(idx, targets)
        s_blocks, t_blocks = zip(*self.pairs)
        was_training = teacher.training
        teacher.eval()
        try:
            with torch.no_grad(), record_features(teacher, t_blocks) as t_feat:
                t_logits, _ = teacher(idx)
        finally:
            teacher.train(was_training)
        with record_features(self.student, s_blocks) as s_feat:
            logits, ce = self.student(idx, targets)
        soft = soft_cross_entropy(logits, t_logits, self.temperature)
        hidden = sum(F.mse_loss(s_feat["hidden"][i], p(t_feat["hidden"][j]))
                     for (i, j), p in zip(self.pairs, self.hidden_proj))
        attn = sum(F.mse_loss(s_feat["attn"][i], p(t_feat["attn"][j]))
                   for (i, j), p in zip(self.pairs, self.attn_proj))
        loss = self.alpha * ce + (1 - self.alpha) * (soft + hidden + attn)
        self.parts = {k: v.detach() for k, v in
                      {"ce": ce, "soft_ce": soft, "hidden_mse": hidden, "attn_mse": attn}.items()}
        return logits, loss

    def shape_key(self) -> tuple:
        """What determines a training step's FLOPs besides the batch shape (the teacher is fixed per run)."""
        return ("learngene_distill", *self.student.shape_key())

    def generate(self, *args, **kwargs):
        """Sample from the student (``leantrain sample`` on a distillation run)."""
        return self.student.generate(*args, **kwargs)

    def stitch_projections(self) -> list[torch.Tensor]:
        """The hidden-state projection weights (C_student × D_teacher) for the learned stitch init."""
        return [p.weight.detach() for p in self.hidden_proj]

    def stitch_projection_biases(self) -> list[torch.Tensor]:
        """The hidden-state projections' biases (C_student) for the learned stitch init."""
        return [p.bias.detach() for p in self.hidden_proj]
