"""densekit changes torch's and BLAS's thread counts only while it computes: after exact_search, after
each ExactSearcher.add (so an encoder may run between two adds) and after map_on_workers, the caller's
settings are exactly what they were, also when the call raises."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from densekit.errors import InputError
from densekit.modeling.cpu_workers import map_on_workers
from densekit.search import ExactSearcher, exact_search
from densekit.search import topk as topk_module


def blas_threads(process_wide: bool = False) -> dict[str, int]:
    """BLAS thread counts by library. ``process_wide``: only pthreads builds (numpy's OpenBLAS, which the
    search uses); an OpenMP build (e.g. faiss's) reports the *calling thread's* OpenMP setting."""
    return {info["filepath"]: info["num_threads"] for info in threadpool_info()
            if info["user_api"] == "blas" and (not process_wide or info.get("threading_layer") == "pthreads")}


@pytest.fixture()
def caller_settings():
    """The caller runs 3 torch threads and 3 BLAS threads (neither is densekit's choice of 1 or 2)."""
    queries, corpus = data()
    exact_search(queries, corpus, 5)  # loads every library the search loads (numba pulls in scipy's BLAS)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    with threadpool_limits(3, user_api="blas"):
        assert blas_threads() and set(blas_threads().values()) == {3}
        yield 3, blas_threads()
    torch.set_num_threads(before)


def data(nq: int = 40, n: int = 9000, dim: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((nq, dim), dtype=np.float32), rng.standard_normal((n, dim), dtype=np.float32)


@pytest.mark.parametrize("threads", [1, 2])
def test_exact_search_restores_torch_and_blas_threads_also_on_error(caller_settings, threads: int) -> None:
    torch_threads, blas = caller_settings
    queries, corpus = data()
    exact_search(queries, corpus, 5, threads=threads)
    assert (torch.get_num_threads(), blas_threads()) == (torch_threads, blas)
    corpus[7000, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        exact_search(queries, corpus, 5, threads=threads)
    assert (torch.get_num_threads(), blas_threads()) == (torch_threads, blas)


def test_searcher_sets_single_threads_only_inside_add(caller_settings, monkeypatch) -> None:
    torch_threads, blas = caller_settings
    seen: list[tuple[int, dict[str, int]]] = []
    real = topk_module._Worker.add_chunk

    def spy(self, docs, offset):
        if threading.current_thread() is not threading.main_thread():  # once per worker and piece
            seen.append((torch.get_num_threads(), blas_threads(process_wide=True)))
        return real(self, docs, offset)

    monkeypatch.setattr(topk_module._Worker, "add_chunk", spy)
    queries, corpus = data()
    with ExactSearcher(queries, 5, threads=2) as searcher:
        for start in range(0, len(corpus), 3000):
            searcher.add(start, corpus[start:start + 3000])
            # between two adds the caller (e.g. an encoder) has its own settings back
            assert (torch.get_num_threads(), blas_threads()) == (torch_threads, blas)
        bad = corpus[:100].copy()
        bad[5, 0] = np.inf * 0
        with pytest.raises(InputError, match="NaN"):
            searcher.add(len(corpus), bad)
        assert (torch.get_num_threads(), blas_threads()) == (torch_threads, blas)
    assert (torch.get_num_threads(), blas_threads()) == (torch_threads, blas)
    assert seen and all(blas_inside and set(blas_inside.values()) == {1} for _, blas_inside in seen)
    assert all(torch_inside == 1 for torch_inside, _ in seen)


@pytest.mark.parametrize("per_worker", [1, 2])
def test_map_on_workers_restores_threads_and_waits_for_every_item_when_one_raises(caller_settings,
                                                                                  per_worker: int) -> None:
    torch_threads, blas = caller_settings
    assert map_on_workers(lambda x: x * 2, [1, 2, 3], workers=2, threads_per_worker=per_worker) == [2, 4, 6]
    assert (torch.get_num_threads(), blas_threads()) == (torch_threads, blas)
    finished = []

    def work(item: int) -> int:
        if item == 0:
            raise ValueError("boom")
        time.sleep(0.2)
        finished.append(item)
        return item

    with pytest.raises(ValueError, match="boom"):
        map_on_workers(work, [0, 1], workers=2, threads_per_worker=per_worker)
    assert finished == [1]  # nothing still runs (and changes thread settings) after the call returned
    assert (torch.get_num_threads(), blas_threads()) == (torch_threads, blas)
