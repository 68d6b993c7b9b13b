"""Seeded sampling: one helper for every dataset's groups, and the batch sampler built on it.

Each draw is seeded by (seed, epoch, index), so a group is the same whenever the same example is asked for
in the same epoch (any worker, any process, any order) and changes from one epoch to the next; the batch
sampler (which examples share a batch) is seeded by (seed, epoch) the same way.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from densekit.distributed import shard_range
from densekit.errors import ConfigError


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """A generator private to one example of one epoch."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


def fill_to(items: list, size: int) -> list:
    """Repeat ``items`` in order until there are ``size`` of them (cut when there are more)."""
    if not items:
        return []
    reps = -(-size // len(items))
    return (items * reps)[:size]


class GroupBatchSampler(torch.utils.data.Sampler):
    """Seeded training batches that come from one source each and, optionally, repeat no corpus row.

    Why: a passage twice in one batch is a negative of the query it is positive for (and twice the
    weight as a negative of the others); batches mixing collections give easy, meaningless in-batch
    negatives. This sampler yields lists of dataset indices (a ``batch_sampler``) such that

    * every batch holds examples of one source only (``dataset.sources``, index ranges; one source
      when the dataset has none), and
    * with ``unique_passages``, no corpus row of one example's group (``dataset.group_rows(index,
      epoch)``) is in another example's group of the same batch. Examples are taken in a seeded random
      order; one that collides with the batch being filled waits for a later batch (it keeps its place
      at the front of the queue). Only a group's own repeats (judged negatives drawn with replacement
      for a query that has too few) can remain.

    With ``num_replicas`` processes, batches are formed for the *global* batch (``batch_size x
    num_replicas`` examples: the in-batch negatives of every rank) and each rank yields its contiguous
    slice of it, so uniqueness and the single source hold across devices too. A global batch too small
    to give every rank an example is dropped (and, with ``drop_last``, any global batch that is not full).

    Sources are mixed per epoch: ``proportional`` shuffles all sources' batches together (a batch comes
    from a source with probability proportional to its size, each example once per epoch);
    ``round_robin`` takes one batch of each source in turn, leaving out sources that have run out.

    Everything is drawn from ``(seed, epoch)``; the epoch is the dataset's own (``dataset.epoch``, set by
    the trainer through ``set_epoch``), so the rows compared are exactly those of the groups the
    dataset will return. The same seed and epoch give the same batches in any process, and a resumed
    run sees the same order (the trainer skips the batches already trained).
    """

    def __init__(self, dataset: Any, batch_size: int, *, seed: int = 0, unique_passages: bool = True,
                 mixing: str | None = None, num_replicas: int = 1, rank: int = 0, drop_last: bool = False) -> None:
        if batch_size < 1 or num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ConfigError(f"GroupBatchSampler needs batch_size >= 1 and 0 <= rank < num_replicas; got "
                              f"batch_size={batch_size}, rank={rank}, num_replicas={num_replicas}.")
        mixing = mixing or getattr(dataset, "sampling", None) or "proportional"
        if mixing not in ("proportional", "round_robin"):
            raise ConfigError(f"mixing {mixing!r} is unknown; use proportional or round_robin.")
        self.dataset = dataset
        # not named batch_size: accelerate's BatchSamplerShard would then drop or refill batches of another size
        self.per_device_batch_size = int(batch_size)
        self.seed = int(seed)
        self.unique_passages = bool(unique_passages)
        self.mixing = mixing
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """The epoch for a dataset without its own ``epoch`` attribute."""
        self.epoch = int(epoch)

    def current_epoch(self) -> int:
        return int(getattr(self.dataset, "epoch", self.epoch))

    def sources(self) -> list[range]:
        return list(getattr(self.dataset, "sources", None) or [range(len(self.dataset))])

    def global_batches(self, epoch: int) -> list[list[int]]:
        """Every global batch of ``epoch``, in order (computed once per epoch)."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        size = self.per_device_batch_size * self.num_replicas
        per_source = []
        for number, source in enumerate(self.sources()):
            order = [source[i] for i in example_rng(self.seed, epoch, number).permutation(len(source))]
            batches = self._unique_batches(order, size, epoch) if self.unique_passages else \
                [order[i:i + size] for i in range(0, len(order), size)]
            per_source.append([b for b in batches if len(b) >= self.num_replicas and
                               (len(b) == size or not self.drop_last)])
        batches = self._mix(per_source, epoch)
        self._cache = (epoch, batches)
        return batches

    def _unique_batches(self, order: list[int], size: int, epoch: int) -> list[list[int]]:
        """Fill batches in ``order``, deferring an example whose rows are already in the batch."""
        rows = {index: self._rows(index, epoch) for index in order}
        batches, queue = [], order
        while queue:
            batch, used, deferred = [], set(), []
            for position, index in enumerate(queue):
                if len(batch) == size:
                    deferred.extend(queue[position:])
                    break
                if used.isdisjoint(rows[index]):
                    batch.append(index)
                    used.update(rows[index])
                else:
                    deferred.append(index)
            batches.append(batch)
            queue = deferred
        return batches

    def _rows(self, index: int, epoch: int) -> set[int]:
        if hasattr(self.dataset, "group_rows"):
            return set(np.asarray(self.dataset.group_rows(index, epoch)).tolist())
        return set(self.dataset[index]["passage_row"])  # reads texts too: slower, same rows

    def _mix(self, per_source: list[list[list[int]]], epoch: int) -> list[list[int]]:
        if self.mixing == "round_robin":
            mixed = []
            for turn in range(max((len(b) for b in per_source), default=0)):
                mixed.extend(batches[turn] for batches in per_source if turn < len(batches))
            return mixed
        owners = np.concatenate([np.full(len(b), s, np.int64) for s, b in enumerate(per_source)] or [[]])
        owners = np.random.default_rng([self.seed, epoch, len(per_source), 1]).permutation(owners)
        taken = [0] * len(per_source)
        mixed = []
        for source in owners.astype(int):
            mixed.append(per_source[source][taken[source]])
            taken[source] += 1
        return mixed

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches(self.current_epoch()):
            yield [batch[i] for i in shard_range(len(batch), self.rank, self.num_replicas)]

    def __len__(self) -> int:
        return len(self.global_batches(self.current_epoch()))
