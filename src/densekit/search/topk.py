"""Exact inner-product top-k search that streams over the corpus in chunks.

Why streaming: a corpus of 10M x 768 float32 vectors is 30 GB, more than most machines hold, and the
full query x corpus score matrix is bigger still. Here the corpus is read one chunk at a time (from a
numpy array, a memory-mapped file, a torch tensor or any iterable of ``(offset, chunk)`` blocks) and each
block of scores is folded into a running top-k per query (:class:`FastResultHeapq`), so peak memory is
set by the chunk and block sizes, not by the corpus size.

Why it is fast: like a heap, the running top-k keeps each query's k-th best score, and after the first
blocks almost no score reaches it; finding those few takes one cheap pass over each score block, so the
search costs little more than its matrix products (see :func:`_threshold_candidates`).

Ordering contract (the same everywhere in densekit, so runs are reproducible and shards merge exactly):
results are sorted by score, descending; **equal scores are ordered by the lower corpus index first**;
when fewer than ``k`` documents exist, rows are padded with score ``-inf`` and index ``-1``.

Example::

    >>> import numpy as np
    >>> from densekit.search import exact_search
    >>> q = np.eye(2, 3, dtype=np.float32)
    >>> scores, ids = exact_search(q, np.eye(3, dtype=np.float32), topk=2)
    >>> ids.tolist()
    [[0, 1], [1, 0]]
"""
from __future__ import annotations

import contextlib
import ctypes
import mmap
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator, Protocol, Sequence, Union, runtime_checkable

import numpy as np
import torch

from densekit.errors import ConfigError, InputError

Embeddings = Union[np.ndarray, torch.Tensor]
CorpusSource = Union[np.ndarray, torch.Tensor, Iterable[tuple[int, Embeddings]]]

_LOW_MASK = 2**32 - 1  # corpus indices must fit below this (see _order_keys)


