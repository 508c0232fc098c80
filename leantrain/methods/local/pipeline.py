"""Module-parallel local learning: one process per group of modules, forward messages only.

Gradient isolation means module k never waits for module k+1's backward. Under torchrun with
``parallel: modules``, ranks form D replicas of a P-stage pipeline (rank = replica·P + stage); stage s
owns a contiguous group of the K modules (with its local heads, context encoders and optimizer
state). Every step, each stage trains its modules on the *same* batch its replica draws (the
sampler is sharded by replica, so labels and the raw input need no messages), then sends the
detached output of its last module — with the module inputs later context encoders read (R<n>) and,
for a GPT with context E, the embedding output — to the next stage with a non-blocking send, and
goes on to the next batch while that stage trains on this one. At most ``in_flight`` sends wait
unreceived. Replicas of one stage average their gradients among themselves only.

Module k still computes batch t with its weights after t − 1 of its own updates, exactly as the
single-process step does, so the losses are the same (bit for bit on CPU). Stages meet only at
metrics rows, evaluations and checkpoints (collectives): there every rank gets every module's
weights (and, for checkpoints, optimizer state) from its owner, so evaluation and the checkpoint
are those of the whole network — a single-process run resumes a pipeline's checkpoint and back.

Schedule (P = 2, time →; ``t`` = batch):

    stage 0 │ f0 b0 │ f1 b1 │ f2 b2 │ f3 b3 │ ...        f/b = forward/backward of its module(s)
            │   ╲ send t=0  ╲ t=1   ╲ t=2
    stage 1 │ (wait)│ f0 b0 │ f1 b1 │ f2 b2 │ ...
"""
from __future__ import annotations

from collections import deque

import torch
import torch.distributed as dist

from ...core import distributed
from ...errors import LeantrainError

_DTYPES = [torch.float32, torch.float64, torch.int64, torch.bfloat16, torch.float16, torch.int32]
_HEADER = 1 + 8 * 6  # count, then per tensor: dtype, ndim, up to 4 dims (8 tensors at most)


def stage_bounds(n_modules: int, stages: int) -> list[int]:
    """Module index boundaries: stage s owns modules [b[s], b[s+1])."""
    return [round(s * n_modules / stages) for s in range(stages + 1)]


class Pipeline:
    """This rank's place in the pipeline and its message queue."""

    def __init__(self, n_modules: int, stages: int, replicas: int, in_flight: int, device: torch.device):
        rank, world = distributed.rank_world()
        self.stages, self.replicas, self.in_flight, self.device = stages, replicas, in_flight, device
        self.stage, self.replica = rank % stages, rank // stages
        bounds = stage_bounds(n_modules, stages)
        self.first, self.end = bounds[self.stage], bounds[self.stage + 1]
        self.owner_stage = [s for s in range(stages) for _ in range(bounds[s], bounds[s + 1])]
        self.prev = rank - 1 if self.stage > 0 else None
        self.next = rank + 1 if self.stage < stages - 1 else None
        # every rank creates every group, in the same order (a torch.distributed rule)
        groups = [dist.new_group([r * stages + s for r in range(replicas)]) if distributed.active() else None
                  for s in range(stages)]
        self.group = groups[self.stage]
        self.pending: deque = deque()

    @property
    def last_stage(self) -> bool:
        return self.next is None

    def owner_rank(self, module: int) -> int:
        """The rank whose copy of ``module`` is the reference (replica 0 of its stage)."""
        return self.owner_stage[module]

    # -- messages -------------------------------------------------------------------------------
    def send(self, tensors: list[torch.Tensor]) -> None:
        """Non-blocking send to the next stage; blocks only when ``in_flight`` sends are unreceived."""
        header = torch.zeros(_HEADER, dtype=torch.int64)
        header[0] = len(tensors)
        for i, t in enumerate(tensors):
            header[1 + 6 * i: 3 + 6 * i] = torch.tensor([_DTYPES.index(t.dtype), t.dim()])
            header[3 + 6 * i: 3 + 6 * i + t.dim()] = torch.tensor(t.shape)
        payload = [header.to(self.device), *(t.detach().contiguous() for t in tensors)]
        try:
            works = [dist.isend(t, self.next) for t in payload]
        except RuntimeError as e:
            raise self._lost(self.next, e) from None
        self.pending.append((works, payload))  # the tensors must live until their send completes
        while len(self.pending) > self.in_flight:
            self._wait_oldest()

    def recv(self) -> list[torch.Tensor]:
        header = torch.zeros(_HEADER, dtype=torch.int64, device=self.device)
        try:
            dist.recv(header, self.prev)
            out = []
            h = header.cpu().tolist()
            for i in range(h[0]):
                dtype, ndim = _DTYPES[h[1 + 6 * i]], h[2 + 6 * i]
                t = torch.empty(h[3 + 6 * i: 3 + 6 * i + ndim], dtype=dtype, device=self.device)
                dist.recv(t, self.prev)
                out.append(t)
        except RuntimeError as e:
            raise self._lost(self.prev, e) from None
        return out

    def flush(self) -> None:
        while self.pending:
            self._wait_oldest()

    def _wait_oldest(self) -> None:
        works, _ = self.pending.popleft()
        try:
            for w in works:
                w.wait()
        except RuntimeError as e:
            raise self._lost(self.next, e) from None

    def _lost(self, peer: int | None, e: Exception) -> LeantrainError:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return LeantrainError(f"module-parallel stage {self.stage} lost rank {peer} ({first[:160]}); it stopped "
                              "or died — the last complete checkpoint is intact")

    # -- bringing the whole network onto every rank ---------------------------------------------------
    @torch.no_grad()
    def share_modules(self, lm, optimizer=None) -> None:
        """Every rank receives each module's weights and buffers (and, with ``optimizer``, its optimizer
        state) from the module's owner, so evaluation and checkpoints see the whole network."""
        if not distributed.active():
            return
        self.flush()
        for k in range(lm.n_modules):
            src = self.owner_rank(k)
            params = lm.module_parameters(k)
            for t in [*params, *lm.module_buffers(k)]:
                dist.broadcast(t.data, src)
            if optimizer is not None:
                names = {id(p): i for i, p in enumerate(params)}
                mine = {names[id(p)]: {slot: v.cpu() for slot, v in optimizer.state.get(p, {}).items()}
                        for p in params} if distributed.rank_world()[0] == src else None
                state = distributed.broadcast(mine, src)
                for i, p in enumerate(params):
                    if state.get(i):
                        optimizer.state[p] = {slot: v.clone().to(p.device) if v.dim() else v.clone()
                                              for slot, v in state[i].items()}
