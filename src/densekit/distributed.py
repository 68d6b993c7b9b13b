"""Thin helpers over ``torch.distributed``: who am I, how many are we, gather embeddings, split work.

Arrays go through tensor collectives (:func:`all_gather_rows`, :func:`merge_topk_across_ranks`), not
pickles: ``all_gather_object`` pickles the data, copies it again into a byte tensor and back on every
rank, which for 500,000 query vectors is several GB of copies and a long pause.

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

from typing import Optional

import numpy as np
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


# numpy dtypes that all_gather_rows can send, by code (sent with the shapes, so a rank without rows
# learns the dtype and trailing shape from the others)
_DTYPES = (np.float32, np.float64, np.float16, np.int64, np.int32, np.uint8, np.bool_)
_MAX_DIMS = 4
# merge_topk_across_ranks moves at most this many (score, index) pairs per rank and collective
_MERGE_ELEMENTS = 1 << 22


def _collective_device() -> torch.device:
    """NCCL only moves CUDA tensors; gloo (and the others) CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_rows(array: Optional[np.ndarray]) -> np.ndarray:
    """Rows of ``array`` from every rank, concatenated in rank order, on every rank (tensor collectives).

    Ranks may hold different numbers of rows: row counts (with dtype and trailing shape) are exchanged
    first, each rank's rows are padded to the longest for the ``all_gather`` and the padding is removed.
    A rank with nothing to send passes ``None`` (or zero rows); dtype and trailing shape are then
    taken from the other ranks and must agree among them. Peak extra memory: ``world x longest`` rows.
    Without a process group: ``array`` itself.
    """
    if not is_distributed():
        if array is None:
            raise ConfigError("all_gather_rows got None outside a process group: there are no rows at all.")
        return np.asarray(array)
    local = None if array is None else np.ascontiguousarray(array)
    meta = torch.full((2 + _MAX_DIMS,), -1, dtype=torch.int64)
    if local is not None:
        if local.ndim < 1 or local.ndim > _MAX_DIMS + 1 or local.dtype.type not in _DTYPES:
            raise ConfigError(f"all_gather_rows sends arrays of 1 to {_MAX_DIMS + 1} dimensions and dtype in "
                              f"{[np.dtype(t).name for t in _DTYPES]}; got {local.dtype} {local.shape}.")
        meta[0], meta[1] = _DTYPES.index(local.dtype.type), local.shape[0]
        meta[2:2 + local.ndim - 1] = torch.tensor(local.shape[1:], dtype=torch.int64)
    device = _collective_device()
    metas = [torch.empty_like(meta, device=device) for _ in range(world_size())]
    dist.all_gather(metas, meta.to(device))
    metas = [m.cpu().tolist() for m in metas]
    senders = {(m[0], tuple(d for d in m[2:] if d >= 0)) for m in metas if m[0] >= 0}
    if len(senders) != 1:
        raise ConfigError("all_gather_rows: ranks sent arrays of different dtypes or trailing shapes "
                          f"({sorted(senders)})" if senders else "all_gather_rows: every rank sent None.")
    code, trailing = senders.pop()
    counts = [max(m[1], 0) for m in metas]
    longest = max(counts)
    dtype = torch.from_numpy(np.empty(0, _DTYPES[code])).dtype
    out = torch.zeros((len(counts) * longest, *trailing), dtype=dtype, device=device)
    parts = list(out.split(longest)) if longest else [out] * len(counts)
    if local is not None and len(local):
        if device.type == "cpu":
            parts[rank()].numpy()[:len(local)] = local  # no torch.from_numpy: it refuses read-only memmaps
        else:
            parts[rank()][:len(local)] = torch.from_numpy(np.array(local)).to(device)
    if longest:
        dist.all_gather(parts, parts[rank()].clone())
    out = out.cpu().numpy()
    position = 0  # drop the padding in place: every part moves down (overlapping copies are safe in numpy)
    for r, count in enumerate(counts):
        out[position:position + count] = out[r * longest:r * longest + count]
        position += count
    return out[:position]


def merge_topk_across_ranks(scores: np.ndarray, indices: np.ndarray, topk: int,
                            to_all: bool = True) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """Exact top-k of the same queries over every rank's corpus shard, from each rank's partial top-k.

    ``scores [nq, k]`` / ``indices [nq, k]`` hold global corpus indices (padding ``-inf`` / ``-1``
    allowed); every rank must pass the same ``nq`` and ``k``. The lists are gathered as tensors (all
    ranks with ``to_all``, else rank 0 only) a slice of queries at a time, so the extra memory stays at
    about ``world x`` 48 MB, and merged with :func:`densekit.search.merge_topk`: the result equals one
    process searching the whole corpus, ties to the lower corpus index. With ``to_all=False`` other
    ranks get ``None``. Without a process group: the rank's own lists, sorted and cut to ``topk``.
    """
    from densekit.search.topk import merge_topk  # search imports torch-heavy modules; keep this module light

    scores = np.ascontiguousarray(scores, dtype=np.float32)
    indices = np.ascontiguousarray(indices, dtype=np.int64)
    if scores.ndim != 2 or scores.shape != indices.shape:
        raise ConfigError(f"scores and indices must be [num_queries, k] of one shape; got {scores.shape} "
                          f"and {indices.shape}.")
    if not is_distributed():
        return merge_topk([(scores, indices)], topk=topk)
    device, world, root = _collective_device(), world_size(), rank() == 0
    shape = torch.tensor(scores.shape, dtype=torch.int64, device=device)
    shapes = [torch.empty_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape)
    if len({tuple(s.tolist()) for s in shapes}) != 1:
        raise ConfigError(f"merge_topk_across_ranks: ranks hold top-k lists of different shapes "
                          f"{[tuple(s.tolist()) for s in shapes]}; every rank must search all queries.")
    nq, k = scores.shape
    receives = to_all or root
    out_scores = np.empty((nq, topk), np.float32) if receives else None
    out_indices = np.empty((nq, topk), np.int64) if receives else None
    step = max(1, _MERGE_ELEMENTS // max(k, 1))
    for start in range(0, nq, step):
        parts = []
        for local in (scores[start:start + step], indices[start:start + step]):
            tensor = torch.from_numpy(local).to(device)
            if to_all:
                gathered = [torch.empty_like(tensor) for _ in range(world)]
                dist.all_gather(gathered, tensor)
            else:
                gathered = [torch.empty_like(tensor) for _ in range(world)] if root else None
                dist.gather(tensor, gathered, dst=0)
            parts.append(gathered)
        if receives:
            merged = merge_topk([(s.cpu().numpy(), i.cpu().numpy()) for s, i in zip(*parts)], topk=topk)
            out_scores[start:start + step], out_indices[start:start + step] = merged
    if not receives:
        return None
    return out_scores, out_indices
