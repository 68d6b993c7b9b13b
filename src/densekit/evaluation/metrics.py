"""IR metrics of a search result, computed on numpy arrays with exactly trec_eval's semantics.

Search gives a matrix of corpus indices and scores per query; turning that into ``{qid: {docid: score}}``
dicts for pytrec_eval costs more than the evaluation itself. Here the judgments become integer arrays once,
the relevant retrieved documents are found with ``searchsorted`` on integer keys, and every measure is a
weighted ``bincount`` over those few hits. ``benchmarks/bench_metrics.py`` compares it with pytrec_eval.

The numbers are those of ``pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)`` (trec_eval 9,
relevance level 1), query by query:

* Ranking: score descending, ties broken by document id descending (byte-wise string order), whatever
  the order of the input. Padding entries (index -1) are not part of the run.
* A document is relevant when its judgment is >= 1; nDCG uses the judgment itself as gain (judgments <= 0
  and unjudged documents gain nothing) and the ideal ranking of all judged documents of the query, also
  those that were not retrieved or are not in ``doc_ids``.
* Evaluated queries (the ones in ``per_query`` and in the mean) are the queries of the run that have at
  least one judgment in qrels, even if nothing was retrieved for them (all padding: every measure 0).
  Run queries without judgments are left out, and so are qrels queries absent from the run (trec_eval
  without ``-c``); both are counted in :class:`MetricResults` so that a mismatch is visible.
* ``P@k`` divides by k even when fewer than k documents were retrieved; ``Recall@k``, ``MAP`` and
  ``MAP@k`` divide by the number of relevant judgments (0 when there are none); ``MRR@k`` is trec_eval's
  ``recip_rank`` on the run cut to its first k documents.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Literal, Mapping, Optional, Sequence, Union

import numpy as np

from densekit.errors import ConfigError, InputError

MeasureKind = Literal["ndcg", "recall", "precision", "mrr", "map"]

DEFAULT_MEASURES: tuple[str, ...] = ("nDCG@10", "Recall@100", "MRR@10", "MAP")

# Entries (rows x depth) handled at once: bounds the memory of the temporary arrays.
_BLOCK_ENTRIES = 1 << 21


@dataclass(frozen=True)
class Measure:
    """One measure, with an optional rank cutoff; ``name`` is the single name used in every output."""

    kind: MeasureKind
    cutoff: Optional[int] = None

    @property
    def name(self) -> str:
        base = {"ndcg": "nDCG", "recall": "Recall", "precision": "P", "mrr": "MRR", "map": "MAP"}[self.kind]
        return base if self.cutoff is None else f"{base}@{self.cutoff}"

    @property
    def trec_name(self) -> Optional[str]:
        """The trec_eval measure computing the same number (None for MRR@k, which trec_eval lacks)."""
        if self.kind == "mrr":
            return "recip_rank" if self.cutoff is None else None
        if self.cutoff is None:
            return self.kind  # "ndcg" or "map"
        base = {"ndcg": "ndcg_cut", "recall": "recall", "precision": "P", "map": "map_cut"}[self.kind]
        return f"{base}.{self.cutoff}"

    def __str__(self) -> str:
        return self.name


# lower-cased base name -> (kind, cutoff required)
_BASES: dict[str, tuple[MeasureKind, bool]] = {
    "ndcg_cut": ("ndcg", True), "ndcg": ("ndcg", False),
    "recall": ("recall", True), "r": ("recall", True),
    "p": ("precision", True), "precision": ("precision", True),
    "recip_rank": ("mrr", False), "mrr": ("mrr", False),
    "map_cut": ("map", True), "map": ("map", False),
}
_NAME_RE = re.compile(r"^\s*([A-Za-z_]+?)(?:[._@](\d+(?:,\d+)*))?\s*$")
_ACCEPTED = (
    "trec_eval names (ndcg_cut.10, recall.100, P.10, map, map_cut.100, recip_rank, ndcg; "
    "several cutoffs as ndcg_cut.10,100), the same with '_' (ndcg_cut_10) and friendly names "
    "(nDCG@10, ndcg@10, Recall@100, R@100, P@10, MRR@10, MRR, MAP, MAP@100); names are case-insensitive"
)


def parse_measures(names: Union[str, Measure, Iterable[Union[str, Measure]], None]) -> list[Measure]:
    """Turn measure names in any accepted spelling into :class:`Measure` objects, in order, without repeats.

    ``None`` gives :data:`DEFAULT_MEASURES`. An unknown name raises :class:`ConfigError` listing the
    accepted spellings.
    """
    if names is None:
        names = DEFAULT_MEASURES
    if isinstance(names, (str, Measure)):
        names = [names]
    parsed: list[Measure] = []
    for name in names:
        for measure in _parse_one(name):
            if measure not in parsed:
                parsed.append(measure)
    if not parsed:
        raise ConfigError(f"No measure given. Accepted: {_ACCEPTED}.")
    return parsed


def _parse_one(name: Union[str, Measure]) -> list[Measure]:
    if isinstance(name, Measure):
        return [name]
    if not isinstance(name, str):
        raise ConfigError(f"Measure names are strings, got {name!r} ({type(name).__name__}). Accepted: {_ACCEPTED}.")
    match = _NAME_RE.match(name)
    entry = _BASES.get(match.group(1).lower()) if match else None
    if entry is None:
        raise ConfigError(f"Unknown measure {name!r}. Accepted: {_ACCEPTED}.")
    kind, needs_cutoff = entry
    cutoffs = [int(c) for c in match.group(2).split(",")] if match.group(2) else []
    if needs_cutoff and not cutoffs:
        raise ConfigError(f"Measure {name!r} needs a rank cutoff, e.g. '{match.group(1)}@10'. Accepted: {_ACCEPTED}.")
    if any(c < 1 for c in cutoffs):
        raise ConfigError(f"Measure {name!r}: the rank cutoff must be a positive integer. Accepted: {_ACCEPTED}.")
    return [Measure(kind, c) for c in cutoffs] if cutoffs else [Measure(kind, None)]


@dataclass
class MetricResults:
    """Mean and per-query values of each measure, keyed by the measure's canonical name.

    ``aggregate`` is the mean over the ``num_queries`` evaluated queries (see the module docstring);
    ``per_query`` maps measure name -> query id -> value.
    """

    aggregate: dict[str, float]
    per_query: dict[str, dict[str, float]]
    num_queries: int
    run_queries_without_judgments: int = 0
    judged_queries_missing_from_run: int = 0
    measures: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """A plain dict (``json.dump``-able) with the same fields."""
        return {
            "aggregate": dict(self.aggregate),
            "per_query": {m: dict(v) for m, v in self.per_query.items()},
            "num_queries": self.num_queries,
            "run_queries_without_judgments": self.run_queries_without_judgments,
            "judged_queries_missing_from_run": self.judged_queries_missing_from_run,
            "measures": list(self.measures),
        }


@dataclass
class _Judgments:
    """The qrels of the evaluated queries as arrays; rows are positions among the evaluated queries."""

    keys: np.ndarray          # sorted int64 row * num_docs + corpus index, relevant (>= 1) docs in the corpus
    rels: np.ndarray          # int64 judgment of each key
    relevant_doc: np.ndarray  # bool (num_docs + 1,): relevant to some query; the last slot serves index -1
    num_rel: np.ndarray       # int64 (rows,): judgments >= 1, including docs absent from the corpus
    gain_rows: np.ndarray     # row of each positive judgment, sorted by (row, gain descending)
    gain_rank: np.ndarray     # 0-based position of that judgment in the ideal ranking of its row
    gains: np.ndarray         # float64 gain (= judgment) of each positive judgment


def compute_metrics(
    qrels: Mapping[str, Mapping[str, int]],
    query_ids: Sequence[str],
    doc_indices: np.ndarray,
    scores: np.ndarray,
    doc_ids: Sequence[str],
    measures: Union[str, Iterable[Union[str, Measure]], None] = None,
) -> MetricResults:
    """Score a search result against qrels with trec_eval semantics.

    ``doc_indices`` (n, k) holds indices into ``doc_ids`` (-1 marks padding) and ``scores`` (n, k) their
    scores, in any order; row i belongs to ``query_ids[i]``. ``measures`` defaults to
    nDCG@10, Recall@100, MRR@10, MAP.
    """
    measure_list = parse_measures(measures)
    indices, values = _check_run(query_ids, doc_indices, scores, len(doc_ids))
    evaluated = [i for i, q in enumerate(query_ids) if qrels.get(q)]
    in_run = set(query_ids)
    missing = sum(1 for q, judged in qrels.items() if judged and q not in in_run)
    if not evaluated:
        raise InputError(
            f"None of the {len(query_ids)} run queries has a judgment in qrels "
            f"(e.g. run query {next(iter(query_ids), None)!r} vs qrels query {next(iter(qrels), None)!r}).",
            fix="check that the run and the qrels use the same query ids (and the right split).",
        )
    rows = np.asarray(evaluated, dtype=np.int64)
    qids = [query_ids[i] for i in evaluated]
    judgments = _judgment_arrays(qrels, qids, doc_ids)
    if len(evaluated) < len(query_ids):
        indices, values = indices[rows], values[rows]

    out = {m: np.zeros(len(qids), dtype=np.float64) for m in measure_list}
    step = max(1, _BLOCK_ENTRIES // max(1, indices.shape[1]))
    for start in range(0, len(qids), step):
        stop = min(start + step, len(qids))
        ranked = _trec_order(indices[start:stop], values[start:stop], doc_ids)
        hits = _relevant_hits(ranked, start, judgments, len(doc_ids))
        for m, column in _measure_block(stop - start, hits, start, judgments, measure_list).items():
            out[m][start:stop] = column

    return MetricResults(
        aggregate={m.name: float(v.mean()) for m, v in out.items()},
        per_query={m.name: dict(zip(qids, v.tolist())) for m, v in out.items()},
        num_queries=len(qids),
        run_queries_without_judgments=len(query_ids) - len(qids),
        judged_queries_missing_from_run=missing,
        measures=[m.name for m in measure_list],
    )


def evaluate_run_dict(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    measures: Union[str, Iterable[Union[str, Measure]], None] = None,
) -> MetricResults:
    """Same as :func:`compute_metrics` for a run given as ``{qid: {docid: score}}`` (e.g. a TREC run file)."""
    return compute_metrics(qrels, *run_arrays(run), measures)


def run_arrays(run: Mapping[str, Mapping[str, float]]) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """``(query_ids, doc_indices, scores, doc_ids)`` of a ``{qid: {docid: score}}`` run, the arrays that
    :func:`compute_metrics` and :func:`metrics_at_every_cutoff` read (rows padded with index -1)."""
    query_ids = list(run)
    doc_pos: dict[str, int] = {}
    depth = max((len(docs) for docs in run.values()), default=0)
    indices = np.full((len(query_ids), depth), -1, dtype=np.int64)
    values = np.zeros((len(query_ids), depth), dtype=np.float64)
    for row, qid in enumerate(query_ids):
        docs = run[qid]
        ids = [doc_pos.setdefault(d, len(doc_pos)) for d in docs]
        indices[row, : len(ids)] = ids
        values[row, : len(ids)] = list(docs.values())
    return query_ids, indices, values, list(doc_pos)


def metrics_at_every_cutoff(
    qrels: Mapping[str, Mapping[str, int]],
    query_ids: Sequence[str],
    doc_indices: np.ndarray,
    scores: np.ndarray,
    doc_ids: Sequence[str],
    max_k: int = 1000,
) -> dict[str, np.ndarray]:
    """Mean nDCG@k and Recall@k for every k = 1 .. K at once, K = min(``max_k``, run depth).

    A metric-vs-cutoff curve is 2 x 1000 measures; asking :func:`compute_metrics` (or pytrec_eval) for each
    would rank and match the run 1000 times. Here the run is ranked and matched once, as in
    :func:`compute_metrics` (same evaluated queries, same trec_eval semantics), and the per-rank gains
    become (queries x K) matrices whose running sums along the ranks are DCG@k, ideal DCG@k and the
    relevant documents found by k; value ``[k - 1]`` equals ``compute_metrics``'s nDCG@k / Recall@k.
    Returns ``{"k": 1..K, "nDCG": (K,), "Recall": (K,)}``.
    """
    indices, values = _check_run(query_ids, doc_indices, scores, len(doc_ids))
    evaluated = [i for i, q in enumerate(query_ids) if qrels.get(q)]
    if not evaluated:
        raise InputError(f"None of the {len(query_ids)} run queries has a judgment in qrels.",
                         fix="check that the run and the qrels use the same query ids (and the right split).")
    if max_k < 1:
        raise ConfigError(f"max_k must be a positive integer, got {max_k}.")
    rows = np.asarray(evaluated, dtype=np.int64)
    indices, values = indices[rows], values[rows]
    qids = [query_ids[i] for i in evaluated]
    judgments = _judgment_arrays(qrels, qids, doc_ids)
    depth = min(max_k, indices.shape[1])
    ndcg_sum = np.zeros(depth, dtype=np.float64)
    recall_sum = np.zeros(depth, dtype=np.float64)
    step = max(1, _BLOCK_ENTRIES // max(1, depth, indices.shape[1]))
    for start in range(0, len(qids) if depth else 0, step):
        stop = min(start + step, len(qids))
        ranked = _trec_order(indices[start:stop], values[start:stop], doc_ids)
        hit_rows, hit_cols, gains = _relevant_hits(ranked, start, judgments, len(doc_ids))
        within = hit_cols < depth
        hit_rows, hit_cols, gains = hit_rows[within], hit_cols[within], gains[within]
        dcg = np.zeros((stop - start, depth))
        dcg[hit_rows, hit_cols] = gains / np.log2(hit_cols + 2.0)
        found = np.zeros((stop - start, depth))
        found[hit_rows, hit_cols] = 1.0
        lo, hi = np.searchsorted(judgments.gain_rows, [start, stop])
        ideal_rows, ideal_rank = judgments.gain_rows[lo:hi] - start, judgments.gain_rank[lo:hi]
        keep = ideal_rank < depth
        ideal = np.zeros((stop - start, depth))
        ideal[ideal_rows[keep], ideal_rank[keep]] = judgments.gains[lo:hi][keep] / np.log2(ideal_rank[keep] + 2.0)
        dcg, ideal, found = np.cumsum(dcg, axis=1), np.cumsum(ideal, axis=1), np.cumsum(found, axis=1)
        ndcg_sum += np.where(ideal > 0, dcg / np.where(ideal > 0, ideal, 1.0), 0.0).sum(axis=0)
        num_rel = judgments.num_rel[start:stop].astype(np.float64)
        recall_sum += (found / np.where(num_rel > 0, num_rel, 1.0)[:, None]).sum(axis=0)
    return {"k": np.arange(1, depth + 1), "nDCG": ndcg_sum / len(qids), "Recall": recall_sum / len(qids)}


def _check_run(query_ids: Sequence[str], doc_indices, scores, num_docs: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate shapes, ranges, ids and scores; return int64 indices and float32/float64 scores."""
    indices = np.asarray(doc_indices)
    values = np.asarray(scores)
    if indices.ndim != 2 or values.shape != indices.shape:
        raise InputError(
            f"doc_indices {indices.shape} and scores {values.shape} must be two matrices of the same shape "
            "(queries x retrieved depth).", fix="pass the (n, k) arrays returned by search.")
    if len(query_ids) != indices.shape[0]:
        raise InputError(f"{len(query_ids)} query ids for {indices.shape[0]} rows of doc_indices.",
                         fix="pass one query id per row of the search result.")
    if indices.size and not np.issubdtype(indices.dtype, np.integer):
        raise InputError(f"doc_indices must be integers, got dtype {indices.dtype}.",
                         fix="pass the int64 indices returned by search.")
    indices = indices.astype(np.int64, copy=False)
    if values.dtype not in (np.float32, np.float64):  # float32 -> float64 is exact: keep float32 (half the memory)
        values = values.astype(np.float64)
    if indices.size:
        low, high = int(indices.min()), int(indices.max())
        if low < -1 or high >= num_docs:
            bad = low if low < -1 else high
            raise InputError(f"doc_indices contains {bad}, outside [-1, {num_docs}) (corpus of {num_docs} ids).",
                             fix="use -1 for padding and indices into doc_ids otherwise.")
    valid = indices >= 0
    if not np.isfinite(values).all() and not np.isfinite(values[valid]).all():  # padding may hold anything
        row = int(np.nonzero(~np.isfinite(np.where(valid, values, 0.0)))[0][0])
        raise InputError(f"Score NaN or infinite for query {query_ids[row]!r} (row {row}).",
                         fix="mark missing results with index -1 instead of a non-finite score.")
    if len(set(query_ids)) != len(query_ids):
        seen: set[str] = set()
        dup = next(q for q in query_ids if q in seen or seen.add(q))
        raise InputError(f"Query id {dup!r} appears in several rows.", fix="merge its results into one row.")
    if indices.shape[1] > 1:
        ordered = np.sort(indices, axis=1)
        repeated = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
        if repeated.any():
            row, col = (int(x[0]) for x in np.nonzero(repeated))
            raise InputError(
                f"Query {query_ids[row]!r} (row {row}) lists document index {int(ordered[row, col])} twice.",
                fix="remove duplicate documents from each ranked list (trec_eval rejects them too).")
    return indices, values


