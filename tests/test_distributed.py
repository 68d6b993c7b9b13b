"""distributed helpers: single-process fallbacks, shard ranges, a 2-process gloo run whose gradients
equal one process's full-batch gradients (gather_with_grad + loss * world_size + DDP averaging), and a
2-process gloo search (all_gather_rows + merge_topk_across_ranks) equal to one process's search."""
from __future__ import annotations

import datetime
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from densekit import distributed
from densekit.errors import ConfigError
from densekit.modeling.grad_cache import grad_cache_step
from densekit.modeling.losses import InfoNCELoss
from densekit.search import ExactSearcher, exact_search

WORLD, Q, G, VOCAB, LENGTH = 2, 6, 2, 50, 5


class BagEncoder(torch.nn.Module):
    """A tiny deterministic encoder: embedding, masked mean, linear."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, 8)
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, input_ids, attention_mask):
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1)
        return self.proj(pooled)


def make_data():
    g = torch.Generator().manual_seed(0)
    def batch(rows):
        return {"input_ids": torch.randint(0, VOCAB, (rows, LENGTH), generator=g),
                "attention_mask": (torch.rand(rows, LENGTH, generator=g) > 0.3).long().clamp_min(
                    torch.nn.functional.one_hot(torch.zeros(rows, dtype=torch.long), LENGTH))}
    return batch(Q), batch(Q * G)


def make_model():
    torch.manual_seed(0)
    return BagEncoder()


def rows(inputs, r):
    return {k: v[r.start:r.stop] for k, v in inputs.items()}


def global_loss(q_reps, p_reps):
    """InfoNCE of all (gathered) queries against all (gathered) passages, groups in rank order."""
    q_all = distributed.gather_with_grad(q_reps)
    p_all = distributed.gather_with_grad(p_reps)
    label = torch.tensor([[1] + [0] * (G - 1)] * q_all.shape[0])
    return InfoNCELoss(temperature=0.5)(q_all @ p_all.T, label)


def reference_grads():
    model = make_model()
    queries, passages = make_data()
    global_loss(model(**queries), model(**passages)).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def worker(rank, init_file, out_dir):
    torch.set_num_threads(1)  # first: a forked child must not touch the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        queries, passages = make_data()
        q_rows = distributed.shard_range(Q, rank, WORLD)
        p_rows = range(q_rows.start * G, q_rows.stop * G)
        my_q, my_p = rows(queries, q_rows), rows(passages, p_rows)

        # (1) plain: gathered loss * world, gradients all-reduced and averaged by hand
        model = make_model()
        loss = global_loss(model(**my_q), model(**my_p))
        (loss * distributed.world_size()).backward()
        manual = {}
        for name, p in model.named_parameters():
            dist.all_reduce(p.grad)
            manual[name] = p.grad / WORLD

        # (2) DDP + gradient cache with uneven chunks: DDP averages, no_sync until the last chunk
        ddp = torch.nn.parallel.DistributedDataParallel(make_model())
        cached_loss = grad_cache_step(lambda b: ddp(**b), my_q, my_p,
                                      lambda q, p: global_loss(q, p) * distributed.world_size(),
                                      query_chunk_size=2, passage_chunk_size=4, model=ddp)
        ddp_grads = {n: p.grad.clone() for n, p in ddp.module.named_parameters()}

        # (3) gather of uneven row counts, in rank order
        uneven = torch.full((rank + 1, 2), float(rank))
        gathered = distributed.gather_with_grad(uneven)

        torch.save({"manual": manual, "ddp": ddp_grads, "loss": float(loss.detach()), "cached_loss": float(cached_loss),
                    "gathered": gathered, "rank": distributed.rank(), "world": distributed.world_size()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_process_gathered_loss_times_world_size_gives_full_batch_gradients(tmp_path):
    # fork, not spawn: the children inherit the imported torch (and torch._dynamo, which DDP's
    # constructor imports) instead of re-importing them, which takes most of this test's time
    import torch._dynamo  # noqa: F401

    mp.start_processes(worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True,
                       start_method="fork")
    reference = reference_grads()
    model = make_model()
    queries, passages = make_data()
    with torch.no_grad():
        ref_loss = float(global_loss(model(**queries), model(**passages)))
    for rank in range(WORLD):
        out = torch.load(tmp_path / f"rank{rank}.pt")
        assert (out["rank"], out["world"]) == (rank, WORLD)
        assert out["loss"] == pytest.approx(ref_loss, abs=1e-6)
        assert out["cached_loss"] == pytest.approx(ref_loss * WORLD, abs=1e-5)
        for kind in ("manual", "ddp"):
            for name, grad in reference.items():
                assert torch.allclose(out[kind][name], grad, atol=1e-5), (kind, name)
        assert out["gathered"].tolist() == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]
    assert any(float(g.abs().sum()) > 0 for g in reference.values())


def test_without_process_group_helpers_report_a_single_process():
    assert not distributed.is_distributed()
    assert (distributed.rank(), distributed.world_size()) == (0, 1)
    t = torch.randn(3, 2, requires_grad=True)
    assert distributed.gather_with_grad(t) is t


@pytest.mark.parametrize("n, world", [(10, 3), (2, 4), (0, 2), (7, 1)])
def test_shard_ranges_are_contiguous_balanced_and_cover_everything(n, world):
    shards = [distributed.shard_range(n, r, world) for r in range(world)]
    assert [i for s in shards for i in s] == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


@pytest.mark.parametrize("n, rank, world", [(5, 2, 2), (5, -1, 2), (5, 0, 0), (-1, 0, 1)])
def test_shard_range_rejects_impossible_arguments(n, rank, world):
    with pytest.raises(ConfigError):
        distributed.shard_range(n, rank, world)


# --- tensor collectives for the evaluator: query rows gathered and top-k lists merged without pickling ---

SEARCH_NQ, SEARCH_DOCS, SEARCH_K = 45, 3000, 20


def search_data():
    """Small integers: dot products are exact in float32 and many tie, so tie order is checked too."""
    rng = np.random.default_rng(3)
    return (rng.integers(-2, 3, (SEARCH_NQ, 6)).astype(np.float32),
            rng.integers(-2, 3, (SEARCH_DOCS, 6)).astype(np.float32))


def search_worker(rank, init_file, out_dir):
    torch.set_num_threads(1)  # first: a forked child must not touch the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=120))  # a hung collective fails the test
    try:
        out = {}
        # uneven rows, a rank without rows (None), 1-D int arrays, an empty array on one rank
        out["a"] = distributed.all_gather_rows(np.full((3, 4), 1.5, np.float32) if rank == 0 else None)
        out["b"] = distributed.all_gather_rows(np.arange(2 + 3 * rank, dtype=np.int64) + 10 * rank)
        out["c"] = distributed.all_gather_rows(np.ones((2, 4), np.float16) if rank else np.ones((0, 4), np.float16))
        try:
            distributed.all_gather_rows(np.ones((2, 4 + rank), np.float32))
        except ConfigError as error:
            out["mismatch"] = np.array([str(error)])
        # the evaluator's pattern: query shards gathered, corpus shards searched, top-k merged
        queries, corpus = search_data()
        q_rows = distributed.shard_range(SEARCH_NQ, rank, WORLD)
        c_rows = distributed.shard_range(SEARCH_DOCS, rank, WORLD)
        all_queries = distributed.all_gather_rows(queries[q_rows.start:q_rows.stop])
        out["queries"] = all_queries
        with ExactSearcher(all_queries, SEARCH_K, threads=2) as searcher:
            for start in range(c_rows.start, c_rows.stop, 700):
                searcher.add(start, corpus[start:min(start + 700, c_rows.stop)])
            scores, indices = searcher.results()
        distributed._MERGE_ELEMENTS = 7 * SEARCH_K  # several slices of queries
        out["all_scores"], out["all_ids"] = distributed.merge_topk_across_ranks(scores, indices, SEARCH_K)
        root = distributed.merge_topk_across_ranks(scores, indices, SEARCH_K - 5, to_all=False)
        if rank == 0:
            out["root_scores"], out["root_ids"] = root
        else:
            out["root_is_none"] = np.array([root is None])
        np.savez(os.path.join(out_dir, f"search{rank}.npz"), **out)
    finally:
        dist.destroy_process_group()


def test_two_process_row_gather_and_topk_merge_equal_one_process_search(tmp_path):
    mp.start_processes(search_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True,
                       start_method="fork")
    queries, corpus = search_data()
    ref_scores, ref_ids = exact_search(queries, corpus, SEARCH_K)
    for rank in range(WORLD):
        out = np.load(tmp_path / f"search{rank}.npz")
        np.testing.assert_array_equal(out["a"], np.full((3, 4), 1.5, np.float32))
        assert out["b"].tolist() == [0, 1, 10, 11, 12, 13, 14]
        assert out["c"].dtype == np.float16 and out["c"].shape == (2, 4)
        assert "trailing shapes" in str(out["mismatch"][0])
        np.testing.assert_array_equal(out["queries"], queries)
        np.testing.assert_array_equal(out["all_ids"], ref_ids)
        np.testing.assert_array_equal(out["all_scores"], ref_scores)
    root = np.load(tmp_path / "search0.npz")
    np.testing.assert_array_equal(root["root_ids"], ref_ids[:, :SEARCH_K - 5])
    np.testing.assert_array_equal(root["root_scores"], ref_scores[:, :SEARCH_K - 5])
    assert np.load(tmp_path / "search1.npz")["root_is_none"].tolist() == [True]


def test_collectives_without_process_group_return_the_local_data():
    rows = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.testing.assert_array_equal(distributed.all_gather_rows(rows), rows)
    with pytest.raises(ConfigError):
        distributed.all_gather_rows(None)
    scores, ids = distributed.merge_topk_across_ranks(np.array([[1.0, 3.0]], np.float32), np.array([[4, 2]]), 3)
    assert ids.tolist() == [[2, 4, -1]] and scores[0, :2].tolist() == [3.0, 1.0]
