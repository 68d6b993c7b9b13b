"""Exact inner-product top-k search that streams over the corpus in chunks.

Why streaming: a corpus of 10M x 768 float32 vectors is 30 GB, more than most machines hold, and the
full query x corpus score matrix is bigger still. Here the corpus is read one chunk at a time and each
block of scores is folded into a running top-k per query (:class:`FastResultHeapq`), so peak memory is
set by the block sizes, not by the corpus size. There is one search kernel, :class:`ExactSearcher`, fed
push-style (``add(offset, block)``: the evaluator encodes and searches block by block);
:func:`exact_search` is a loop over it for a numpy array, a memory-mapped file, a torch tensor or any
iterable of ``(offset, chunk)`` blocks.

Why it is fast: like faiss's flat index, each query keeps its k-th best score so far, and after the
first blocks almost no score reaches it; on CPU one compiled pass per block compares every score with
it and keeps the few that pass in a per-query buffer (:mod:`densekit.search.heap_kernel`), so the
search costs little more than its matrix products.

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
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Iterable, Iterator, Protocol, Sequence, Union, runtime_checkable

import numpy as np
import torch
from threadpoolctl import ThreadpoolController

from densekit.errors import ConfigError, InputError
from densekit.search import heap_kernel

Embeddings = Union[np.ndarray, torch.Tensor]
CorpusSource = Union[np.ndarray, torch.Tensor, Iterable[tuple[int, Embeddings]]]

_LOW_MASK = heap_kernel.INDEX_LIMIT  # corpus indices must fit below this (see _order_keys)


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


def _nan_error() -> InputError:
    return InputError("similarity scores contain NaN; the query or corpus embeddings contain NaN or inf.",
                      fix="check the encoder output (e.g. fp16 overflow) and re-encode.")


class FastResultHeapq:
    """Running top-k (scores float32, corpus indices int64) for a batch of queries, across corpus chunks.

    Same name and role as Trove's ``FastResultHeapq``: each call to :meth:`add` takes a whole
    ``[num_queries, chunk]`` score block. On CPU the block goes through one compiled pass that compares
    each score with its query's current k-th best and keeps the few that beat it in a per-query buffer
    (:mod:`densekit.search.heap_kernel`, the way faiss's flat index works); on other devices (or without
    numba) the running top-k and the block are merged with one ``torch.topk`` on tie-free order keys.
    Both are exact, ties going to the lower corpus index, whatever order the blocks come in.

    Args:
        topk: number of results to keep per query.
        device: where to keep the running results; default: the device of the first scores added.
    """

    def __init__(self, topk: int, device: torch.device | str | None = None) -> None:
        if not isinstance(topk, int) or topk < 1:
            raise ConfigError(f"topk must be a positive integer, got {topk!r}.")
        self.topk = topk
        self.device = torch.device(device) if device is not None else None
        self._scores: torch.Tensor | None = None  # [nq, topk] in no order, padded -inf / -1
        self._indices: torch.Tensor | None = None
        self._compiled: heap_kernel.RunningTopK | bool | None = None  # None until the first add()
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
        nq, m = scores.shape
        if self._compiled is None:  # first block: start all padding (an empty corpus is valid)
            self._num_queries = nq
            device = self.device or scores.device
            if device.type == "cpu" and heap_kernel.AVAILABLE:
                self._compiled = heap_kernel.RunningTopK(nq, self.topk)
            else:
                self._compiled = False
                self._scores = torch.full((nq, self.topk), float("-inf"), device=device)
                self._indices = torch.full((nq, self.topk), -1, device=device, dtype=torch.int64)
        elif self._num_queries != nq:
            raise ConfigError(f"scores have {nq} query rows but earlier blocks had {self._num_queries}.")
        if m == 0:
            return
        device = torch.device("cpu") if self._compiled else self._scores.device
        scores = scores.to(device=device, dtype=torch.float32)
        if indices is None:
            if offset < 0 or offset + m > _LOW_MASK:
                raise ConfigError(f"corpus indices must be in [0, {_LOW_MASK}); got offset {offset} + {m} columns.")
            indices = torch.arange(offset, offset + m, device=device, dtype=torch.int64)
        else:
            indices = torch.as_tensor(indices, device=device, dtype=torch.int64)
            if indices.shape != (m,):
                raise ConfigError(f"indices of shape {tuple(indices.shape)} do not match scores {tuple(scores.shape)}.")
            if int(indices.min()) < 0 or int(indices.max()) >= _LOW_MASK:
                raise ConfigError(f"corpus indices must be in [0, {_LOW_MASK}); got {int(indices.min())}.."
                                  f"{int(indices.max())}.")
        if self._compiled:
            if not self._compiled.push(scores.contiguous().numpy(), indices.numpy()):
                raise _nan_error()
            return
        if torch.isnan(scores).any():
            raise _nan_error()
        self._scores, self._indices = _sort_candidates(torch.cat([self._scores, scores], 1),
                                                       torch.cat([self._indices, indices.expand(nq, m)], 1),
                                                       self.topk, ordered=False)

    def results(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores [nq, k], indices [nq, k])`` sorted by score descending, ties by lower index."""
        if self._compiled is None:
            raise ConfigError("FastResultHeapq.results() called before any add(); nothing to return.")
        if self._compiled:
            scores, indices = self._compiled.results()
            return torch.from_numpy(scores.copy()), torch.from_numpy(indices.copy())
        return _sort_candidates(self._scores, self._indices, self.topk)


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
        for start in range(0, corpus.shape[0], chunk_size):
            yield start, corpus[start:start + chunk_size]
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


