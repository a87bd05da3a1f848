"""Data-parallel calibration on torch.distributed (launched with torchrun).

Every rank holds the whole model and processes its own shard of the calibration tokens or
images; the statistics the repairs solve from — activation second moments, the normal
equations AᵀA and AᵀY of the least-squares refit, BatchNorm running moments — are summed
over ranks at each layer boundary, so every rank takes the same decisions and writes the
same weights as one process would on all the data. Without torchrun (or with one process)
every function here is the identity, so plain `tuneless compress` is unchanged.
"""

from __future__ import annotations

import atexit
import os
from datetime import timedelta

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on the rank that writes outputs and prints (rank 0, or a lone process)."""
    return world()[0] == 0


def init_from_env(device: str = "cpu") -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1 in the environment): gloo
    on CPU, nccl on CUDA. Returns whether this process is one of several."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if str(device).startswith("cuda") else "gloo")
        atexit.register(_leave)
    return True


def _leave() -> None:
    """Meet the other ranks, then close the process group, before the interpreter exits: a
    rank that exits while a peer's gloo connections are still open can abort both
    (SIGABRT after the work was done, about one torchrun in ten on this machine). A rank
    whose peers never arrive (one failed) gives up after a minute."""
    if not dist.is_initialized():
        return
    try:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=timedelta(seconds=60))
        else:
            dist.barrier()
    except Exception:  # noqa: BLE001 — a peer failed: close anyway
        pass
    dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (nothing on one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def from_main(obj):
    """Rank 0's `obj` on every rank (itself on one process): e.g. a folder only it made."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (and return it); the identity on one process."""
    if world()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def my_range(n: int, what: str = "calibration rows") -> range:
    """This rank's contiguous block of range(n); the blocks of all ranks, in rank order,
    are range(n). Every rank needs at least one item."""
    rank, size = world()
    if n < size:
        from tuneless.errors import TunelessError

        raise TunelessError(f"{n} {what} cannot be shared by {size} ranks")
    return range(n * rank // size, n * (rank + 1) // size)


def shard(rows: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous block of rows (calibration sequences or images); the blocks
    of all ranks, in rank order, are the rows in order. Every rank needs at least one."""
    if world()[1] == 1:
        return rows
    mine = my_range(len(rows))
    return rows[mine.start:mine.stop]


def my_share(n: int) -> int:
    """How many of n batches `my_batches` gives this rank."""
    rank, size = world()
    return len(range(rank, n, size))


def my_batches(batches):
    """This rank's share of a stream of batches: every world-size-th one from its rank on
    (the batches all ranks see together are the stream's)."""
    rank, size = world()
    for i, batch in enumerate(batches):
        if i % size == rank:
            yield batch


def merge_batchnorm_stats(bns) -> None:
    """Make each BatchNorm's cumulative running statistics (momentum=None) those of all
    ranks' batches together: the per-rank averages weighted by their batch counts."""
    if world()[1] == 1:
        return
    for bn in bns:
        n = bn.num_batches_tracked.double().reshape(1)
        mean = bn.running_mean.double() * n
        var = bn.running_var.double() * n
        all_sum(n), all_sum(mean), all_sum(var)
        total = n.clamp(min=1)
        bn.running_mean.copy_((mean / total).to(bn.running_mean.dtype))
        bn.running_var.copy_((var / total).to(bn.running_var.dtype))
        bn.num_batches_tracked.fill_(int(n.item()))
