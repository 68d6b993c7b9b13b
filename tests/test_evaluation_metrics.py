"""densekit.evaluation.metrics against pytrec_eval (trec_eval), query by query, plus name parsing and errors."""
from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest
import pytrec_eval

from densekit.errors import ConfigError, InputError
from densekit.evaluation.metrics import (
    Measure,
    MetricResults,
    compute_metrics,
    evaluate_run_dict,
    parse_measures,
)

CUTOFFS = (1, 3, 5, 10, 25, 40)  # 40 is deeper than the runs below
TREC_MEASURES = (
    [f"ndcg_cut.{k}" for k in CUTOFFS] + [f"recall.{k}" for k in CUTOFFS] + [f"P.{k}" for k in CUTOFFS]
    + [f"map_cut.{k}" for k in CUTOFFS] + ["map", "recip_rank", "ndcg"]
)
OUR_MEASURES = TREC_MEASURES + [f"MRR@{k}" for k in CUTOFFS]


def to_run_dict(query_ids, doc_indices, scores, doc_ids):
    """The pytrec_eval input for a search result: padding (-1) dropped, scores as Python floats."""
    return {
        q: {doc_ids[d]: float(s) for d, s in zip(row_idx, row_scores) if d >= 0}
        for q, row_idx, row_scores in zip(query_ids, doc_indices.tolist(), scores.tolist())
    }


def reference(qrels, run):
    """pytrec_eval's per-query values, with MRR@k derived from recip_rank (first relevant at rank 1/rr)."""
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, set(TREC_MEASURES))
    ref = evaluator.evaluate(run)
    for values in ref.values():
        rr = values["recip_rank"]
        for k in CUTOFFS:
            values[f"MRR@{k}"] = rr if rr > 0 and round(1.0 / rr) <= k else 0.0
    return ref


def assert_matches_pytrec(result: MetricResults, ref: dict) -> None:
    for name in OUR_MEASURES:
        measure = parse_measures(name)[0]
        key = name if name.startswith("MRR@") else measure.trec_name.replace(".", "_")
        ours = result.per_query[measure.name]
        assert set(ours) == set(ref), f"{measure.name}: evaluated queries differ"
        for qid, values in ref.items():
            assert ours[qid] == pytest.approx(values[key], abs=1e-6), (measure.name, qid)
        mean = np.mean([values[key] for values in ref.values()])
        assert result.aggregate[measure.name] == pytest.approx(mean, abs=1e-9)


def random_case(seed: int, *, n_queries=80, num_docs=300, depth=30, score_levels=6):
    """A search result with many tied scores, padding in random places and tricky qrels."""
    rng = np.random.default_rng(seed)
    # ids that sort differently as strings and as numbers, with non-ASCII ones (trec_eval compares bytes)
    pool = [f"d{i}" for i in range(num_docs - 6)] + ["D9", "é1", "ü", "z", "Ω", "d1x"]
    doc_ids = [pool[i] for i in rng.permutation(num_docs)]
    query_ids = [f"q{i}" for i in range(n_queries)]
    doc_indices = np.stack([rng.choice(num_docs, size=depth, replace=False) for _ in query_ids]).astype(np.int64)
    scores = rng.integers(0, score_levels, size=(n_queries, depth)).astype(np.float32)
    padded = rng.random((n_queries, depth)) < 0.15
    padded[:3] = True  # three queries retrieved nothing
    doc_indices[padded] = -1
    scores[padded] = rng.normal(size=int(padded.sum()))  # padding scores are garbage and must be ignored
    qrels: dict[str, dict[str, int]] = {}
    for row, qid in enumerate(query_ids):
        kind = row % 10
        if kind == 9:
            continue  # run query without judgments: not evaluated
        if kind == 8:
            qrels[qid] = {}  # empty judgment dict: not evaluated either
            continue
        retrieved = [doc_ids[d] for d in doc_indices[row] if d >= 0]
        judged = set(rng.choice(retrieved, size=min(len(retrieved), rng.integers(0, 8)), replace=False)
                     if retrieved else [])
        judged |= {doc_ids[d] for d in rng.choice(num_docs, size=rng.integers(0, 6), replace=False)}
        labels = [-1, 0, 1, 2] if kind != 7 else [-1, 0]  # kind 7: no relevant document at all
        qrels[qid] = {d: int(rng.choice(labels)) for d in judged}
        if rng.random() < 0.3:
            qrels[qid]["not-in-corpus"] = int(rng.choice([1, 2]))
    for i in range(5):
        qrels[f"judged-only-{i}"] = {doc_ids[i]: 1}  # judged queries missing from the run
    return qrels, query_ids, doc_indices, scores, doc_ids


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_tied_runs_match_pytrec_eval_per_query(seed):
    qrels, query_ids, doc_indices, scores, doc_ids = random_case(seed)
    result = compute_metrics(qrels, query_ids, doc_indices, scores, doc_ids, OUR_MEASURES)
    assert_matches_pytrec(result, reference(qrels, to_run_dict(query_ids, doc_indices, scores, doc_ids)))
    assert result.judged_queries_missing_from_run == 5
    assert result.run_queries_without_judgments == len(query_ids) - result.num_queries