# Score blocks are at most this many queries x documents (8 MiB of float32): small enough to stay in
# the CPU's last-level cache between the matmul that writes them and the pass that reads them.
_BLOCK_QUERIES = 512
_BLOCK_DOCS = 4096
# Corpus rows converted to float32 (and, for a memmap, paged in and released) at a time inside
# ExactSearcher.add: bounds the copy of a huge block (a whole corpus shard) at 16384 x dim floats.
_PIECE_ROWS = 4 * _BLOCK_DOCS
# Off CPU there is no cache to fit: one matmul covers this many documents (query batch x 16384 scores).
_DEVICE_BLOCK_DOCS = 16384


class _Worker:
    """Scores its share of the query batches against each corpus piece and keeps their top-k.

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
                    heap.add(_matmul(self.queries[s:e], docs_t, out), offset=offset + start)


def _matmul(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``a @ b`` into ``out``; on CPU through numpy's BLAS (OpenBLAS in numpy's wheels).

    Why not ``torch.mm``: on the AMD EPYC machines we measure on, OpenBLAS's single-threaded sgemm is
    5-10% faster than torch's MKL for these shapes (MKL does not pick its AVX2 kernels on AMD), and the
    search is ~90% matmul. Both release the GIL.
    """
    if a.device.type != "cpu":
        return torch.mm(a, b, out=out)
    np.matmul(a.numpy(), b.numpy(), out=out.numpy())
    return out


