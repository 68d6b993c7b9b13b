"""Negatives for judged queries that have none: random corpus documents, or the top of a retrieval run.

This is what seed 004's tutorial does by hand to turn ir_datasets / BEIR qrels into Tevatron training
files. Both exclude every document judged for the query (whatever its score), both are deterministic: the
random draw of the ``i``-th query (in the order given) uses ``example_rng(seed, 0, i)``.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from densekit.data.sampling import example_rng
from densekit.data.store import TextStore


def random_negatives(corpus: TextStore, qrels: Mapping[str, Mapping[str, float]], query_ids: Sequence[str],
                     num_negatives: int, seed: int = 42) -> dict[str, list[str]]:
    """``num_negatives`` distinct unjudged corpus documents per query (fewer only when the corpus is small)."""
    out: dict[str, list[str]] = {}
    n = len(corpus)
    for i, qid in enumerate(query_ids):
        judged = set(corpus.lookup(list(qrels.get(qid, {}))).tolist())
        available = n - len(judged - {-1})
        want = min(num_negatives, available)
        if want <= 0:
            out[qid] = []
            continue
        rng = example_rng(seed, 0, i)
        # one draw of want + |judged| distinct rows always holds `want` unjudged ones
        draw = rng.choice(n, size=min(n, want + len(judged)), replace=False).tolist()
        picks = [row for row in draw if row not in judged][:want]
        ids = corpus.table.column("_id").take(np.asarray(picks, dtype=np.int64)).to_pylist()
        out[qid] = ids
    return out


def run_negatives(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, float]],
                  query_ids: Sequence[str], depth: int = 30,
                  num_negatives: Optional[int] = None) -> dict[str, list[str]]:
    """Unjudged documents among the top ``depth`` of each query's run, best first (ties by doc id), at most
    ``num_negatives`` of them when given."""
    out: dict[str, list[str]] = {}
    for qid in query_ids:
        ranked = sorted(run.get(qid, {}).items(), key=lambda kv: (-kv[1], kv[0]))[:depth]
        judged = qrels.get(qid, {})
        docs = [d for d, _ in ranked if d not in judged]
        out[qid] = docs[:num_negatives] if num_negatives else docs
    return out