def test_sorted_and_shuffled_inputs_give_identical_results():
    qrels, query_ids, doc_indices, scores, doc_ids = random_case(3)
    order = np.argsort(-scores, axis=1, kind="stable")
    sorted_result = compute_metrics(qrels, query_ids, np.take_along_axis(doc_indices, order, 1),
                                    np.take_along_axis(scores, order, 1), doc_ids, OUR_MEASURES)
    shuffled = compute_metrics(qrels, query_ids, doc_indices, scores, doc_ids, OUR_MEASURES)
    assert sorted_result.per_query == shuffled.per_query


def test_ties_are_broken_by_document_id_descending_as_strings():
    qrels = {"q": {"d10": 1}}
    # same score: trec_eval ranks "d9" > "d2" > "d10" (string order, descending), so d10 comes third
    result = compute_metrics(qrels, ["q"], np.array([[0, 1, 2]]), np.array([[1.0, 1.0, 1.0]], np.float32),
                             ["d10", "d9", "d2"], ["MRR", "P@1"])
    assert result.per_query["MRR"]["q"] == pytest.approx(1 / 3)
    assert result.per_query["P@1"]["q"] == 0.0


def test_float_scores_without_ties_and_deep_runs_match_pytrec_eval():
    rng = np.random.default_rng(7)
    qrels, query_ids, doc_indices, _, doc_ids = random_case(7, depth=60)
    scores = rng.normal(size=doc_indices.shape).astype(np.float32)
    scores[5, :4] = scores[5, 4]  # a few exact float ties among non-integer scores
    result = compute_metrics(qrels, query_ids, doc_indices, scores, doc_ids, OUR_MEASURES)
    assert_matches_pytrec(result, reference(qrels, to_run_dict(query_ids, doc_indices, scores, doc_ids)))


def test_evaluate_run_dict_matches_pytrec_eval():
    qrels, query_ids, doc_indices, scores, doc_ids = random_case(11)
    run = to_run_dict(query_ids, doc_indices, scores, doc_ids)
    run["run-only"] = {"d1": 3.0}
    result = evaluate_run_dict(qrels, run, OUR_MEASURES)
    assert "run-only" not in result.per_query["MAP"]
    assert_matches_pytrec(result, reference(qrels, run))


def test_query_with_empty_ranking_and_judgments_scores_zero():
    result = compute_metrics({"q": {"a": 1}}, ["q"], np.full((1, 4), -1), np.zeros((1, 4), np.float32),
                             ["a", "b"], None)
    assert result.num_queries == 1
    assert all(values["q"] == 0.0 for values in result.per_query.values())


