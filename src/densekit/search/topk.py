"""Exact inner-product top-k search that streams over the corpus in chunks.

Why streaming: a corpus of 10M x 768 float32 vectors is 30 GB, more than most machines hold, and the
full query x corpus score matrix is bigger still. Here the corpus is read one chunk at a time (from a
numpy array, a memory-mapped file, a torch tensor or any iterable of ``(offset, chunk)`` blocks) and each
block of scores is folded into a running top-k per query (:class:`FastResultHeapq`), so peak memory is
set by ``corpus_chunk_size x query_batch_size``, not by the corpus size.

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

import ctypes
import mmap
import sys
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


def _sort_candidates(scores: torch.Tensor, indices: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the best ``k`` of ``[nq, c]`` candidates ordered by (score desc, index asc), padded to ``k``."""
    nq, c = scores.shape
    if c == k and k > 1 and bool((scores[:, :-1] > scores[:, 1:]).all()):
        return scores, indices  # already strictly descending: the order is unique (the common case)
    if c < k:
        pad = k - c
        scores = torch.cat([scores, scores.new_full((nq, pad), float("-inf"))], dim=1)
        indices = torch.cat([indices, indices.new_full((nq, pad), -1)], dim=1)
    if indices.numel() and int(indices.max()) >= _LOW_MASK:
        raise ConfigError(f"corpus indices must be below {_LOW_MASK}; got {int(indices.max())}.")
    best = torch.topk(_order_keys(scores, indices), k, dim=1, largest=True, sorted=True).indices
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
        return scores, indices.expand(nq, m)
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


class FastResultHeapq:
    """Running top-k (scores float32, corpus indices int64) for a batch of queries, across corpus chunks.

    Same name and role as Trove's ``FastResultHeapq``: rather than a Python heap per query, each call to
    :meth:`add` takes a whole ``[num_queries, chunk]`` score block and keeps its top-k from one
    ``torch.topk``; those candidates are merged into the running top-k now and then (every
    ``merge_every`` blocks, and in :meth:`results`), so the work is a few large tensor ops on the
    tensors' device (CPU or CUDA alike). Large blocks amortise everything; see
    ``per_device_matmul_batch_size``. Results are exact, ties going to the lower corpus index.

    Args:
        topk: number of results to keep per query.
        device: where to keep the running results; default: the device of the first scores added.
        merge_every: blocks of candidates buffered before merging (memory: ``nq x topk x 12`` bytes each).
    """

    def __init__(self, topk: int, device: torch.device | str | None = None, merge_every: int = 16) -> None:
        if not isinstance(topk, int) or topk < 1:
            raise ConfigError(f"topk must be a positive integer, got {topk!r}.")
        self.topk = topk
        self.device = torch.device(device) if device is not None else None
        self.merge_every = max(1, merge_every)
        self._scores: list[torch.Tensor] = []
        self._indices: list[torch.Tensor] = []
        self._num_queries: int | None = None
        self._device: torch.device | None = None

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
        device = self.device or scores.device
        scores = scores.to(device=device, dtype=torch.float32)
        nq, m = scores.shape
        if self._num_queries is not None and self._num_queries != nq:
            raise ConfigError(f"scores have {nq} query rows but earlier blocks had {self._num_queries}.")
        self._num_queries, self._device = nq, device
        if m == 0:
            return
        if indices is None:
            indices = torch.arange(offset, offset + m, device=device, dtype=torch.int64)
        else:
            indices = torch.as_tensor(indices, device=device, dtype=torch.int64)
            if indices.shape != (m,):
                raise ConfigError(f"indices of shape {tuple(indices.shape)} do not match scores {tuple(scores.shape)}.")
        cand_scores, cand_indices = _chunk_candidates(scores, indices, self.topk)
        self._scores.append(cand_scores)
        self._indices.append(cand_indices)
        if len(self._scores) > self.merge_every:
            self._merge()

    def _merge(self) -> None:
        if not self._scores:  # only empty blocks seen: all padding
            empty = torch.empty((self._num_queries, 0), device=self._device)
            self._scores, self._indices = [empty], [empty.to(torch.int64)]
        if len(self._scores) == 1:
            scores, indices = self._scores[0], self._indices[0]
        else:
            scores, indices = torch.cat(self._scores, 1), torch.cat(self._indices, 1)
        merged = _sort_candidates(scores, indices, self.topk)
        self._scores, self._indices = [merged[0]], [merged[1]]

    def results(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores [nq, k], indices [nq, k])`` sorted by score descending, ties by lower index."""
        if self._num_queries is None:
            raise ConfigError("FastResultHeapq.results() called before any add(); nothing to return.")
        self._merge()
        return self._scores[0], self._indices[0]


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


def exact_search(query_embs: Embeddings, corpus_embs: CorpusSource, topk: int, *,
                 corpus_chunk_size: int = 16384, query_batch_size: int = 1024,
                 device: torch.device | str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact maximum-inner-product search of every query against the whole corpus.

    The corpus is read once, chunk by chunk; every chunk is scored against each query batch with one
    float32 matmul and folded into that batch's :class:`FastResultHeapq`. Peak extra memory is about
    ``query_batch_size x corpus_chunk_size x 4`` bytes plus one corpus chunk.

    Args:
        query_embs: ``[nq, dim]`` numpy array or tensor.
        corpus_embs: ``[n, dim]`` numpy array (memory-mapped is fine: pages are released after use),
            tensor, or an iterable of ``(offset, block)`` pairs, ``offset`` being the corpus index of
            the block's first row.
        topk: results per query; rows are padded with ``-inf`` / ``-1`` when the corpus is smaller.
        corpus_chunk_size: corpus rows per matmul (``per_device_matmul_batch_size`` in the evaluator).
        query_batch_size: query rows per matmul.
        device: where to compute; default: the device of ``query_embs`` if a tensor, else CPU.

    Returns:
        ``(scores float32 [nq, topk], indices int64 [nq, topk])`` sorted by score descending; equal
        scores list the lower corpus index first.
    """
    for name, value in (("topk", topk), ("corpus_chunk_size", corpus_chunk_size),
                        ("query_batch_size", query_batch_size)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
    if device is None:
        device = query_embs.device if isinstance(query_embs, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    with torch.inference_mode():
        queries = _to_tensor(query_embs, device, "query embeddings")
        nq, dim = queries.shape
        batches = [(s, min(s + query_batch_size, nq)) for s in range(0, nq, query_batch_size)]
        heaps = [FastResultHeapq(int(topk), device=device) for _ in batches]
        for heap, (s, e) in zip(heaps, batches):  # start from an all-padding state: empty corpus is valid
            heap.add(queries.new_empty((e - s, 0)), offset=0)
        for offset, block in _iter_blocks(corpus_embs, int(corpus_chunk_size)):
            docs = _to_tensor(block, device, "corpus embeddings")
            if docs.shape[1] != dim:
                raise InputError(f"corpus embeddings have dim {docs.shape[1]} (block at row {offset}) but "
                                 f"queries have dim {dim}.",
                                 fix="encode queries and corpus with the same model.")
            docs_t = docs.T
            for heap, (s, e) in zip(heaps, batches):
                heap.add(queries[s:e] @ docs_t, offset=offset)
            if isinstance(block, np.memmap):
                _release_pages(block)
        if not heaps:
            return np.empty((0, topk), np.float32), np.empty((0, topk), np.int64)
        scores = torch.cat([h.results()[0] for h in heaps]).cpu().numpy()
        indices = torch.cat([h.results()[1] for h in heaps]).cpu().numpy()
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