def _judgment_arrays(qrels: Mapping[str, Mapping[str, int]], qids: Sequence[str],
                     doc_ids: Sequence[str]) -> _Judgments:
    """Convert the judgments of the evaluated queries to arrays (one pass over the qrels, not the run)."""
    position = dict(zip(doc_ids, range(len(doc_ids))))
    num_docs = len(doc_ids)
    rows: list[int] = []
    docs: list[int] = []
    rels: list[int] = []
    for row, qid in enumerate(qids):
        for doc, rel in qrels[qid].items():
            try:
                label = int(rel)
            except (TypeError, ValueError):
                label = None
            if label is None or label != rel:
                raise InputError(f"Judgment of query {qid!r}, document {doc!r} is {rel!r}, not an integer.",
                                 fix="qrels relevance labels must be integers (trec_eval reads them as int).")
            rows.append(row)
            docs.append(position.get(doc, -1))
            rels.append(label)
    row_arr = np.asarray(rows, dtype=np.int64)
    doc_arr = np.asarray(docs, dtype=np.int64)
    rel_arr = np.asarray(rels, dtype=np.int64)

    known = (doc_arr >= 0) & (rel_arr >= 1)  # all the measures ignore the other judgments of retrieved docs
    keys = row_arr[known] * num_docs + doc_arr[known]
    order = np.argsort(keys, kind="stable")
    relevant_doc = np.zeros(num_docs + 1, dtype=bool)
    relevant_doc[doc_arr[known]] = True

    num_rel = np.bincount(row_arr[rel_arr >= 1], minlength=len(qids)).astype(np.int64)
    positive = rel_arr > 0
    gain_rows, gains = row_arr[positive], rel_arr[positive]
    ideal = np.lexsort((-gains, gain_rows))
    gain_rows, gains = gain_rows[ideal], gains[ideal].astype(np.float64)
    row_start = np.searchsorted(gain_rows, gain_rows, side="left")
    gain_rank = np.arange(len(gain_rows), dtype=np.int64) - row_start
    return _Judgments(keys=keys[order], rels=rel_arr[known][order], relevant_doc=relevant_doc, num_rel=num_rel,
                      gain_rows=gain_rows, gain_rank=gain_rank, gains=gains)