def test_default_measures_and_json_output():
    qrels, query_ids, doc_indices, scores, doc_ids = random_case(5)
    result = compute_metrics(qrels, query_ids, doc_indices, scores, doc_ids)
    assert result.measures == ["nDCG@10", "Recall@100", "MRR@10", "MAP"]
    payload = json.loads(json.dumps(result.to_json()))
    assert payload["aggregate"] == result.aggregate
    for name, per_query in result.per_query.items():
        assert result.aggregate[name] == pytest.approx(np.mean(list(per_query.values())))


@pytest.mark.parametrize("spelling, canonical", [
    ("ndcg_cut.10", "nDCG@10"), ("ndcg_cut_10", "nDCG@10"), ("ndcg@10", "nDCG@10"), ("nDCG@10", "nDCG@10"),
    ("NDCG@10", "nDCG@10"), ("ndcg", "nDCG"), ("recall.100", "Recall@100"), ("recall_100", "Recall@100"),
    ("recall@100", "Recall@100"), ("R@100", "Recall@100"), ("P.10", "P@10"), ("P_10", "P@10"),
    ("P@10", "P@10"), ("p@10", "P@10"), ("mrr@10", "MRR@10"), ("MRR@10", "MRR@10"), ("recip_rank", "MRR"),
    ("MRR", "MRR"), ("map", "MAP"), ("MAP", "MAP"), ("map_cut.100", "MAP@100"), ("map_cut_100", "MAP@100"),
    ("MAP@100", "MAP@100"), (" map ", "MAP"),
])
def test_measure_spellings_parse_to_one_canonical_name(spelling, canonical):
    assert [m.name for m in parse_measures(spelling)] == [canonical]


def test_parse_measures_keeps_order_drops_repeats_and_expands_cutoff_lists():
    names = parse_measures(["nDCG@10", "ndcg_cut.10", "ndcg_cut.5,100", Measure("map"), "MAP"])
    assert [m.name for m in names] == ["nDCG@10", "nDCG@5", "nDCG@100", "MAP"]
    assert [m.name for m in parse_measures(None)] == ["nDCG@10", "Recall@100", "MRR@10", "MAP"]


def test_trec_names_round_trip():
    for name in ["ndcg_cut.10", "recall.100", "P.5", "map", "map_cut.100", "recip_rank", "ndcg"]:
        assert parse_measures(name)[0].trec_name == name
    assert parse_measures("MRR@10")[0].trec_name is None


@pytest.mark.parametrize("bad", ["bleu@4", "ndcg_cut", "recall", "P", "map_cut", "ndcg@0", "ndcg@x", "", 10])
def test_unknown_or_incomplete_measure_names_raise_config_error_listing_accepted(bad):
    with pytest.raises(ConfigError, match=re.escape("nDCG@10")):
        parse_measures([bad])


def _tiny_run():
    return ["q1", "q2"], np.array([[0, 1], [1, -1]]), np.array([[2.0, 1.0], [1.0, 0.0]], np.float32), ["a", "b"]


@pytest.mark.parametrize("change, message", [
    (lambda q, i, s, d: (q[:1], i, s, d), "2 rows"),
    (lambda q, i, s, d: (q, i, s[:, :1], d), "same shape"),
    (lambda q, i, s, d: (q, np.array([[0, 2], [1, -1]]), s, d), "outside"),
    (lambda q, i, s, d: (q, np.array([[0, -2], [1, -1]]), s, d), "outside"),
    (lambda q, i, s, d: (q, np.array([[1, 1], [1, -1]]), s, d), "twice"),
    (lambda q, i, s, d: (["q1", "q1"], i, s, d), "several rows"),
    (lambda q, i, s, d: (q, i, np.array([[np.nan, 1.0], [1.0, 0.0]]), d), "NaN"),
    (lambda q, i, s, d: (q, i.astype(np.float32), s, d), "integers"),
    (lambda q, i, s, d: (["x1", "x2"], i, s, d), "None of the 2 run queries"),
])
def test_bad_runs_raise_input_error_naming_the_problem(change, message):
    query_ids, doc_indices, scores, doc_ids = change(*_tiny_run())
    with pytest.raises(InputError, match=message):
        compute_metrics({"q1": {"a": 1}, "q2": {"b": 2}}, query_ids, doc_indices, scores, doc_ids)


