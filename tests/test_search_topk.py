"""Exact streaming top-k: checked against a brute-force numpy reference (full matmul + stable sort)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from densekit.errors import ConfigError, InputError
from densekit.search import ExactSearch, ExactSearcher, FastResultHeapq, exact_search, heap_kernel, merge_topk


@pytest.fixture(autouse=True, params=["compiled", "tensor"])
def heap_path(request, monkeypatch) -> str:
    """Every test runs on both running-top-k paths: the numba heap pass (CPU) and the tensor merge
    (what CUDA, or a machine without numba, uses)."""
    if request.param == "compiled":
        assert heap_kernel.AVAILABLE, "numba is a dependency of densekit"
    else:
        monkeypatch.setattr(heap_kernel, "AVAILABLE", False)
    return request.param


def reference_topk(queries: np.ndarray, corpus: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute force: all scores in float64, order by (score desc, index asc), pad with -inf / -1."""
    scores = queries.astype(np.float64) @ corpus.astype(np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(scores, order, axis=1).astype(np.float32)
    pad = k - order.shape[1]
    if pad > 0:
        top = np.pad(top, ((0, 0), (0, pad)), constant_values=-np.inf)
        order = np.pad(order, ((0, 0), (0, pad)), constant_values=-1)
    return top, order.astype(np.int64)


def random_data(nq: int, n: int, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((nq, dim), dtype=np.float32), rng.standard_normal((n, dim), dtype=np.float32)


def tied_data(nq: int, n: int, dim: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Small integers: every dot product is exact in float32, and many are equal."""
    rng = np.random.default_rng(seed)
    return (rng.integers(-1, 2, (nq, dim)).astype(np.float32), rng.integers(-1, 2, (n, dim)).astype(np.float32))


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
@pytest.mark.parametrize("query_batch_size", [1, 5, 100])
def test_exact_search_matches_bruteforce_for_any_chunking(chunk_size: int, query_batch_size: int) -> None:
    queries, corpus = random_data(13, 1000)
    scores, ids = exact_search(queries, corpus, 10, corpus_chunk_size=chunk_size, query_batch_size=query_batch_size)
    ref_scores, ref_ids = reference_topk(queries, corpus, 10)  # chunks >= 160 use the grid pre-selection
    assert scores.dtype == np.float32 and ids.dtype == np.int64 and ids.shape == (13, 10)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("topk", [3, 25])  # k=3 on wide chunks goes through the grid pre-selection
@pytest.mark.parametrize("chunk_size", [1, 3, 16, 500])
def test_exact_search_breaks_ties_by_lower_index(chunk_size: int, topk: int) -> None:
    queries, corpus = tied_data(20, 150)
    scores, ids = exact_search(queries, corpus, topk, corpus_chunk_size=chunk_size, query_batch_size=7)
    ref_scores, ref_ids = reference_topk(queries, corpus, topk)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(scores, ref_scores)


def test_exact_search_pads_when_topk_exceeds_corpus() -> None:
    queries, corpus = random_data(4, 6)
    scores, ids = exact_search(queries, corpus, 10, corpus_chunk_size=4)
    ref_scores, ref_ids = reference_topk(queries, corpus, 10)
    np.testing.assert_array_equal(ids, ref_ids)
    assert (ids[:, 6:] == -1).all() and np.isneginf(scores[:, 6:]).all()
    np.testing.assert_allclose(scores[:, :6], ref_scores[:, :6], rtol=1e-5, atol=1e-5)


def test_exact_search_on_empty_corpus_returns_only_padding() -> None:
    queries, _ = random_data(3, 1)
    scores, ids = exact_search(queries, np.zeros((0, 16), np.float32), 2)
    assert ids.tolist() == [[-1, -1]] * 3 and np.isneginf(scores).all()


def test_exact_search_accepts_memmap_tensor_and_block_iterable(tmp_path) -> None:
    queries, corpus = random_data(9, 300)
    path = tmp_path / "corpus.f32"
    corpus.tofile(path)
    mapped = np.memmap(path, dtype=np.float32, mode="r", shape=corpus.shape)
    blocks = ((start, corpus[start:start + 70]) for start in range(0, 300, 70))
    ref = reference_topk(queries, corpus, 12)
    for source in (mapped, torch.from_numpy(corpus), blocks):
        scores, ids = exact_search(torch.from_numpy(queries), source, 12, corpus_chunk_size=50)
        np.testing.assert_array_equal(ids, ref[1])
        np.testing.assert_allclose(scores, ref[0], rtol=1e-5, atol=1e-5)


def test_exact_search_is_deterministic_across_runs() -> None:
    queries, corpus = tied_data(10, 80, seed=3)
    first = exact_search(queries, corpus, 30, corpus_chunk_size=9)
    second = exact_search(queries, corpus, 30, corpus_chunk_size=9)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_exact_search_rejects_dim_mismatch_nan_and_bad_blocks() -> None:
    queries, corpus = random_data(2, 10)
    with pytest.raises(InputError, match="dim 8"):
        exact_search(queries, corpus[:, :8], 3)
    bad = corpus.copy()
    bad[4, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        exact_search(queries, bad, 3)  # narrow block: plain path
    with pytest.raises(InputError, match="NaN"):
        exact_search(queries, np.concatenate([bad] * 10), 1, corpus_chunk_size=50)  # wide: grid path
    with pytest.raises(InputError, match="offset"):
        exact_search(queries, [corpus], 3)
    with pytest.raises(ConfigError, match="topk"):
        exact_search(queries, corpus, 0)


def test_heapq_keeps_running_topk_with_explicit_indices() -> None:
    torch.manual_seed(0)
    scores = torch.randn(5, 40)
    doc_ids = torch.randperm(1000)[:40]  # arbitrary, non-contiguous corpus indices
    heap = FastResultHeapq(topk=8)
    for start in range(0, 40, 11):
        heap.add(scores[:, start:start + 11], doc_ids[start:start + 11])
    top_scores, top_ids = heap.results()
    full = scores.numpy()
    order = np.argsort(-full, axis=1, kind="stable")[:, :8]
    np.testing.assert_array_equal(top_ids.numpy(), doc_ids.numpy()[order])
    np.testing.assert_array_equal(top_scores.numpy(), np.take_along_axis(full, order, 1))
    assert top_scores.dtype == torch.float32 and top_ids.dtype == torch.int64


def test_heapq_with_offsets_pads_and_sorts_descending() -> None:
    heap = FastResultHeapq(topk=4)
    heap.add(torch.tensor([[1.0, 3.0]]), offset=10)
    heap.add(torch.tensor([[3.0]]), offset=2)
    top_scores, top_ids = heap.results()
    assert top_ids.tolist() == [[2, 11, 10, -1]]
    assert top_scores[0, :3].tolist() == [3.0, 3.0, 1.0] and torch.isneginf(top_scores[0, 3])


def test_heapq_rejects_results_before_add_and_changing_query_count() -> None:
    heap = FastResultHeapq(topk=2)
    with pytest.raises(ConfigError):
        heap.results()
    heap.add(torch.zeros(3, 4))
    with pytest.raises(ConfigError, match="query rows"):
        heap.add(torch.zeros(2, 4), offset=4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merge_topk_of_random_shards_equals_unsharded_search(seed: int) -> None:
    queries, corpus = tied_data(12, 120, seed=seed) if seed == 2 else random_data(12, 120, seed=seed)
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, 120), size=4, replace=False))
    bounds = [0, *cuts.tolist(), 120]
    parts = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        blocks = [(lo, corpus[lo:hi])]
        parts.append(exact_search(queries, blocks, 15, corpus_chunk_size=8))
    rng.shuffle(parts)
    merged_scores, merged_ids = merge_topk(parts)
    full_scores, full_ids = exact_search(queries, corpus, 15)
    np.testing.assert_array_equal(merged_ids, full_ids)
    # BLAS may round differently for different block shapes: scores agree to float32 precision
    np.testing.assert_allclose(merged_scores, full_scores, rtol=1e-6, atol=1e-5)


def test_merge_topk_keeps_tensor_type_and_padding() -> None:
    a = (torch.tensor([[2.0, float("-inf")]]), torch.tensor([[5, -1]]))
    b = (torch.tensor([[2.0, 1.0]]), torch.tensor([[3, 9]]))
    scores, ids = merge_topk([a, b], topk=4)
    assert isinstance(ids, torch.Tensor)
    assert ids.tolist() == [[3, 5, 9, -1]]


def test_exact_search_backend_matches_function() -> None:
    queries, corpus = random_data(6, 50)
    backend = ExactSearch(corpus, corpus_chunk_size=13)
    got = backend.search(queries, 5)
    ref = exact_search(queries, corpus, 5)
    np.testing.assert_array_equal(got[1], ref[1])
    with pytest.raises(ConfigError, match="iterable"):
        ExactSearch(iter([(0, corpus)]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_exact_search_on_cuda_matches_cpu() -> None:
    queries, corpus = random_data(8, 500)
    cpu = exact_search(queries, corpus, 20)
    gpu = exact_search(queries, corpus, 20, device="cuda", corpus_chunk_size=64)
    np.testing.assert_array_equal(cpu[1], gpu[1])


def _mapped_rss_kib(path) -> int:
    """Resident KiB of the mappings of ``path`` in this process (from /proc/self/smaps)."""
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        if "-" in line.split(" ", 1)[0] and len(line.split()) >= 5:  # a mapping header line
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def test_exact_search_releases_memmap_pages_so_rss_stays_at_chunk_size(tmp_path) -> None:
    queries, corpus = random_data(4, 16384, dim=64)  # 4 MiB file, 64 KiB chunks
    path = tmp_path / "corpus.f32"
    corpus.tofile(path)
    mapped = np.memmap(path, dtype=np.float32, mode="r", shape=corpus.shape)
    np.asarray(mapped[:256]).sum()  # touch one chunk: the mapping is resident, so the probe works
    assert _mapped_rss_kib(path) >= 64
    exact_search(queries, mapped, 5, corpus_chunk_size=256)
    assert _mapped_rss_kib(path) <= 2 * 64 + 8  # ~one chunk (+ pages shared with neighbours), not 4096


def test_exact_searcher_add_of_a_whole_memmapped_corpus_releases_its_pages(tmp_path) -> None:
    # the evaluator's precompute path hands over a whole shard in one add(): it is read in pieces
    queries, corpus = random_data(4, 40000, dim=64)  # 10 MiB file, 3 pieces of 16384 rows
    path = tmp_path / "corpus.f32"
    corpus.tofile(path)
    mapped = np.memmap(path, dtype=np.float32, mode="r", shape=corpus.shape)
    np.asarray(mapped[:256]).sum()
    assert _mapped_rss_kib(path) >= 64
    with ExactSearcher(queries, 5, threads=2) as searcher:
        searcher.add(0, mapped)
        got = searcher.results()
    assert _mapped_rss_kib(path) <= 64
    np.testing.assert_array_equal(got[1], exact_search(queries, corpus, 5)[1])


# --- threshold filtering (FastResultHeapq keeps each query's k-th best and scans later blocks for
# scores at or above it), checked against the same brute-force reference ---

def _heap_topk(blocks: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    heap, offset = FastResultHeapq(topk=k), 0
    for block in blocks:
        heap.add(torch.from_numpy(block), offset=offset)
        offset += block.shape[1]
    scores, ids = heap.results()
    return scores.numpy(), ids.numpy()


def _reference_from_scores(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


@pytest.mark.parametrize("width", [5, 200, 1000, 1003])  # narrow, grid without / with a ragged tail
def test_heapq_scores_equal_to_the_threshold_enter_by_lower_index(width: int) -> None:
    # every block repeats the k-th best score of the first block at many columns: those equal to the
    # threshold must still be compared by index (none of the later ones wins, all are candidates)
    k = 4
    first = np.array([[9.0, 8.0, 7.0, 6.0, 5.0, 1.0]] * 3, dtype=np.float32)
    later = np.full((3, width), 6.0, dtype=np.float32)
    later[1, ::7] = 7.0  # some above the threshold, tying the 3rd best
    later[2, -1] = 10.0
    scores = np.concatenate([first, later, later], axis=1)
    got = _heap_topk([first, later, later.copy()], k)
    ref = _reference_from_scores(scores, k)
    np.testing.assert_array_equal(got[1], ref[1])
    np.testing.assert_array_equal(got[0], ref[0])


def test_heapq_ties_with_unordered_explicit_indices_keep_the_lowest_index() -> None:
    # a later block may hold lower corpus indices (e.g. shards read out of order): a score equal to
    # the threshold with a lower index than the current k-th best must replace it
    heap = FastResultHeapq(topk=2)
    heap.add(torch.tensor([[5.0, 3.0, 1.0]] * 200), torch.tensor([10, 11, 12]))
    heap.add(torch.full((200, 300), 3.0), torch.arange(300) + 1000)  # ties, higher indices: no change
    heap.add(torch.tensor([[3.0, 2.0]] * 200), torch.tensor([4, 5]))  # tie, lower index: replaces 11
    scores, ids = heap.results()
    assert ids.tolist() == [[10, 4]] * 200
    assert scores.tolist() == [[5.0, 3.0]] * 200


@pytest.mark.parametrize("pattern", ["nothing_passes", "all_pass", "rising", "one_row_rising"])
def test_heapq_exact_when_no_or_every_score_passes_the_threshold(pattern: str) -> None:
    rng = np.random.default_rng(7)
    nq, width, k, nblocks = 6, 640, 20, 5
    scores = rng.standard_normal((nq, width * nblocks)).astype(np.float32)
    if pattern == "nothing_passes":  # the first block holds every winner
        scores[:, :width] += 100.0
    elif pattern == "all_pass":  # every block beats everything before it
        scores += np.repeat(np.arange(nblocks, dtype=np.float32) * 100.0, width)
    elif pattern == "rising":  # adversarial: each score beats all earlier ones
        scores = np.tile(np.arange(width * nblocks, dtype=np.float32), (nq, 1))
    else:  # one query rises (its block candidates exceed the per-row cap), the others do not
        scores[0] = np.arange(width * nblocks, dtype=np.float32)
    blocks = np.split(scores, nblocks, axis=1)
    got = _heap_topk(blocks, k)
    ref = _reference_from_scores(scores, k)
    np.testing.assert_array_equal(got[1], ref[1])
    np.testing.assert_array_equal(got[0], ref[0])


def test_heapq_reports_nan_found_by_the_threshold_pass() -> None:
    heap = FastResultHeapq(topk=5)
    heap.add(torch.randn(4, 500), offset=0)  # sets the thresholds
    later = torch.randn(4, 500) - 10.0  # nothing would pass: the NaN must still be seen
    later[2, 123] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        heap.add(later, offset=500)


def test_heapq_results_do_not_change_when_the_caller_reuses_the_score_buffer() -> None:
    buffer = torch.empty(3, 4)
    heap = FastResultHeapq(topk=8)  # k > block width: candidates are the block itself
    expected = []
    for step in range(4):
        buffer.copy_(torch.arange(12, dtype=torch.float32).view(3, 4) * (step + 1) % 7)
        expected.append(buffer.clone())
        heap.add(buffer, offset=4 * step)
    scores, ids = heap.results()
    ref = _reference_from_scores(torch.cat(expected, 1).numpy(), 8)
    np.testing.assert_array_equal(ids.numpy(), ref[1])


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_exact_search_with_worker_threads_matches_bruteforce(threads: int) -> None:
    queries, corpus = tied_data(37, 9000, dim=6, seed=5)  # many ties, several 4096-wide blocks
    before = torch.get_num_threads()
    scores, ids = exact_search(queries, corpus, 50, corpus_chunk_size=5000, query_batch_size=8,
                               threads=threads)
    assert torch.get_num_threads() == before  # the temporary single-thread setting is undone
    ref_scores, ref_ids = reference_topk(queries, corpus, 50)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(scores, ref_scores)


def test_exact_search_normalized_vectors_many_blocks_match_bruteforce() -> None:
    # the realistic case: thresholds rise block after block and later blocks pass almost nothing
    rng = np.random.default_rng(11)
    queries = rng.standard_normal((40, 32), dtype=np.float32)
    corpus = rng.standard_normal((30000, 32), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    scores, ids = exact_search(queries, corpus, 100, threads=2)
    ref_scores, ref_ids = reference_topk(queries, corpus, 100)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)
    # float32 vs float64 may swap near-ties; any other difference is a bug
    differ = ids != ref_ids
    assert differ.mean() < 0.002
    assert np.all(np.abs(scores[differ] - ref_scores[differ]) < 1e-5)


def test_exact_searcher_fed_block_by_block_equals_brute_force_and_rejects_other_dimensions() -> None:
    queries, corpus = tied_data(7, 50, seed=5)
    with ExactSearcher(torch.tensor(queries), topk=5) as searcher:
        for start in range(0, 50, 12):
            searcher.add(start, corpus[start:start + 12])
        with pytest.raises(InputError, match="dim 2"):
            searcher.add(0, corpus[:, :2])
        with pytest.raises(InputError, match="2-D"):
            searcher.add(0, corpus[0])
        scores, indices = searcher.results()
    ref_scores, ref_ids = reference_topk(queries, corpus, 5)
    np.testing.assert_array_equal(indices, ref_ids)
    np.testing.assert_array_equal(scores, ref_scores)
    assert scores.dtype == np.float32 and indices.dtype == np.int64


def test_exact_searcher_equals_exact_search_for_blocks_of_any_size_and_order(tmp_path) -> None:
    queries, corpus = tied_data(600, 20000, dim=6, seed=8)  # 2 query batches, ties, several 4096 blocks
    path = tmp_path / "corpus.f32"
    corpus.tofile(path)
    mapped = np.memmap(path, dtype=np.float32, mode="r", shape=corpus.shape)
    expected = exact_search(queries, corpus, 40, threads=2)
    np.testing.assert_array_equal(expected[1], reference_topk(queries, corpus, 40)[1])
    cuts = [0, 1, 4096, 5000, 19999, 20000]  # ragged, unaligned, one-row and empty blocks
    for source in (corpus, mapped, torch.from_numpy(corpus)):
        for order in (slice(None), slice(None, None, -1)):  # blocks in corpus order and reversed
            with ExactSearcher(queries, 40, threads=2) as searcher:
                for lo, hi in list(zip(cuts[:-1], cuts[1:]))[order]:
                    searcher.add(lo, source[lo:hi])
                searcher.add(20000, corpus[:0])
                got = searcher.results()
            np.testing.assert_array_equal(got[1], expected[1])
            np.testing.assert_array_equal(got[0], expected[0])


def test_exact_searcher_without_blocks_and_without_queries() -> None:
    queries, corpus = random_data(3, 10)
    with ExactSearcher(queries, 4) as searcher:
        scores, ids = searcher.results()  # an empty corpus: only padding
    assert ids.tolist() == [[-1] * 4] * 3 and np.isneginf(scores).all()
    with ExactSearcher(queries[:0], 4, threads=2) as searcher:
        searcher.add(0, corpus)
        scores, ids = searcher.results()
    assert scores.shape == ids.shape == (0, 4)


def test_exact_searcher_refuses_use_after_close_or_after_a_failed_add() -> None:
    queries, corpus = random_data(5, 40)
    searcher = ExactSearcher(queries, 3, threads=2)
    searcher.add(0, corpus[:20])
    partial = searcher.results()
    searcher.close()
    searcher.close()  # twice is fine; results stay
    np.testing.assert_array_equal(searcher.results()[1], partial[1])
    with pytest.raises(ConfigError, match="close"):
        searcher.add(20, corpus[20:])
    with pytest.raises(ConfigError, match="offset"):
        ExactSearcher(queries, 3).add(-1, corpus)
    bad = corpus.copy()
    bad[3, 1] = np.nan
    with ExactSearcher(queries, 3, threads=2) as searcher:
        with pytest.raises(InputError, match="NaN"):
            searcher.add(0, bad)
        with pytest.raises(ConfigError, match="failed"):
            searcher.results()
        with pytest.raises(ConfigError, match="failed"):
            searcher.add(40, corpus)


def test_order_keys_round_trip_and_order_scores_desc_then_lower_index() -> None:
    scores = np.array([1.5, -0.0, 0.0, -2.0, 1.5, -np.inf, 3.0], dtype=np.float32)
    indices = np.array([7, 3, 2, 9, 4, -1, 0], dtype=np.int64)
    keys = heap_kernel.order_keys(scores, indices)
    back_scores, back_indices = heap_kernel.decode_keys(keys)
    np.testing.assert_array_equal(back_indices, indices)
    np.testing.assert_array_equal(back_scores, scores + np.float32(0.0))  # -0.0 comes back as 0.0
    ranked = indices[np.argsort(-keys, kind="stable")]
    assert ranked.tolist() == [0, 4, 7, 2, 3, 9, -1]  # 0.0 and -0.0 tie: lower index first; padding last
    assert heap_kernel.PADDING_KEY == int(keys[indices == -1][0])
