"""Run independent pieces of model work side by side on CPU threads, one intra-op thread each.

Why: intra-op threading splits every one of a transformer layer's ~15 ops across the cores and waits at a
barrier after each; for the small matrices of one chunk that costs more than it gives, and on a shared
machine one descheduled thread stalls the others. Giving each core its own chunk, single-threaded, has no
barriers (measured: 124 vs ~100 GFLOP/s for MiniLM forwards on 2 AVX2 cores). torch ops release the
GIL, so Python threads are enough. Used by fast inference and by the gradient cache.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TypeVar

import torch

Item = TypeVar("Item")
Result = TypeVar("Result")

_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    """One shared executor per worker count, kept at module level so models stay picklable/copyable."""
    with _pools_lock:
        pool = _pools.get(workers)
        if pool is None:
            pool = _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="densekit-worker")
        return pool


def map_on_workers(fn: Callable[[Item], Result], items: Iterable[Item], workers: int,
                   threads_per_worker: int = 1) -> list[Result]:
    """``[fn(item) for item in items]``, computed on ``workers`` threads with ``threads_per_worker``
    intra-op threads each; results in input order. The caller's torch thread count is restored after,
    also when ``fn`` raises: the call then waits for the other items before raising the first error.

    ``fn`` runs on a worker thread: thread-local torch state (grad mode, autocast, inference mode) is the
    worker's, not the caller's, so ``fn`` must enter what it needs itself. With ``workers=1`` it runs on the
    calling thread, with the caller's thread count.
    """
    if workers == 1:
        return [fn(item) for item in items]

    def run(item: Item) -> Result:
        if torch.get_num_threads() != threads_per_worker:  # also runs torch's per-thread lazy init first
            torch.set_num_threads(threads_per_worker)
        return fn(item)

    threads = torch.get_num_threads()
    futures = [_pool(workers).submit(run, item) for item in items]
    try:
        wait(futures)  # every item, also when one fails: none may run on (and change settings) after we return
    finally:
        torch.set_num_threads(threads)  # workers changed the process-wide default; restore it
    return [future.result() for future in futures]  # raises the first failure, in input order