def test_nan_score_on_padding_is_ignored():
    query_ids, doc_indices, _, doc_ids = _tiny_run()
    scores = np.array([[2.0, 1.0], [1.0, np.nan]], np.float32)
    result = compute_metrics({"q2": {"b": 1}}, query_ids, doc_indices, scores, doc_ids, ["MRR"])
    assert result.per_query["MRR"] == {"q2": 1.0}


def test_non_integer_judgment_raises_input_error():
    query_ids, doc_indices, scores, doc_ids = _tiny_run()
    with pytest.raises(InputError, match="not an integer"):
        compute_metrics({"q1": {"a": 0.5}}, query_ids, doc_indices, scores, doc_ids)


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def hashed_tfidf(texts: list[str], idf: np.ndarray | None, dim: int = 2048):
    """L2-normalised hashed TF-IDF vectors (numpy only): a cheap real-data scorer with a realistic run."""
    rows, cols = [], []
    for i, text in enumerate(texts):
        for token, count in Counter(_tokens(text)).items():
            rows.append(i)
            cols.append(hash(token) % dim)
    matrix = np.zeros((len(texts), dim), dtype=np.float32)
    np.add.at(matrix, (np.asarray(rows), np.asarray(cols)), 1.0)
    matrix = np.log1p(matrix)
    if idf is None:
        idf = np.log((1 + len(texts)) / (1 + (matrix > 0).sum(0))).astype(np.float32) + 1
    matrix *= idf
    matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-9)
    return matrix, idf


@pytest.mark.integration
@pytest.mark.parametrize("decimals", [None, 2])  # rounding scores to 2 decimals creates ties on real ids
def test_scifact_dev_tfidf_run_matches_pytrec_eval(scifact_dir, decimals):
    corpus = [json.loads(line) for line in open(scifact_dir / "corpus.jsonl", encoding="utf-8")]
    queries = {q["_id"]: q["text"] for q in map(json.loads, open(scifact_dir / "queries.jsonl", encoding="utf-8"))}
    qrels: dict[str, dict[str, int]] = {}
    for line in list(open(scifact_dir / "qrels" / "dev.tsv", encoding="utf-8"))[1:]:
        qid, did, score = line.split()
        qrels.setdefault(qid, {})[did] = int(score)
    doc_ids = [d["_id"] for d in corpus]
    query_ids = list(qrels)
    doc_vecs, idf = hashed_tfidf([f"{d['title']} {d['text']}" for d in corpus], None)
    query_vecs, _ = hashed_tfidf([queries[q] for q in query_ids], idf)
    sims = query_vecs @ doc_vecs.T
    if decimals is not None:
        sims = np.round(sims, decimals)
    top = np.argpartition(-sims, 30, axis=1)[:, :30].astype(np.int64)  # unsorted top 30
    top_scores = np.take_along_axis(sims, top, axis=1)
    result = compute_metrics(qrels, query_ids, top, top_scores, doc_ids, OUR_MEASURES)
    assert result.aggregate["nDCG@10"] > 0.2  # the scorer finds something: the comparison is not all zeros
    assert_matches_pytrec(result, reference(qrels, to_run_dict(query_ids, top, top_scores, doc_ids)))


def test_run_dict_where_nothing_was_retrieved_scores_zero_for_judged_queries():
    result = evaluate_run_dict({"q1": {"a": 1}, "q2": {"b": 0}}, {"q1": {}, "q2": {}, "q3": {}}, ["nDCG@10", "MAP"])
    assert result.per_query == {"nDCG@10": {"q1": 0.0, "q2": 0.0}, "MAP": {"q1": 0.0, "q2": 0.0}}
    assert result.run_queries_without_judgments == 1
