"""Distributed inference: 2 gloo processes give the same run, metrics and mined negatives as 1 process."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from densekit.data.formats import read_qrels, read_run
from tests.helpers import write_beir
from tests.test_evaluation_evaluator import make_evaluator

WORLD = 2


def evaluate_and_mine(model_dir, beir, out, cache):
    evaluator = make_evaluator(model_dir, beir, out, search_topk=8, encoding_block_size=4,
                               per_device_matmul_batch_size=5, encoding_cache_dir=str(cache),
                               no_annot_in_mined_hn=True)
    metrics = evaluator.evaluate()
    evaluator.mine_hard_negatives()
    return metrics


def worker(rank, init_file, model_dir, beir, out, cache, broadcast):
    torch.set_num_threads(1)  # first: a forked child must not touch the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        evaluator = make_evaluator(model_dir, beir, out, search_topk=8, encoding_block_size=4,
                                   per_device_matmul_batch_size=5, encoding_cache_dir=str(cache),
                                   no_annot_in_mined_hn=True, broadcast_output=broadcast)
        metrics = evaluator.evaluate()
        evaluator.mine_hard_negatives()
        with open(out / f"rank{rank}.json", "w") as handle:
            json.dump(metrics, handle)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("broadcast", [True, False])
def test_two_processes_match_one_process(tiny_model_dir, tmp_path, broadcast):
    torch.set_num_threads(1)
    beir = write_beir(tmp_path / "beir", graded=True)
    single = evaluate_and_mine(tiny_model_dir, beir, tmp_path / "single", tmp_path / "cache1")
    mp.start_processes(worker, args=(tmp_path / "init", tiny_model_dir, beir, tmp_path / "multi",
                                     tmp_path / "cache2", broadcast),
                       nprocs=WORLD, start_method="fork", join=True)
    run_one, run_two = read_run(tmp_path / "single" / "run.trec"), read_run(tmp_path / "multi" / "run.trec")
    assert run_one.keys() == run_two.keys()
    for qid in run_one:
        ranked_one = sorted(run_one[qid], key=lambda d: -run_one[qid][d])
        ranked_two = sorted(run_two[qid], key=lambda d: -run_two[qid][d])
        assert ranked_one == ranked_two
        np.testing.assert_allclose([run_one[qid][d] for d in ranked_one], [run_two[qid][d] for d in ranked_two],
                                   atol=1e-5)
    rank0 = json.loads((tmp_path / "multi" / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "multi" / "rank1.json").read_text())
    assert rank0 == pytest.approx(single, abs=1e-6)
    assert rank1 == (rank0 if broadcast else {})
    metrics_file = json.loads((tmp_path / "multi" / "metrics.json").read_text())
    assert metrics_file["settings"]["processes"] == 2
    mined_one = read_qrels(tmp_path / "single" / "mined_qrels.tsv")
    mined_two = read_qrels(tmp_path / "multi" / "mined_qrels.tsv")
    assert mined_one.keys() == mined_two.keys()
    for qid in mined_one:
        assert mined_one[qid] == pytest.approx(mined_two[qid], abs=1e-5)


def encode_then_search_worker(rank, init_file, model_dir, beir, out, cache):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        encoder = make_evaluator(model_dir, beir, out, search_topk=8, encoding_block_size=4,
                                 encoding_cache_dir=str(cache))
        encoded = encoder.encode()["encoded"]
        searcher = make_evaluator(model_dir, beir, out, search_topk=8, encoding_block_size=4,
                                  encoding_cache_dir=str(cache))
        result = searcher.search()
        np.save(out / f"indices{rank}.npy", result.indices)
        with open(out / f"counts{rank}.json", "w") as handle:
            json.dump({"encoded": encoded, "search_encoded": searcher.embedder.rows_encoded}, handle)
    finally:
        dist.destroy_process_group()


def test_distributed_encode_writes_the_entries_search_reuses(tiny_model_dir, tmp_path):
    """encode() shards like search(): each rank encodes its share once, and search() encodes nothing."""
    torch.set_num_threads(1)
    beir = write_beir(tmp_path / "beir", graded=True)
    single = make_evaluator(tiny_model_dir, beir, tmp_path / "single", search_topk=8).search()
    (tmp_path / "multi").mkdir()
    mp.start_processes(encode_then_search_worker, args=(tmp_path / "init", tiny_model_dir, beir, tmp_path / "multi",
                                                       tmp_path / "cache"),
                       nprocs=WORLD, start_method="fork", join=True)
    counts = [json.loads((tmp_path / "multi" / f"counts{r}.json").read_text()) for r in range(WORLD)]
    assert sum(c["encoded"] for c in counts) == 6 + 18  # every text once, split between the ranks
    assert all(c["encoded"] > 0 for c in counts)
    assert [c["search_encoded"] for c in counts] == [0, 0]
    for r in range(WORLD):
        np.testing.assert_array_equal(np.load(tmp_path / "multi" / f"indices{r}.npy"), single.indices)
