"""Devices and data-parallel training with torch.distributed.

One process per device, started by `torchrun` (or `twin train --nproc N`, which runs torchrun): each
rank draws its own windows, DDP averages the gradients (NCCL on GPUs, gloo on CPUs), and rank 0
alone validates and writes the run. Without torchrun's environment everything here is a no-op
for a single process.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

DEVICES = "auto | cpu | cuda | cuda:<i>"


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """"auto" → the local rank's GPU where CUDA is available, else the CPU; "cuda" → the local rank's
    GPU; "cpu" and "cuda:<i>" as given. A clear error for a GPU that is not there."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; choose {DEVICES}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but this machine has no CUDA GPU (use --device cpu)")
        index = local_rank if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise ValueError(f"device cuda:{index} asked for, but this machine has "
                             f"{torch.cuda.device_count()} GPU(s)")
        device = torch.device("cuda", index)
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {name!r}; choose {DEVICES}")
    return device


@dataclass(frozen=True)
class Rank:
    """This process's place: rank `index` of `world` processes, training on `device`."""

    index: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.index == 0


def start(device: str = "auto") -> Rank:
    """Join the process group torchrun set up (WORLD_SIZE > 1), or stay a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
    return Rank(dist.get_rank() if world > 1 else 0, world, resolved)


def finish(rank: Rank) -> None:
    """Leave the process group (after every rank reached this point). Objects that hold the group in
    reference cycles (a DistributedDataParallel wrapper) are collected first: left to the interpreter's
    exit, their Gloo threads can outlive it, and a rank aborted there after a complete run ("terminate
    called without an active exception", once in a `make test`)."""
    if rank.world > 1 and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def largest(value: float, rank: Rank) -> float:
    """The largest `value` over all ranks (ranks agree on how far the budget is spent)."""
    if rank.world == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=rank.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def from_main(value: int, rank: Rank) -> int:
    """Rank 0's `value` on every rank (rank 0 validates; all ranks must stop together)."""
    if rank.world == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=rank.device)
    dist.broadcast(tensor, src=0)
    return int(tensor.item())


def gather(value, rank: Rank) -> list:
    """`value` of every rank, in rank order (picklable objects; for the run's record)."""
    if rank.world == 1:
        return [value]
    values = [None] * rank.world
    dist.all_gather_object(values, value)
    return values


def share_buffers(module: torch.nn.Module, rank: Rank) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank. DDP broadcasts them before each
    forward, so each rank's last forward leaves its own; after training all ranks hold rank 0's."""
    if rank.world > 1:
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)


def barrier(rank: Rank) -> None:
    if rank.world > 1:
        dist.barrier()
