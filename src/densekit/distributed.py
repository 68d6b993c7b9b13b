"""Thin helpers over ``torch.distributed``: who am I, how many are we, gather embeddings, split work.

Every helper also works without a process group (one process: rank 0 of a world of 1), so the same
code runs under ``python``, ``torchrun``, ``accelerate`` or ``deepspeed``.

Cross-device negatives and the gradient scale
----------------------------------------------
Contrastive training gets more negatives by scoring against the embeddings of every device.
``gather_with_grad`` all-gathers a tensor; only the local slice keeps its autograd graph, the other
ranks' slices are constants (the approach of DPR, GC-DPR and Tevatron). For the gradients to be the
full-batch ones, gather **both** query and passage embeddings and compute the loss of the whole global
batch on every rank, so every rank holds the same loss ``L``. Rank ``r``'s backward then yields
``dL/d(reps_r) * d(reps_r)/d(theta)``, the part of the true gradient that flows through its own
embeddings; the true gradient is the **sum** of these parts over ranks. DDP **averages** gradients
across ranks, which divides that sum by ``world_size``. Compensation (GC-DPR's "gradient compensation"):
back-propagate ``L * world_size()``; DDP's average then equals the full-batch gradient. (Report the
unscaled ``L``.) Scoring only the local queries against gathered passages is *not* exact: rank ``r``
would miss how other ranks' queries depend on its passages.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from densekit.errors import ConfigError


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group is initialized."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the default group (0 without a group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes in the default group (1 without a group)."""
    return dist.get_world_size() if is_distributed() else 1


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` from every rank along dim 0, in rank order; gradients flow into the local slice.

    The other ranks' slices are detached copies. Ranks may hold different numbers of rows (the last
    batch of an epoch): sizes are exchanged first and the rows padded for the collective, then trimmed.
    See the module docstring for the resulting gradient scale and the ``world_size`` compensation.
    Without a process group ``t`` is returned as is.
    """
    if not is_distributed():
        return t
    world, me = world_size(), rank()
    local = t.contiguous()
    size = torch.tensor([local.shape[0]], device=local.device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s) for s in sizes]
    longest = max(counts)
    padded = local
    if local.shape[0] < longest:
        filler = local.new_zeros((longest - local.shape[0], *local.shape[1:]))
        padded = torch.cat([local, filler], dim=0)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.detach())
    pieces = [part[:count] for part, count in zip(parts, counts)]
    pieces[me] = t  # the local slice, with its graph
    return torch.cat(pieces, dim=0)


def shard_range(n: int, rank: int, world: int) -> range:
    """Contiguous slice of ``range(n)`` for ``rank`` of ``world``; the first ``n % world`` ranks get one more.

    Shards are disjoint, in rank order, and cover ``range(n)`` exactly, so concatenating the per-rank
    results in rank order restores the original order.
    """
    if world < 1 or not 0 <= rank < world or n < 0:
        raise ConfigError(f"shard_range needs n >= 0, world >= 1 and 0 <= rank < world; "
                          f"got n={n}, rank={rank}, world={world}")
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def all_gather_objects(obj, to_all: bool = True):
    """Picklable ``obj`` of every rank, in rank order (numpy arrays, tuples of them...).

    With ``to_all=False`` only rank 0 receives the list; other ranks get ``None`` (saves memory when the
    result is only written out by rank 0). Without a process group: ``[obj]``.
    """
    if not is_distributed():
        return [obj]
    if to_all:
        gathered = [None] * world_size()
        dist.all_gather_object(gathered, obj)
        return gathered
    gathered = [None] * world_size() if rank() == 0 else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if is_distributed():
        dist.barrier()
