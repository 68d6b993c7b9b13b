"""FAISS backend: Flat agrees with exact search, IVF recall is sane, missing FAISS is a clear error."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from densekit.errors import ConfigError, InputError
from densekit.search import ExactSearch, FaissSearch, SearchBackend, exact_search

pytest.importorskip("faiss")  # installed by densekit[test]; missing FAISS is covered by the test below


def normalized(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_flat_index_returns_same_ids_and_scores_as_exact_search() -> None:
    corpus, queries = normalized(2000, 32, 0), normalized(50, 32, 1)
    faiss_scores, faiss_ids = FaissSearch(corpus, "Flat").search(queries, 20)
    scores, ids = exact_search(queries, corpus, 20, corpus_chunk_size=512)
    np.testing.assert_array_equal(faiss_ids, ids)
    np.testing.assert_allclose(faiss_scores, scores, atol=1e-5)
    assert faiss_scores.dtype == np.float32 and faiss_ids.dtype == np.int64


def test_both_backends_satisfy_the_search_backend_protocol() -> None:
    corpus = normalized(50, 8, 8)
    for backend in (FaissSearch(corpus), ExactSearch(corpus)):
        assert isinstance(backend, SearchBackend)
        assert backend.search(corpus[:3], 1)[1][:, 0].tolist() == [0, 1, 2]


def test_ivf_with_all_lists_probed_has_high_recall() -> None:
    corpus, queries = normalized(3000, 32, 2), normalized(40, 32, 3)
    backend = FaissSearch(corpus, "IVF16,Flat", nprobe=16)
    _, ids = backend.search(queries, 10)
    _, exact_ids = exact_search(queries, corpus, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids.tolist(), exact_ids.tolist())])
    assert recall > 0.9
    assert not backend.on_gpu  # faiss-cpu: the CPU fallback path is the one exercised here


@pytest.mark.parametrize(("factory", "min_recall"), [("HNSW16", 0.9), ("IVF4,PQ4x4", 0.5)])
def test_other_factories_train_and_return_mostly_true_neighbours(factory: str, min_recall: float) -> None:
    corpus = normalized(1500, 8, 4)  # low dim so a tiny, fast-to-train PQ is still meaningful
    backend = FaissSearch(corpus, factory, nprobe=4, ef_search=64, train_size=1200)
    _, ids = backend.search(corpus[:20], 5)
    _, exact_ids = exact_search(corpus[:20], corpus, 10)
    found = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ids.tolist(), exact_ids.tolist())])
    assert found >= min_recall  # share of returned ids that are among the true 10 nearest


def test_l2_metric_scores_are_negated_squared_distances_and_padding_is_marked() -> None:
    corpus = np.eye(3, dtype=np.float32)
    scores, ids = FaissSearch(corpus, "Flat", metric="l2").search(corpus[:1], 5)
    assert ids.tolist() == [[0, 1, 2, -1, -1]]
    np.testing.assert_allclose(scores[0, :3], [0.0, -2.0, -2.0])
    assert np.isneginf(scores[0, 3:]).all()


def test_bad_factory_and_dim_mismatch_are_reported() -> None:
    corpus = normalized(100, 8, 5)
    with pytest.raises(ConfigError, match="index_factory"):
        FaissSearch(corpus, "NotAnIndex")
    with pytest.raises(InputError, match="dim"):
        FaissSearch(corpus).search(normalized(2, 4, 6), 3)


def test_missing_faiss_raises_config_error_with_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.raises(ConfigError, match=r"pip install densekit\[faiss\]"):
        FaissSearch(normalized(10, 4, 7))