class ExactSearcher:
    """Exact top-k of a fixed set of queries over a corpus that arrives block by block (push-style).

    Why push-style: the evaluator encodes the corpus and searches it as it goes (encode a block, score
    it, drop it), and ``densekit search`` reads shard folders one block at a time; neither can hand
    over the corpus as one array. :func:`exact_search` is a loop over this class, so every caller
    runs the same kernel and gets the same results.

    How: the queries are cut into batches (on CPU at most 512 rows), shared among ``threads`` worker
    threads. :meth:`add` scores each piece of the block against every batch in matmuls of at most
    512 x 4096 (numpy's BLAS, one thread per worker) and folds the scores into the batch's
    :class:`FastResultHeapq`. Memory: the queries, one score block per worker, the running top-k
    (``2 * topk`` keys per query) and one 16384-row float32 copy of the block at a time; never
    queries x block. Why separate single-threaded workers and not one multi-threaded BLAS: they never
    wait for each other until the end of a piece, and two single-threaded sgemms did 170 GFLOP/s on
    the 2-core machine where one two-threaded sgemm did 96-110.

    Thread settings: only *inside* :meth:`add` do torch and BLAS run one thread each process-wide
    (when there are several workers); they are restored before :meth:`add` returns or raises, so the
    caller may run an encoder with its own threads between two calls. :meth:`close` (or leaving the
    ``with`` block) shuts the worker threads down.

    Example::

        with ExactSearcher(query_embs, topk=100) as searcher:
            for offset, block in corpus_blocks:  # offset: global corpus index of the block's first row
                searcher.add(offset, block)
            scores, indices = searcher.results()

    Args:
        query_embs: ``[nq, dim]`` numpy array or tensor.
        topk: results per query; rows are padded with ``-inf`` / ``-1`` when the corpus is smaller.
        query_batch_size: query rows per matmul; on CPU at most 512, and fewer if needed to give every
            thread a batch.
        device: where to compute; default: the device of ``query_embs`` if a tensor, else CPU.
        threads: CPU worker threads; default ``torch.get_num_threads()``. Ignored off CPU.
    """

    def __init__(self, query_embs: Embeddings, topk: int, *, query_batch_size: int = 1024,
                 device: torch.device | str | None = None, threads: int | None = None) -> None:
        for name, value in (("topk", topk), ("query_batch_size", query_batch_size), ("threads", threads or 1)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        if device is None:
            device = query_embs.device if isinstance(query_embs, torch.Tensor) else torch.device("cpu")
        device = torch.device(device)
        on_cpu = device.type == "cpu"
        threads = int(threads or torch.get_num_threads()) if on_cpu else 1
        with torch.inference_mode():
            self.queries = _to_tensor(query_embs, device, "query embeddings").contiguous()
        nq = self.queries.shape[0]
        self.topk, self.dim = int(topk), self.queries.shape[1]
        size = max(1, min(int(query_batch_size), _BLOCK_QUERIES if on_cpu else nq, -(-nq // threads)))
        batches = [(s, min(s + size, nq)) for s in range(0, nq, size)]
        block_docs = _BLOCK_DOCS if on_cpu else _DEVICE_BLOCK_DOCS
        self._workers = [_Worker(self.queries, batches[w::threads], self.topk, block_docs)
                         for w in range(min(threads, len(batches)))]
        # several workers: torch and BLAS at one thread each during add(); one worker (on the calling
        # thread): BLAS gets the torch thread count, as torch's own matmuls would
        self._limits = (1 if len(self._workers) > 1 else torch.get_num_threads()) if on_cpu else None
        self._blas = ThreadpoolController() if on_cpu else None
        self._pool = ThreadPoolExecutor(len(self._workers), thread_name_prefix="densekit-search") \
            if len(self._workers) > 1 else None
        self._closed = False
        self._failed: BaseException | None = None

    def add(self, offset: int, block: Embeddings) -> None:
        """Fold in corpus rows ``offset .. offset + len(block) - 1`` (any number of rows, any order of calls).

        ``block`` is a ``[rows, dim]`` numpy array (a memory-mapped one is fine: its pages are released
        after use), or a tensor. It is read in 16384-row pieces; nothing of it is kept.
        """
        if self._closed:
            raise ConfigError("ExactSearcher.add() called after close().")
        if self._failed is not None:
            raise ConfigError("ExactSearcher.add() called after an earlier add() failed; start a new search.")
        if not isinstance(offset, (int, np.integer)) or isinstance(offset, bool) or offset < 0:
            raise ConfigError(f"offset must be a non-negative integer (the block's first corpus row), got {offset!r}.")
        shape = tuple(block.shape)
        if len(shape) != 2:
            raise InputError(f"corpus embeddings must be a 2-D [rows, dim] array, got shape {shape}.",
                             fix="pass one embedding per row.")
        if shape[1] != self.dim:
            raise InputError(f"corpus embeddings have dim {shape[1]} (block at row {offset}) "
                             f"but queries have dim {self.dim}.",
                             fix="encode queries and corpus with the same model.")
        if offset + shape[0] > _LOW_MASK:
            raise ConfigError(f"corpus indices must be below {_LOW_MASK}; got offset {offset} + {shape[0]} rows.")
        try:
            with torch.inference_mode(), self._thread_limits():
                for start in range(0, shape[0], _PIECE_ROWS):
                    piece = block[start:start + _PIECE_ROWS]
                    self._add_piece(_to_tensor(piece, self.queries.device, "corpus embeddings"), int(offset) + start)
                    if isinstance(piece, np.memmap):
                        _release_pages(piece)
        except BaseException as error:
            self._failed = error
            raise

    def _add_piece(self, docs: torch.Tensor, offset: int) -> None:
        if self._pool is None:
            for worker in self._workers:
                worker.add_chunk(docs, offset)
            return
        futures = [self._pool.submit(worker.add_chunk, docs, offset) for worker in self._workers]
        wait(futures)  # all of them, also when one fails: none may still run when add() returns
        for future in futures:
            future.result()

    @contextlib.contextmanager
    def _thread_limits(self) -> Iterator[None]:
        """torch and BLAS thread counts for the workers, restored on the way out (also on errors)."""
        if self._limits is None:
            yield
            return
        with _torch_threads(1 if self._pool is not None else torch.get_num_threads()), \
                self._blas.limit(limits=self._limits, user_api="blas"):
            yield

    def results(self) -> tuple[np.ndarray, np.ndarray]:
        """``(scores float32 [nq, topk], indices int64 [nq, topk])`` of the rows added so far.

        Sorted by score descending; equal scores list the lower corpus index first; padded with
        ``-inf`` / ``-1``. May be called again after more :meth:`add` calls.
        """
        if self._failed is not None:
            raise ConfigError("ExactSearcher.results() called after an add() failed; the results are incomplete.")
        parts = sorted((batch, heap.results()) for w in self._workers for batch, heap in zip(w.batches, w.heaps))
        if not parts:
            return np.empty((0, self.topk), np.float32), np.empty((0, self.topk), np.int64)
        scores = torch.cat([p[1][0] for p in parts]).cpu().numpy()
        indices = torch.cat([p[1][1] for p in parts]).cpu().numpy()
        return scores, indices

    def close(self) -> None:
        """Shut the worker threads down (results stay available). Safe to call twice."""
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> "ExactSearcher":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def exact_search(query_embs: Embeddings, corpus_embs: CorpusSource, topk: int, *,
                 corpus_chunk_size: int = 16384, query_batch_size: int = 1024,
                 device: torch.device | str | None = None,
                 threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact maximum-inner-product search of every query against the whole corpus.

    A loop over :class:`ExactSearcher` (see there for how it works and what memory it needs): the
    corpus is read once, ``corpus_chunk_size`` rows at a time, each chunk folded into the running
    top-k of every query. Thread settings are the caller's again when this returns or raises.

    Args:
        query_embs: ``[nq, dim]`` numpy array or tensor.
        corpus_embs: ``[n, dim]`` numpy array (memory-mapped is fine: pages are released after use),
            tensor, or an iterable of ``(offset, block)`` pairs, ``offset`` being the corpus index of
            the block's first row.
        topk: results per query; rows are padded with ``-inf`` / ``-1`` when the corpus is smaller.
        corpus_chunk_size: corpus rows read at a time (``per_device_matmul_batch_size`` in the
            evaluator); rounded down to a multiple of 4096 (at least 4096), the documents of one
            CPU matmul.
        query_batch_size: query rows per matmul; on CPU at most 512, and fewer if needed to give
            every thread a batch.
        device: where to compute; default: the device of ``query_embs`` if a tensor, else CPU.
        threads: CPU worker threads; default ``torch.get_num_threads()``. Ignored off CPU.

    Returns:
        ``(scores float32 [nq, topk], indices int64 [nq, topk])`` sorted by score descending; equal
        scores list the lower corpus index first.
    """
    if not isinstance(corpus_chunk_size, (int, np.integer)) or corpus_chunk_size < 1:
        raise ConfigError(f"corpus_chunk_size must be a positive integer, got {corpus_chunk_size!r}.")
    with ExactSearcher(query_embs, topk, query_batch_size=query_batch_size, device=device,
                       threads=threads) as searcher:
        chunk = max(_BLOCK_DOCS, int(corpus_chunk_size) // _BLOCK_DOCS * _BLOCK_DOCS)  # whole matmul blocks
        for offset, block in _iter_blocks(corpus_embs, chunk):
            searcher.add(offset, block)
        return searcher.results()


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
