"""torch.distributed helpers: torchrun sets the environment, we only read it (no home-made launcher)."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def setup(device: torch.device) -> tuple[int, int]:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA): (rank, world)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def active() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


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


def barrier() -> None:
    if active():
        dist.barrier()


def teardown() -> None:
    if dist.is_initialized():
        # Leave together: a rank that closes its gloo connections while a peer still uses them can
        # make the peer abort at exit.
        dist.barrier()
        dist.destroy_process_group()
