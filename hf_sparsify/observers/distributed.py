"""Cross-process helpers for observers, on top of Accelerate's process state.

Under ``accelerate launch --num_processes N`` every process sees the same calibration stream;
:func:`shard_batches` gives each process its own share (batch ``i`` goes to process ``i % N``) and
:func:`all_reduce_sum` adds the per-process statistics, so every process ends with the same totals as a single
process that saw all batches. With one process both are no-ops.
"""

from __future__ import annotations

import os
from typing import Iterable, Iterator, TypeVar

import torch

T = TypeVar("T")

__all__ = ["distributed_state", "all_reduce_sum", "shard_batches"]


def distributed_state():
    """Accelerate's ``PartialState`` (initialises torch.distributed under ``accelerate launch``).

    On a machine without GPUs, several processes started by a torchrun-style launcher
    (``accelerate launch --multi_gpu --num_processes 2``, ``torchrun --nproc_per_node 2``) join over gloo:
    accelerate only does that when asked for the CPU, which is done here (``accelerate launch --cpu`` itself starts
    several processes only through MPI's ``mpirun``).
    """
    from accelerate import PartialState

    return PartialState(cpu=_use_cpu())


def _use_cpu() -> bool:
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return True
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        world_size = 1
    return world_size > 1 and not torch.cuda.is_available()


def shard_batches(batches: Iterable[T], state=None) -> Iterator[T]:
    """Yield the batches that belong to this process (round robin)."""
    state = state or distributed_state()
    if state.num_processes == 1:
        yield from batches
        return
    for index, batch in enumerate(batches):
        if index % state.num_processes == state.process_index:
            yield batch


@torch.no_grad()
def all_reduce_sum(tensor: torch.Tensor, state=None, *, via: torch.device | str | None = None) -> torch.Tensor:
    """Sum ``tensor`` over all processes, in place (float64 stays float64; gloo and NCCL both work).

    ``via``: the device a CPU tensor is staged on, in pieces of 64M entries, when the backend (NCCL) only reduces
    GPU tensors (statistics kept on the CPU to save GPU memory).
    """
    state = state or distributed_state()
    if state.num_processes == 1:
        return tensor
    staging = torch.device(via) if via is not None else None
    if tensor.device.type == "cpu" and staging is not None and staging.type != "cpu" and torch.distributed.get_backend() == "nccl":
        for piece in tensor.view(-1).split(1 << 26):
            staged = piece.to(staging)
            torch.distributed.all_reduce(staged, op=torch.distributed.ReduceOp.SUM)
            piece.copy_(staged)
    else:
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor
