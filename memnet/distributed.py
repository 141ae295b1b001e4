"""Multi-process training on torch's own engine: process-group setup from the variables
``torchrun`` sets, rank helpers, the backend choice and batch sharding.

A script launched as ``torchrun --nproc_per_node N -m <module>`` gets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT in its environment; :func:`init_from_env` turns
them into a process group (gloo on CPU, nccl on CUDA, one GPU per process). Without
them, or with WORLD_SIZE=1, nothing is initialised and every helper answers for a
single process (rank 0 of 1), so the same code runs unchanged either way.

:class:`memnet.train.Trainer` calls :func:`init_from_env` itself, wraps the model in
DistributedDataParallel when a group of more than one process exists, gives each rank
its shard of every global batch, and writes logs and checkpoints from rank 0 only.
"""
from __future__ import annotations

import atexit
import datetime
import os
from typing import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["launched_world_size", "local_rank", "backend_for", "init_from_env", "is_distributed", "rank",
           "world_size", "is_main", "barrier", "cleanup", "shard", "all_reduce_sum"]


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


def launched_world_size() -> int:
    """WORLD_SIZE as set by torchrun (1 when the variable is absent)."""
    n = _env_int("WORLD_SIZE", 1)
    if n < 1:
        raise ValueError(f"environment variable WORLD_SIZE must be >= 1, got {n}")
    return n


def local_rank() -> int:
    """This process's index on its machine: LOCAL_RANK as set by torchrun (0 when absent)."""
    return _env_int("LOCAL_RANK", 0)


def backend_for(device: str | torch.device) -> str:
    """The collective backend for `device`: "nccl" for CUDA, "gloo" for everything else."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def is_distributed() -> bool:
    """True when a process group of more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank in the group (0 without one)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes in the group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """True on the process that logs, prints and writes files: rank 0, or the only process."""
    return rank() == 0


def init_from_env(device: str | torch.device = "auto", backend: str | None = None,
                  timeout_s: float = 600.0) -> bool:
    """Initialise the default process group from torchrun's environment variables.

    Does nothing (and returns False) when the group already exists or when the process was
    not launched with WORLD_SIZE > 1; returns True when it created the group. `backend`
    defaults to :func:`backend_for` the device ("auto" means CUDA when available); on CUDA
    the process is pinned to GPU ``LOCAL_RANK``. The group is destroyed at exit (or call
    :func:`cleanup`).
    """
    if backend is not None and backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be None, 'gloo' or 'nccl', got {backend!r}")
    if not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise ValueError(f"timeout_s must be a number > 0, got {timeout_s!r}")
    if not dist.is_available() or dist.is_initialized() or launched_world_size() == 1:
        return False
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise ValueError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {name} is not set: "
                             "launch with torchrun (or set RANK, MASTER_ADDR and MASTER_PORT)")
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    backend = backend or backend_for(dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev.index if dev.index is not None else local_rank())
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    atexit.register(cleanup)
    return True


def barrier() -> None:
    """Wait for every process of the group (a no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Destroy the default process group if there is one (safe to call more than once)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(tensors: Sequence[Tensor], rank_: int | None = None, world: int | None = None) -> tuple[Tensor, ...]:
    """Rank `rank_`'s contiguous share of a global batch: rows ``[r*b, (r+1)*b)`` of each tensor,
    with ``b = rows / world``. Defaults to this process's rank and the group's size.

    Every tensor must have the same number of rows, divisible by the number of processes
    (equal shards keep the per-rank mean losses and DDP's gradient average exact).
    """
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    if w < 1 or not 0 <= r < w:
        raise ValueError(f"shard: need 0 <= rank < world size, got rank {r} of {w}")
    if not tensors or not all(isinstance(t, Tensor) and t.dim() >= 1 for t in tensors):
        raise TypeError("shard: expected a non-empty sequence of tensors with a batch dimension")
    rows = tensors[0].shape[0]
    if any(t.shape[0] != rows for t in tensors):
        raise ValueError(f"shard: every tensor needs the same batch size, got {[t.shape[0] for t in tensors]}")
    if rows % w != 0:
        raise ValueError(f"shard: the global batch ({rows} rows) must be divisible by the number of "
                         f"processes ({w}); choose a batch_size that is a multiple of the world size")
    b = rows // w
    return tuple(t[r * b:(r + 1) * b] for t in tensors)


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum of `x` over the processes (in place, no gradient); `x` itself without a group."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x