def _trec_order(indices: np.ndarray, values: np.ndarray, doc_ids: Sequence[str]) -> np.ndarray:
    """Reorder each row as trec_eval does: score descending, then doc id descending; padding last.

    Rows are sorted by score only (skipped when already sorted); then only the entries that share their
    score with a neighbour are re-sorted, by (row, tie group, doc id descending), with string ranks computed
    for those documents alone, so the cost follows the number of ties, not the size of the run.
    """
    valid = indices >= 0
    neg = -values if valid.all() else np.where(valid, -values, np.inf)
    if indices.shape[1] > 1 and not (neg[:, 1:] >= neg[:, :-1]).all():
        order = np.argsort(neg, axis=1, kind="stable")
        indices = np.take_along_axis(indices, order, axis=1)
        neg = np.take_along_axis(neg, order, axis=1)
    if indices.shape[1] < 2:
        return indices
    tied = (neg[:, 1:] == neg[:, :-1]) & np.isfinite(neg[:, 1:])  # entry j ties with entry j + 1
    if not tied.any():
        return indices
    in_tie = np.zeros(indices.shape, dtype=bool)
    in_tie[:, 1:] = tied
    in_tie[:, :-1] |= tied
    rows, cols = np.nonzero(in_tie)  # row-major: each tie group is a contiguous run of these entries
    group_start = np.ones(len(rows), dtype=bool)
    group_start[1:] = ~tied[rows[1:], cols[1:] - 1] | (rows[1:] != rows[:-1])
    group = np.cumsum(group_start)
    docs = indices[rows, cols]
    uniq, inverse = np.unique(docs, return_inverse=True)
    names = [doc_ids[i] for i in uniq.tolist()]
    string_rank = np.empty(len(uniq), dtype=np.int64)  # code point order = UTF-8 byte order = strcmp's
    string_rank[sorted(range(len(names)), key=names.__getitem__)] = np.arange(len(uniq))
    descending = len(uniq) - 1 - string_rank[inverse.reshape(-1)]
    order = np.argsort(group * len(uniq) + descending, kind="stable")  # one int64 key: (group, id desc)
    indices = indices.copy()
    indices[rows, cols] = docs[order]
    return indices


