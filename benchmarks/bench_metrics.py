"""densekit.evaluation.metrics.compute_metrics vs pytrec_eval on a synthetic search result.

Both get the same run: densekit the (queries x depth) index/score matrices search returns, pytrec_eval the
``{qid: {docid: score}}`` dict it needs. Building that dict is timed on its own and counted for neither;
pytrec_eval's time is ``RelevanceEvaluator(qrels, measures).evaluate(run)``. densekit's time includes
everything (validation, qrels conversion, ordering, lookup, measures, per-query dicts).

    python benchmarks/bench_metrics.py --queries 1000 --depth 1000
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pytrec_eval

from densekit.evaluation.metrics import compute_metrics

OURS = ["nDCG@10", "Recall@100", "MRR", "MAP"]
TREC = {"ndcg_cut.10": "nDCG@10", "recall.100": "Recall@100", "recip_rank": "MRR", "map": "MAP"}


def synthetic_run(queries: int, depth: int, docs: int, tie_fraction: float = 0.01, seed: int = 0):
    """Sorted top-`depth` lists over a `docs`-id corpus, and ~6 judgments (labels 0-2) per query.

    Scores are float32 like a dense retriever's; `tie_fraction` of the entries repeat the score of the
    entry above them (duplicate documents, quantized scores), which sends them through tie-breaking.
    """
    rng = np.random.default_rng(seed)
    doc_ids = [f"doc{i}" for i in range(docs)]
    query_ids = [f"q{i}" for i in range(queries)]
    start = rng.integers(0, docs, size=(queries, 1))
    stride = 7919  # prime: distinct documents within a row as long as docs is not a multiple of it
    indices = (start + np.arange(depth) * stride) % docs
    indices = np.take_along_axis(indices, np.argsort(rng.random((queries, depth)), axis=1), axis=1)
    scores = np.sort(rng.normal(size=(queries, depth)).astype(np.float32), axis=1)[:, ::-1].copy()
    tied = np.flatnonzero(rng.random(queries * depth) < tie_fraction)
    tied = tied[tied % depth > 0]
    scores.reshape(-1)[tied] = scores.reshape(-1)[tied - 1]
    scores = np.minimum.accumulate(scores, axis=1)  # copying may chain: keep rows sorted
    qrels = {}
    for row, qid in enumerate(query_ids):
        hits = rng.choice(depth, size=3, replace=False)
        judged = {doc_ids[i]: int(rng.integers(0, 3)) for i in indices[row, hits]}
        judged.update({doc_ids[i]: int(rng.integers(0, 3)) for i in rng.integers(0, docs, size=3)})
        qrels[qid] = judged
    return qrels, query_ids, indices.astype(np.int64), np.ascontiguousarray(scores), doc_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--depth", type=int, default=1_000)
    parser.add_argument("--docs", type=int, default=100_000, help="corpus size")
    parser.add_argument("--tie-fraction", type=float, default=0.01, help="share of entries tied with the one above")
    parser.add_argument("--repeat", type=int, default=1, help="best of this many timings")
    args = parser.parse_args()

    qrels, query_ids, indices, scores, doc_ids = synthetic_run(args.queries, args.depth, args.docs, args.tie_fraction)

    ours_s = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        ours = compute_metrics(qrels, query_ids, indices, scores, doc_ids, OURS)
        ours_s = min(ours_s, time.perf_counter() - t0)

    t0 = time.perf_counter()
    run = {q: {doc_ids[d]: float(s) for d, s in zip(row_i, row_s)}
           for q, row_i, row_s in zip(query_ids, indices.tolist(), scores.tolist())}
    dict_s = time.perf_counter() - t0

    peer_s = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        ref = pytrec_eval.RelevanceEvaluator(qrels, set(TREC)).evaluate(run)
        peer_s = min(peer_s, time.perf_counter() - t0)

    max_diff = max(abs(ours.per_query[name][qid] - values[trec.replace(".", "_")])
                   for qid, values in ref.items() for trec, name in TREC.items())
    print("| queries | depth | corpus | tie fraction | densekit s | pytrec_eval s | run dict build s | speedup "
          "| max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.queries} | {args.depth} | {args.docs} | {args.tie_fraction} | {ours_s:.3f} | {peer_s:.3f} "
          f"| {dict_s:.3f} "
          f"| {peer_s / ours_s:.1f}x | {max_diff:.1e} |")


if __name__ == "__main__":
    main()
