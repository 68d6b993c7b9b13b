"""Nearest-neighbour search over embeddings: exact streaming top-k, and an optional FAISS backend.

``FaissSearch`` is importable from here without FAISS installed; FAISS itself is imported only when an
index is built.
"""
from densekit.search.faiss_backend import FaissSearch
from densekit.search.topk import ExactSearch, ExactSearcher, FastResultHeapq, SearchBackend, exact_search, merge_topk

__all__ = ["ExactSearch", "ExactSearcher", "FaissSearch", "FastResultHeapq", "SearchBackend", "exact_search", "merge_topk"]