def _order_keys(scores: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """One int64 per candidate whose integer order is (score descending, index ascending).

    High 32 bits: the float32 score's bit pattern made order-preserving as a signed int (negative
    floats have their magnitude bits flipped). Low 32 bits: ``2**32 - 1 - index``, so a lower index is
    a larger key, and padding (index ``-1``) gets 0, below every real document with the same score.
    A single ``torch.topk`` over these keys is then an exact, tie-free selection; this is much faster
    than two stable sorts on CPU.
    """
    bits = (scores + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into +0.0 so both zeros tie
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    low = torch.where(indices < 0, torch.zeros_like(indices), _LOW_MASK - indices)
    return (ordered.to(torch.int64) << 32) | low


def _sort_candidates(scores: torch.Tensor, indices: torch.Tensor, k: int, ordered: bool = True
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the best ``k`` of ``[nq, c]`` candidates by (score desc, index asc), padded to ``k``.

    ``ordered=False`` returns the same set in no particular order, which is several times cheaper
    (``torch.topk`` then skips its final sort).
    """
    nq, c = scores.shape
    if ordered and c == k and k > 1 and bool((scores[:, :-1] > scores[:, 1:]).all()):
        return scores, indices  # already strictly descending: the order is unique (the common case)
    if c < k:
        pad = k - c
        scores = torch.cat([scores, scores.new_full((nq, pad), float("-inf"))], dim=1)
        indices = torch.cat([indices, indices.new_full((nq, pad), -1)], dim=1)
    if indices.numel() and int(indices.max()) >= _LOW_MASK:
        raise ConfigError(f"corpus indices must be below {_LOW_MASK}; got {int(indices.max())}.")
    best = torch.topk(_order_keys(scores, indices), k, dim=1, largest=True, sorted=ordered).indices
    return scores.gather(1, best), indices.gather(1, best)


def _grouped_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top ``k + 1`` values and columns of each row, sorted, without a ``topk`` over the full width.

    Why: ``torch.topk`` costs a few ns per element on CPU, a third of the whole search. Instead view
    the ``m`` columns as a ``[g, w]`` grid (column ``t*w + j`` is cell ``(t, j)``) and take each grid
    column's maximum with one cheap vectorized ``amax``. If the k-th best of these ``w`` maxima is
    strictly above the (k+1)-th, every element outside the k best grid columns is beaten by ``k``
    maxima, so the top-k lies among those ``k*g`` cells (plus the ungridded tail): a ``topk`` over
    ``k*g`` instead of ``m`` values. Rows where the two maxima tie are flagged in the returned mask
    (``False``) so the caller redoes them exactly.
    """
    nq, m = scores.shape
    g = int((m / k) ** 0.5)  # balances the w maxima against the k*g candidates
    w = m // g
    grid = scores[:, : g * w].unflatten(1, (g, w))
    gvals, gids = torch.topk(grid.amax(dim=1), k + 1, dim=1, largest=True, sorted=True)
    separated = gvals[:, k - 1] != gvals[:, k]
    subset = grid.gather(2, gids[:, None, :k].expand(nq, g, k)).reshape(nq, g * k)
    if g * w < m:
        subset = torch.cat([subset, scores[:, g * w:]], dim=1)
    values, pos = torch.topk(subset, k + 1, dim=1, largest=True, sorted=True)
    grid_cols = (pos // k) * w + gids.gather(1, pos % k)
    cols = torch.where(pos < g * k, grid_cols, pos - g * k + g * w)
    return values, cols, separated


def _chunk_candidates(scores: torch.Tensor, indices: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact top-``k`` (by score desc, index asc) of each row of a score block, in no tie order.

    ``indices`` holds the corpus index of every column (``[m]``). ``torch.topk`` leaves the choice among
    equal scores unspecified, so we ask for ``k + 1``: when the k-th and (k+1)-th values differ the
    top-k set is unique; only rows where they are equal (a tie across the cut, e.g. duplicate
    documents) are redone over the full row with the exact tie-free keys.
    """
    nq, m = scores.shape
    if m <= k:
        if torch.isnan(scores).any():
            raise _nan_error()
        return scores.clone(), indices.expand(nq, m)  # a copy: callers buffer it, the block is reused
    if m >= 16 * k:  # wide enough for the grid pre-selection to pay (g >= 4)
        values, positions, separated = _grouped_topk(scores, k)
    else:
        values, positions = torch.topk(scores, k + 1, dim=1, largest=True, sorted=True)
        separated = None
    if torch.isnan(values[:, 0]).any():  # topk/amax rank NaN above everything: a NaN would be first
        raise _nan_error()
    redo = values[:, k - 1] == values[:, k]
    if separated is not None:
        redo |= ~separated
    values, positions = values[:, :k], positions[:, :k]
    rows = redo.nonzero().flatten()
    if rows.numel():
        full = scores[rows]
        exact = torch.topk(_order_keys(full, indices.expand_as(full)), k, dim=1).indices
        values, positions = values.clone(), positions.clone()
        values[rows], positions[rows] = full.gather(1, exact), exact
    return values, indices[positions]


def _nan_error() -> InputError:
    return InputError("similarity scores contain NaN; the query or corpus embeddings contain NaN or inf.",
                      fix="check the encoder output (e.g. fp16 overflow) and re-encode.")


_FILTER_GROUPS = 8  # columns per grid cell in the threshold pre-filter (see _threshold_candidates)
_HEAVY_ROW = 4  # a row with more than this many x topk candidates in one block gets its own topk
_FULL_TOPK_FRACTION = 8  # if more than 1/8 of a block passes the threshold, a full per-row topk is cheaper


def _threshold_candidates(scores: torch.Tensor, threshold: torch.Tensor, k: int
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """``(rows, cols, values)`` of every score ``>= threshold[row]``, grouped by row; ``None`` if too many.

    Why: once a query has ``k`` results, only scores at or above its current k-th best can still enter,
    and after the first blocks that is a tiny fraction. Finding them must cost far less than the
    matmul that made the block, so there is one cheap pass over the block: view the ``m`` columns as
    a ``[g, w]`` grid (column ``t*w + j`` is cell ``(t, j)``) and take each grid column's maximum (a
    vectorized ``amax``; it propagates NaN, which is reported). Only grid columns whose maximum
    reaches the threshold are read again. If a row has no threshold yet (``-inf``: the first block),
    the k-th largest of its ``w`` grid maxima is one: ``k`` distinct scores are at least that high.
    ``>=`` keeps scores equal to the threshold; the merge orders such ties by index, so the result
    stays exact.
    """
    nq, m = scores.shape
    g = _FILTER_GROUPS if m >= 8 * _FILTER_GROUPS else 1
    w = m // g
    grid = scores[:, : g * w].unflatten(1, (g, w))
    maxima = grid.amax(dim=1) if g > 1 else scores
    tail = scores[:, g * w:]
    if torch.isnan(maxima.amax()) or (tail.numel() and torch.isnan(tail).any()):
        raise _nan_error()
    if w >= k and bool(torch.isneginf(threshold).any()):
        threshold = torch.maximum(threshold, torch.topk(maxima, k, dim=1, sorted=False).values.amin(dim=1))
    budget = nq * m // _FULL_TOPK_FRACTION
    cell_rows, cell_cols = (maxima >= threshold[:, None]).nonzero(as_tuple=True)
    if g == 1:
        rows, cols = cell_rows, cell_cols
    elif cell_rows.numel() * g <= 2 * budget:  # few grid columns pass: read back only their members
        members = grid.transpose(1, 2)[cell_rows, cell_cols]  # [cells, g]
        cell, t = (members >= threshold[cell_rows, None]).nonzero(as_tuple=True)
        rows, cols, values = cell_rows[cell], cell_cols[cell] + t * w, members[cell, t]
        if tail.numel():  # the last m % g columns are not in the grid: compare them directly
            tail_rows, tail_cols = (tail >= threshold[:, None]).nonzero(as_tuple=True)
            order = torch.sort(torch.cat([rows, tail_rows]), stable=True).indices
            rows = torch.cat([rows, tail_rows])[order]
            cols = torch.cat([cols, tail_cols + g * w])[order]
            values = torch.cat([values, tail[tail_rows, tail_cols]])[order]
        return rows, cols, values
    else:  # many grid columns pass: compare every score directly
        rows, cols = (scores >= threshold[:, None]).nonzero(as_tuple=True)
    if rows.numel() > budget:
        return None
    return rows, cols, scores[rows, cols]


def _pad_by_row(rows: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, nq: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scatter row-grouped candidates into ``[nq, width]`` (padding ``-inf`` / ``-1``); also per-row counts."""
    counts = torch.bincount(rows, minlength=nq)
    width = int(counts.max()) if rows.numel() else 0
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(rows.numel(), device=rows.device) - starts[rows]
    padded_scores = values.new_full((nq, width), float("-inf"))
    padded_indices = indices.new_full((nq, width), -1)
    padded_scores[rows, pos] = values
    padded_indices[rows, pos] = indices
    return padded_scores, padded_indices, counts


class FastResultHeapq:
    """Running top-k (scores float32, corpus indices int64) for a batch of queries, across corpus chunks.

    Same name and role as Trove's ``FastResultHeapq``: rather than a Python heap per query, each call to
    :meth:`add` takes a whole ``[num_queries, chunk]`` score block, so the work is a few large tensor
    ops on the tensors' device (CPU or CUDA alike). Like a heap, it keeps each query's k-th best score
    as a threshold: a block is only scanned for scores at or above it (one cheap pass, see
    :func:`_threshold_candidates`), and those few candidates are buffered and merged into the running
    top-k once about ``topk`` of them are waiting. A threshold from the last merge is a little low
    but still valid (the true k-th best only rises), so results are exact, ties going to the lower
    corpus index. Blocks where many scores pass go through a full per-row ``topk`` instead.

    Args:
        topk: number of results to keep per query.
        device: where to keep the running results; default: the device of the first scores added.
        merge_every: merge after at most this many blocks even if few candidates are waiting.
    """

    def __init__(self, topk: int, device: torch.device | str | None = None, merge_every: int = 16) -> None:
        if not isinstance(topk, int) or topk < 1:
            raise ConfigError(f"topk must be a positive integer, got {topk!r}.")
        self.topk = topk
        self.device = torch.device(device) if device is not None else None
        self.merge_every = max(1, merge_every)
        self._scores: torch.Tensor | None = None  # [nq, topk] merged, in no order, padded -inf / -1
        self._indices: torch.Tensor | None = None
        self._threshold: torch.Tensor | None = None  # [nq] k-th best merged score (-inf: fewer than k)
        self._sorted = True
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # [nq, width_i] candidates
        self._num_queries: int | None = None

    def add(self, scores: torch.Tensor, indices: torch.Tensor | Sequence[int] | None = None, *,
            offset: int = 0) -> None:
        """Fold a block of scores into the running top-k.

        Args:
            scores: ``[num_queries, m]`` scores of every query against ``m`` documents.
            indices: corpus indices (``>= 0``) of the ``m`` columns; when omitted the columns are
                documents ``offset .. offset + m - 1``.
            offset: corpus index of the first column, used when ``indices`` is omitted.
        """
        if scores.dim() != 2:
            raise ConfigError(f"scores must be 2-D [num_queries, docs], got shape {tuple(scores.shape)}.")
        device = self.device or (self._scores.device if self._scores is not None else scores.device)
        scores = scores.to(device=device, dtype=torch.float32)
        nq, m = scores.shape
        if self._num_queries is not None and self._num_queries != nq:
            raise ConfigError(f"scores have {nq} query rows but earlier blocks had {self._num_queries}.")
        if self._scores is None:  # all padding: an empty corpus is valid
            self._num_queries = nq
            self._scores = torch.full((nq, self.topk), float("-inf"), device=device)
            self._indices = torch.full((nq, self.topk), -1, device=device, dtype=torch.int64)
            self._threshold = self._scores[:, 0]
        if m == 0:
            return
        if indices is None:
            indices = torch.arange(offset, offset + m, device=device, dtype=torch.int64)
        else:
            indices = torch.as_tensor(indices, device=device, dtype=torch.int64)
            if indices.shape != (m,):
                raise ConfigError(f"indices of shape {tuple(indices.shape)} do not match scores {tuple(scores.shape)}.")
        found = _threshold_candidates(scores, self._threshold, self.topk)
        if found is None:  # many pass (e.g. adversarial, rising scores): a full per-row top-k is cheaper
            self._pending.append(_chunk_candidates(scores, indices, self.topk))
        else:
            rows, cols, values = found
            cand_scores, cand_indices, counts = _pad_by_row(rows, values, indices[cols], nq)
            cap = _HEAVY_ROW * self.topk
            if cand_scores.shape[1] > cap:  # a few rows with many candidates: cut those to k first
                heavy = (counts > cap).nonzero().flatten()
                heavy_scores, heavy_indices = _chunk_candidates(scores[heavy], indices, self.topk)
                cand_scores, cand_indices = cand_scores[:, :cap].clone(), cand_indices[:, :cap].clone()
                cand_scores[heavy], cand_indices[heavy] = float("-inf"), -1
                cand_scores[heavy, : self.topk], cand_indices[heavy, : self.topk] = heavy_scores, heavy_indices
            if cand_scores.shape[1]:
                self._pending.append((cand_scores, cand_indices))
        if sum(s.shape[1] for s, _ in self._pending) >= self.topk or len(self._pending) >= self.merge_every:
            self._merge()

    def _merge(self) -> None:
        """Fold the pending candidates into the running top-k (and so raise the thresholds)."""
        if not self._pending:
            return
        self._scores, self._indices = _sort_candidates(torch.cat([self._scores] + [s for s, _ in self._pending], 1),
                                                       torch.cat([self._indices] + [i for _, i in self._pending], 1),
                                                       self.topk, ordered=False)
        self._threshold = self._scores.amin(dim=1)
        self._pending, self._sorted = [], False

    def results(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores [nq, k], indices [nq, k])`` sorted by score descending, ties by lower index."""
        if self._scores is None:
            raise ConfigError("FastResultHeapq.results() called before any add(); nothing to return.")
        self._merge()
        if not self._sorted:  # intermediate merges leave the order open: sort once, here
            self._scores, self._indices = _sort_candidates(self._scores, self._indices, self.topk)
            self._sorted = True
        return self._scores, self._indices


def merge_topk(parts: Sequence[tuple[Embeddings, Embeddings]], topk: int | None = None
               ) -> tuple[np.ndarray, np.ndarray] | tuple[torch.Tensor, torch.Tensor]:
    """Exactly merge partial top-k lists of the same queries (e.g. one per corpus shard).

    Each part is ``(scores [nq, k_i], indices [nq, k_i])`` with *global* corpus indices; padding
    (``-inf``, ``-1``) is allowed. The result equals searching the unsharded corpus, including the
    tie order. Returns numpy arrays if the first part is numpy, else tensors.

    Args:
        parts: the partial results.
        topk: results per query; default: the widest part.
    """
    if not parts:
        raise ConfigError("merge_topk needs at least one (scores, indices) part.")
    as_numpy = isinstance(parts[0][0], np.ndarray)
    scores = [torch.as_tensor(np.asarray(s) if as_numpy else s, dtype=torch.float32) for s, _ in parts]
    indices = [torch.as_tensor(np.asarray(i) if as_numpy else i, dtype=torch.int64) for _, i in parts]
    nqs = {s.shape[0] for s in scores} | {i.shape[0] for i in indices}
    if len(nqs) != 1 or any(s.shape != i.shape for s, i in zip(scores, indices)):
        raise ConfigError("merge_topk parts must all have the same number of queries, and scores/indices "
                          f"of equal shape; got {[tuple(s.shape) for s in scores]}.")
    k = topk or max(s.shape[1] for s in scores)
    device = scores[0].device
    merged = _sort_candidates(torch.cat([s.to(device) for s in scores], 1),
                              torch.cat([i.to(device) for i in indices], 1), k)
    if as_numpy:
        return merged[0].cpu().numpy(), merged[1].cpu().numpy()
    return merged


def _release_pages(block: np.ndarray) -> None:
    """Drop the pages of a processed memory-mapped block from this process's resident set.

    Reading a memmap maps file pages into the process; without this, RSS grows to the corpus size even
    though we only need one chunk at a time. ``MADV_DONTNEED`` on a shared read-only / read-write file
    mapping only unmaps the pages (the data stays in the file and the page cache). Copy-on-write
    memmaps (mode ``"c"``) are left alone: dropping would discard their private edits.
    """
    if not (isinstance(block, np.memmap) and getattr(block, "mode", "c") in ("r", "r+", "w+")):
        return
    if block.nbytes == 0 or not block.flags.c_contiguous or not sys.platform.startswith("linux"):
        return
    page = mmap.PAGESIZE
    start = block.ctypes.data
    aligned = start - start % page
    length = block.nbytes + (start - aligned)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise(ctypes.c_void_p(aligned), ctypes.c_size_t(length), ctypes.c_int(4))  # MADV_DONTNEED
    except (OSError, AttributeError):  # not glibc-like: keep the pages, only memory use differs
        pass


def _iter_blocks(corpus: CorpusSource, chunk_size: int) -> Iterator[tuple[int, Embeddings]]:
    """Yield ``(offset, block)`` with at most ``chunk_size`` rows from any supported corpus source."""
    if isinstance(corpus, (np.ndarray, torch.Tensor)):
        n = corpus.shape[0]
        size = -(-n // max(1, -(-n // chunk_size)))  # equal chunks: no small, inefficient last one
        for start in range(0, n, max(1, size)):
            yield start, corpus[start:start + size]
        return
    for item in corpus:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], (int, np.integer))):
            raise InputError("corpus blocks must be (offset, embeddings) pairs with an integer offset, "
                             f"got {type(item).__name__}.",
                             fix="yield (first_row_index, array[rows, dim]) from the corpus iterable.")
        offset, block = int(item[0]), item[1]
        for start in range(0, block.shape[0], chunk_size):
            yield offset + start, block[start:start + chunk_size]


def _to_tensor(array: Embeddings, device: torch.device, what: str) -> torch.Tensor:
    """float32 tensor on ``device``; copies read-only numpy views (memmaps) so torch does not warn."""
    if isinstance(array, torch.Tensor):
        tensor = array.detach()
    else:
        array = np.asarray(array)
        if array.dtype != np.float32 or not array.flags.writeable or not array.flags.c_contiguous:
            array = np.array(array, dtype=np.float32, order="C")
        tensor = torch.from_numpy(array)
    if tensor.dim() != 2:
        raise InputError(f"{what} must be a 2-D [rows, dim] array, got shape {tuple(tensor.shape)}.",
                         fix="pass one embedding per row.")
    return tensor.to(device=device, dtype=torch.float32)


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` torch CPU threads, then restore the previous setting."""
    old = torch.get_num_threads()
    if threads == old:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# Score blocks are at most this many queries x documents (4 MiB of float32): small enough to stay in
# the CPU cache between the matmul that writes them and the threshold pass that reads them.
_BLOCK_QUERIES = 256
_BLOCK_DOCS = 4096


class _Worker:
    """Scores its share of the query batches against each corpus chunk and keeps their top-k.

    Each worker owns one reusable score buffer (a fresh 64 MB tensor per matmul costs page faults)
    and the :class:`FastResultHeapq` of its batches.
    """

    def __init__(self, queries: torch.Tensor, batches: list[tuple[int, int]], topk: int, block_docs: int) -> None:
        self.queries, self.batches, self.block_docs = queries, batches, block_docs
        self.heaps = [FastResultHeapq(topk, device=queries.device) for _ in batches]
        for heap, (s, e) in zip(self.heaps, batches):  # start all padding: an empty corpus is valid
            heap.add(queries.new_empty((e - s, 0)), offset=0)
        self.buffer = queries.new_empty(0)

    def add_chunk(self, docs: torch.Tensor, offset: int) -> None:
        with torch.inference_mode():  # thread-local: worker threads must enter it themselves
            for start in range(0, docs.shape[0], self.block_docs):
                docs_t = docs[start:start + self.block_docs].T
                m = docs_t.shape[1]
                for heap, (s, e) in zip(self.heaps, self.batches):
                    if self.buffer.numel() < (e - s) * m:
                        self.buffer = self.queries.new_empty((e - s) * m)
                    out = self.buffer[: (e - s) * m].view(e - s, m)
                    heap.add(torch.mm(self.queries[s:e], docs_t, out=out), offset=offset + start)


def exact_search(query_embs: Embeddings, corpus_embs: CorpusSource, topk: int, *,
                 corpus_chunk_size: int = 16384, query_batch_size: int = 1024,
                 device: torch.device | str | None = None,
                 threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact maximum-inner-product search of every query against the whole corpus.

    The corpus is read once, chunk by chunk; every chunk is scored against each query batch in float32
    matmuls (on CPU of at most 256 queries x 4096 documents: a 4 MiB block that stays in the cache
    until the threshold pass has read it) and folded into that batch's :class:`FastResultHeapq`. Peak
    extra memory is one corpus chunk plus one score block per thread.

    On CPU the query batches are shared among ``threads`` Python threads, each running torch with
    one thread (matmul and selection alike; torch releases the GIL). Why not one multi-threaded
    torch: the top-k selection between matmuls is a series of short, memory-bound ops, and each
    multi-threaded op waits at its end for the slowest thread; on a busy machine that wait is a
    scheduler time slice per op and doubled the search time. Independent workers never wait for
    each other until the end of a corpus chunk. (While searching, torch's thread count is 1
    process-wide; it is restored afterwards.)

    Args:
        query_embs: ``[nq, dim]`` numpy array or tensor.
        corpus_embs: ``[n, dim]`` numpy array (memory-mapped is fine: pages are released after use),
            tensor, or an iterable of ``(offset, block)`` pairs, ``offset`` being the corpus index of
            the block's first row.
        topk: results per query; rows are padded with ``-inf`` / ``-1`` when the corpus is smaller.
        corpus_chunk_size: corpus rows read at a time (``per_device_matmul_batch_size`` in the
            evaluator); on CPU a matmul covers at most 4096 of them.
        query_batch_size: query rows per matmul; on CPU at most 256, and fewer if needed to give
            every thread a batch.
        device: where to compute; default: the device of ``query_embs`` if a tensor, else CPU.
        threads: CPU worker threads; default ``torch.get_num_threads()``. Ignored off CPU.

    Returns:
        ``(scores float32 [nq, topk], indices int64 [nq, topk])`` sorted by score descending; equal
        scores list the lower corpus index first.
    """
    for name, value in (("topk", topk), ("corpus_chunk_size", corpus_chunk_size),
                        ("query_batch_size", query_batch_size), ("threads", threads or 1)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
    if device is None:
        device = query_embs.device if isinstance(query_embs, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    threads = int(threads or torch.get_num_threads()) if device.type == "cpu" else 1
    with torch.inference_mode(), _torch_threads(1 if threads > 1 else torch.get_num_threads()):
        queries = _to_tensor(query_embs, device, "query embeddings")
        nq, dim = queries.shape
        on_cpu = device.type == "cpu"  # a GPU wants large blocks: no cache-sized caps there
        size = max(1, min(int(query_batch_size), _BLOCK_QUERIES if on_cpu else nq, -(-nq // threads)))
        block_docs = _BLOCK_DOCS if on_cpu else int(corpus_chunk_size)
        batches = [(s, min(s + size, nq)) for s in range(0, nq, size)]
        workers = [_Worker(queries, batches[w::threads], int(topk), block_docs)
                   for w in range(min(threads, len(batches)))]
        pool = ThreadPoolExecutor(len(workers)) if len(workers) > 1 else None
        try:
            for offset, block in _iter_blocks(corpus_embs, int(corpus_chunk_size)):
                docs = _to_tensor(block, device, "corpus embeddings")
                if docs.shape[1] != dim:
                    raise InputError(f"corpus embeddings have dim {docs.shape[1]} (block at row {offset}) "
                                     f"but queries have dim {dim}.",
                                     fix="encode queries and corpus with the same model.")
                if pool is None:
                    for worker in workers:
                        worker.add_chunk(docs, offset)
                else:  # wait for all: the chunk's pages are released next
                    for done in [pool.submit(worker.add_chunk, docs, offset) for worker in workers]:
                        done.result()
                if isinstance(block, np.memmap):
                    _release_pages(block)
        finally:
            if pool is not None:
                pool.shutdown()
        if not batches:
            return np.empty((0, topk), np.float32), np.empty((0, topk), np.int64)
        results = sorted((b, h.results()) for w in workers for b, h in zip(w.batches, w.heaps))
        scores = torch.cat([r[0] for _, r in results]).cpu().numpy()
        indices = torch.cat([r[1] for _, r in results]).cpu().numpy()
    return scores, indices


@runtime_checkable
class SearchBackend(Protocol):
    """Anything that finds the ``topk`` best corpus rows per query: exact search, FAISS, ...

    ``search`` returns ``(scores float32 [nq, topk], indices int64 [nq, topk])``, higher score is
    better, padded with ``-inf`` / ``-1``.
    """

    def search(self, query_embs: Embeddings, topk: int) -> tuple[np.ndarray, np.ndarray]: ...


class ExactSearch:
    """:class:`SearchBackend` over :func:`exact_search`: brute force, exact, no index to build.

    ``corpus_embs`` must be re-readable (array, memmap or tensor), since each ``search`` reads it again.
    """

    def __init__(self, corpus_embs: Embeddings, *, corpus_chunk_size: int = 16384,
                 query_batch_size: int = 1024, device: torch.device | str | None = None) -> None:
        if not isinstance(corpus_embs, (np.ndarray, torch.Tensor)):
            raise ConfigError("ExactSearch needs an array, memmap or tensor corpus (it is read once per "
                              "search); for a one-pass iterable call exact_search directly.")
        self.corpus_embs = corpus_embs
        self.corpus_chunk_size = corpus_chunk_size
        self.query_batch_size = query_batch_size
        self.device = device

    def search(self, query_embs: Embeddings, topk: int) -> tuple[np.ndarray, np.ndarray]:
        return exact_search(query_embs, self.corpus_embs, topk, corpus_chunk_size=self.corpus_chunk_size,
                            query_batch_size=self.query_batch_size, device=self.device)


def add_corpus_block(heap: FastResultHeapq, queries: torch.Tensor, block: Embeddings, offset: int,
                     chunk_size: int) -> None:
    """Score ``queries`` against a block of corpus vectors (rows ``offset...``) into ``heap``.

    The block is copied to the queries' device (cache blocks are read-only memory maps) and scored
    ``chunk_size`` rows per matmul, the push-style twin of :func:`exact_search` for callers that receive
    corpus blocks one at a time (encoding while searching, reading shard folders).
    """
    if block.shape[1] != queries.shape[1]:
        raise InputError(f"corpus vectors have {block.shape[1]} dimensions, queries {queries.shape[1]}.",
                         fix="encode queries and corpus with the same model.")
    block_t = torch.tensor(np.asarray(block), device=queries.device, dtype=torch.float32)
    with torch.inference_mode():
        for start in range(0, len(block_t), chunk_size):
            heap.add(queries @ block_t[start:start + chunk_size].T, offset=offset + start)