def _relevant_hits(ranked: np.ndarray, row_offset: int, judgments: _Judgments,
                   num_docs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, 0-based rank and gain of every retrieved relevant document, sorted by (row, rank).

    Only these few entries matter to the measures (unjudged, non-relevant and padding entries all gain
    nothing), so everything after this works on them instead of on the (rows x depth) matrix.
    """
    rows, cols = np.nonzero(judgments.relevant_doc[ranked])  # index -1 reads the always-False last slot
    if rows.size == 0 or judgments.keys.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float64)
    keys = (rows + row_offset) * num_docs + ranked[rows, cols]
    pos = np.minimum(np.searchsorted(judgments.keys, keys), judgments.keys.size - 1)
    hit = judgments.keys[pos] == keys
    return rows[hit], cols[hit], judgments.rels[pos[hit]].astype(np.float64)


def _measure_block(num_rows: int, hits: tuple[np.ndarray, np.ndarray, np.ndarray], row_offset: int,
                   judgments: _Judgments, measures: Sequence[Measure]) -> dict[Measure, np.ndarray]:
    """Every requested measure for a block of ranked rows, from its relevant hits (see _relevant_hits)."""
    rows, cols, gains = hits
    block = slice(row_offset, row_offset + num_rows)
    num_rel = judgments.num_rel[block].astype(np.float64)
    safe_num_rel = np.where(num_rel > 0, num_rel, 1.0)
    row_start = np.searchsorted(rows, rows)           # index of the row's first hit
    found_so_far = np.arange(len(rows)) - row_start + 1  # relevant documents up to and including this one
    first = row_start == np.arange(len(rows))
    rank = cols + 1.0

    def per_row(weights: np.ndarray, cutoff: Optional[int]) -> np.ndarray:
        """Sum of ``weights`` over each row's hits ranked within ``cutoff``."""
        if cutoff is not None:
            weights = np.where(cols < cutoff, weights, 0.0)
        return np.bincount(rows, weights=weights, minlength=num_rows)

    out: dict[Measure, np.ndarray] = {}
    for m in measures:
        if m.kind == "precision":
            out[m] = per_row(np.ones(len(rows)), m.cutoff) / m.cutoff
        elif m.kind == "recall":
            out[m] = per_row(np.ones(len(rows)), m.cutoff) / safe_num_rel
        elif m.kind == "map":
            out[m] = per_row(found_so_far / rank, m.cutoff) / safe_num_rel
        elif m.kind == "mrr":
            out[m] = per_row(np.where(first, 1.0 / rank, 0.0), m.cutoff)
        else:
            ideal = _ideal_dcg(judgments, block, m.cutoff)
            dcg = per_row(gains / np.log2(rank + 1.0), m.cutoff)
            out[m] = np.where(ideal > 0, dcg / np.where(ideal > 0, ideal, 1.0), 0.0)
    return out


def _ideal_dcg(judgments: _Judgments, rows: slice, cutoff: Optional[int]) -> np.ndarray:
    """DCG of the best possible ranking of each query's judged documents, cut at ``cutoff``."""
    lo, hi = np.searchsorted(judgments.gain_rows, [rows.start, rows.stop])
    gain_rows = judgments.gain_rows[lo:hi] - rows.start
    rank = judgments.gain_rank[lo:hi]
    contribution = judgments.gains[lo:hi] / np.log2(rank + 2.0)
    if cutoff is not None:
        contribution = np.where(rank < cutoff, contribution, 0.0)
    return np.bincount(gain_rows, weights=contribution, minlength=rows.stop - rows.start)


__all__ = ["DEFAULT_MEASURES", "Measure", "MetricResults", "compute_metrics", "evaluate_run_dict",
           "metrics_at_every_cutoff", "parse_measures", "run_arrays"]
