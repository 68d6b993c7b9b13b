"""Approximate (or exact) search through FAISS, for corpora where brute force is too slow.

FAISS is an optional dependency (``pip install densekit[faiss]``); it is imported only when a
:class:`FaissSearch` is built, so the rest of densekit works without it. Any ``faiss.index_factory``
string works ("Flat", "IVF256,Flat", "HNSW32", "IVF256,PQ16", ...); indexes that need training are
trained on (a seeded sample of) the corpus. GPUs are used only when the installed FAISS sees some
(``faiss.get_num_gpus() > 0``); otherwise everything runs on CPU. Only the CPU path is tested here.

Results follow the :class:`~densekit.search.topk.SearchBackend` contract: higher score is better,
rows padded with ``-inf`` / ``-1``. With ``metric="l2"`` the score is the negated squared distance.
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

from densekit.errors import ConfigError, InputError
from densekit.search.topk import Embeddings


def import_faiss() -> Any:
    """Import FAISS or raise a :class:`ConfigError` that says how to install it."""
    try:
        import faiss  # noqa: PLC0415 - optional dependency, imported on use
    except ImportError as err:
        raise ConfigError("FAISS is not installed but a FAISS index was requested. "
                          "Fix: pip install densekit[faiss] (or pip install faiss-cpu), "
                          "or use exact search.") from err
    return faiss


def _as_float32(array: Embeddings, what: str) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim != 2:
        raise InputError(f"{what} must be a 2-D [rows, dim] array, got shape {array.shape}.",
                         fix="pass one embedding per row.")
    return array


class FaissSearch:
    """:class:`~densekit.search.topk.SearchBackend` backed by a FAISS index built from ``corpus_embs``.

    Args:
        corpus_embs: ``[n, dim]`` array, memmap or tensor; added to the index in ``add_batch_size`` rows.
        index_factory: a ``faiss.index_factory`` description, e.g. ``"Flat"`` (exact), ``"IVF256,Flat"``.
        metric: ``"ip"`` (inner product, for normalized or dot-product models) or ``"l2"``.
        nprobe: IVF lists visited per query (more = better recall, slower); ignored by non-IVF indexes.
        ef_search: HNSW candidate list size at search time; ignored by non-HNSW indexes.
        train_size: rows used to train indexes that need it (seeded random sample); default: all.
        use_gpu: ``None`` = use GPUs if FAISS sees any, ``False`` = CPU only.
        seed: seed of the training sample.

    Example::

        >>> import numpy as np
        >>> docs = np.eye(4, dtype=np.float32)
        >>> FaissSearch(docs).search(docs[:1], topk=1)[1].tolist()
        [[0]]
    """

    def __init__(self, corpus_embs: Embeddings, index_factory: str = "Flat", metric: Literal["ip", "l2"] = "ip",
                 *, nprobe: int | None = None, ef_search: int | None = None, train_size: int | None = None,
                 use_gpu: bool | None = None, seed: int = 0, add_batch_size: int = 65536) -> None:
        faiss = import_faiss()
        if metric not in ("ip", "l2"):
            raise ConfigError(f"metric must be 'ip' or 'l2', got {metric!r}.")
        if corpus_embs.shape[0] == 0 or len(corpus_embs.shape) != 2:
            raise InputError(f"corpus embeddings must be a non-empty [rows, dim] array, got shape "
                             f"{tuple(corpus_embs.shape)}.", fix="encode the corpus first.")
        self.metric = metric
        dim = int(corpus_embs.shape[1])
        faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
        try:
            index = faiss.index_factory(dim, index_factory, faiss_metric)
        except RuntimeError as err:
            raise ConfigError(f"FAISS cannot build index_factory={index_factory!r}: {err}. Fix: use a "
                              "faiss.index_factory string such as 'Flat', 'IVF256,Flat' or 'HNSW32'.") from err
        if not index.is_trained:
            n = int(corpus_embs.shape[0])
            rows = np.arange(n)
            if train_size is not None and train_size < n:
                rows = np.sort(np.random.default_rng(seed).choice(n, size=train_size, replace=False))
            sample = _as_float32(corpus_embs[rows] if len(rows) < n else corpus_embs, "corpus embeddings")
            try:
                index.train(sample)
            except RuntimeError as err:
                raise ConfigError(f"FAISS could not train {index_factory!r} on {len(sample)} vectors: {err}. "
                                  "Fix: use fewer IVF lists / PQ centroids or more training vectors.") from err
        num_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        self.on_gpu = bool(num_gpus > 0 and use_gpu is not False)
        if self.on_gpu:  # pragma: no cover - no GPU FAISS on the test machines
            index = faiss.index_cpu_to_all_gpus(index)
        for start in range(0, corpus_embs.shape[0], add_batch_size):
            index.add(_as_float32(corpus_embs[start:start + add_batch_size], "corpus embeddings"))
        params = faiss.GpuParameterSpace() if self.on_gpu else faiss.ParameterSpace()
        if nprobe is not None and "IVF" in index_factory:
            params.set_index_parameter(index, "nprobe", int(nprobe))
        if ef_search is not None and "HNSW" in index_factory:
            params.set_index_parameter(index, "efSearch", int(ef_search))
        self.index = index
        self.dim = dim

    def search(self, query_embs: Embeddings, topk: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores float32 [nq, topk], indices int64 [nq, topk])``, best first, padded ``-inf`` / ``-1``."""
        if not isinstance(topk, (int, np.integer)) or topk < 1:
            raise ConfigError(f"topk must be a positive integer, got {topk!r}.")
        queries = _as_float32(query_embs, "query embeddings")
        if queries.shape[1] != self.dim:
            raise InputError(f"query embeddings have dim {queries.shape[1]} but the index has dim {self.dim}.",
                             fix="encode queries and corpus with the same model.")
        scores, indices = self.index.search(queries, int(topk))
        scores = scores.astype(np.float32, copy=False)
        if self.metric == "l2":
            scores = -scores
        scores[indices < 0] = -np.inf
        return scores, indices.astype(np.int64, copy=False)
