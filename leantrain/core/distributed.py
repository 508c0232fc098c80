"""torch.distributed helpers: torchrun sets the environment, we only read it (no home-made launcher)."""
from __future__ import annotations

import logging
import os
import sys

import torch
import torch.distributed as dist

from ..errors import LeantrainError

_joined = False  # this process joined a torchrun process group in setup()


def setup(device: torch.device) -> tuple[int, int]:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA): (rank, world)."""
    global _joined
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        _joined = True
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def active() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the process group, (0, 1) without one."""
    return (dist.get_rank(), dist.get_world_size()) if active() else (0, 1)


def sum_tensor(t: torch.Tensor, group=None) -> torch.Tensor:
    """Element-wise sum across the ranks of ``group`` (all: None) — a copy; identity without DDP."""
    t = t.clone()
    if active():
        dist.all_reduce(t, group=group)
    return t


def max_value(x: float) -> float:
    """The largest ``x`` over all ranks."""
    if not active():
        return x
    t = torch.tensor([float(x)], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def group_size(group=None) -> int:
    return dist.get_world_size(group) if active() else 1


def average_gradients(params, group=None) -> None:
    """Average the gradients of ``params`` across the ranks of ``group`` (all: None) in one flat
    all-reduce (identity without DDP or in a group of one)."""
    if not active() or group_size(group) == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=group)
    flat /= group_size(group)
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (what DDP does when it wraps a model)."""
    if not active():
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src)


def broadcast_tensors(tensors, src: int = 0, group=None) -> None:
    """Copy rank ``src``'s ``tensors`` (e.g. BatchNorm statistics) to the ranks of ``group``, in place,
    as DDP does with buffers each step."""
    if not active() or group_size(group) == 1:
        return
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t.data, src, group=group)


def mean(values: list[float]) -> list[float]:
    """Element-wise mean across ranks (identity without DDP)."""
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


def gather(obj):
    """List of ``obj`` from every rank (``[obj]`` without DDP)."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj, src: int = 0):
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def on_main(fn) -> None:
    """Run ``fn`` on rank 0 only, and make every rank raise the ``LeantrainError`` it raises.

    For checks that touch shared files (e.g. the output directory): a rank-0-only error would
    otherwise leave the other ranks waiting on a peer that is gone and dying with a gloo traceback,
    instead of all exiting 2 with the same one-line message.
    """
    if not active():
        fn()
        return
    err = None
    if dist.get_rank() == 0:
        try:
            fn()
        except LeantrainError as e:
            err = e
    err = broadcast(err)
    if err is not None:
        raise err


def teardown() -> None:
    """Leave the process group together (a barrier first, so no rank closes connections a peer still uses)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def exit_worker(code: int) -> None:
    """End a torchrun worker that joined a process group with ``code``, skipping interpreter finalization.

    Does nothing in a process that never joined one (a plain run, or tests calling the CLI in-process).
    Why: constructing ``DistributedDataParallel`` keeps the gloo process group alive after
    ``destroy_process_group`` (PyTorch 2.13; its worker threads keep running), so it is destroyed during
    interpreter finalization, where it occasionally aborts the process (SIGABRT, "terminate called
    without an active exception") after all work is done; torchrun then reports the finished job as
    failed. Every file leantrain writes is closed by now (atomic renames), so after leaving together
    and flushing, ``os._exit`` is safe. A failing worker (``code != 0``) leaves without the barrier:
    its peers may not reach it, and torchrun stops them once one worker has failed.
    """
    if not _joined:
        return
    if code == 0:
        teardown()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
