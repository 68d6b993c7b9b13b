"""RetrievalEvaluator end to end on a tiny model: files written, metrics exact, cache reused, bad input early."""
from __future__ import annotations

import json

import numpy as np
import pytest
import pytrec_eval
from transformers import AutoTokenizer

from densekit import (BiEncoderRetriever, DataArguments, EvaluationArguments, MaterializedQRelConfig,
                      ModelArguments, MultiLevelDataset, RetrievalCollator, RetrievalEvaluator)
from densekit.data.formats import read_qrels, read_run
from densekit.errors import ConfigError, InputError
from tests.helpers import write_beir


def make_evaluator(model_dir, beir, out, **eval_kw):
    model_args = ModelArguments(model_name_or_path=str(model_dir), pooling="mean", normalize=True)
    model = BiEncoderRetriever.from_model_args(args=model_args)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    data_args = DataArguments(query_max_len=16, passage_max_len=32)
    dataset = MultiLevelDataset(data_args=data_args, format_query=model.format_query,
                                format_passage=model.format_passage,
                                qrel_config=MaterializedQRelConfig(qrel_path=beir / "qrels" / "test.tsv",
                                                                   corpus_path=beir / "corpus.jsonl",
                                                                   query_path=beir / "queries.jsonl"))
    collator = RetrievalCollator(data_args=data_args, tokenizer=tokenizer, append_eos=model.append_eos_token)
    args = EvaluationArguments(output_dir=str(out), disable_tqdm=True, **eval_kw)
    return RetrievalEvaluator(args=args, model=model, tokenizer=tokenizer, data_collator=collator,
                              eval_dataset=dataset)


def test_evaluate_writes_run_and_metrics_equal_to_pytrec_eval(tiny_model_dir, tmp_path):
    beir = write_beir(tmp_path / "beir", graded=True)
    evaluator = make_evaluator(tiny_model_dir, beir, tmp_path / "out", search_topk=10,
                               measures=["ndcg_cut.10", "recall.10", "recip_rank", "map", "P.5"])
    aggregate = evaluator.evaluate()
    run = read_run(tmp_path / "out" / "run.trec")
    assert len(run) == 6 and all(len(docs) == 10 for docs in run.values())
    qrels = read_qrels(beir / "qrels" / "test.tsv")
    reference = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.10", "recip_rank", "map", "P.5"})
    per_query = reference.evaluate(run)
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    for ours, theirs in [("nDCG@10", "ndcg_cut_10"), ("Recall@10", "recall_10"), ("MRR", "recip_rank"),
                         ("MAP", "map"), ("P@5", "P_5")]:
        expected = np.mean([v[theirs] for v in per_query.values()])
        assert aggregate[ours] == pytest.approx(expected, abs=1e-6)
        assert saved["aggregate"][ours] == pytest.approx(expected, abs=1e-6)
        for qid, values in per_query.items():
            assert saved["per_query"][ours][qid] == pytest.approx(values[theirs], abs=1e-6)
    assert (tmp_path / "out" / "report.md").read_text().startswith("| measure | value |")


def test_streaming_and_precomputed_search_agree(tiny_model_dir, tmp_path):
    beir = write_beir(tmp_path / "beir")
    streamed = make_evaluator(tiny_model_dir, beir, tmp_path / "a", encoding_block_size=4,
                              per_device_matmul_batch_size=3).search()
    whole = make_evaluator(tiny_model_dir, beir, tmp_path / "b", precompute_corpus_embs=True).search()
    np.testing.assert_array_equal(streamed.indices, whole.indices)
    np.testing.assert_allclose(streamed.scores, whole.scores, atol=1e-5)


def test_second_evaluation_reuses_cached_embeddings(tiny_model_dir, tmp_path):
    beir = write_beir(tmp_path / "beir")
    first = make_evaluator(tiny_model_dir, beir, tmp_path / "a", encoding_cache_dir=str(tmp_path / "cache"))
    metrics_first = first.evaluate()
    assert first.embedder.rows_encoded == 6 + 18
    second = make_evaluator(tiny_model_dir, beir, tmp_path / "b", encoding_cache_dir=str(tmp_path / "cache"))
    assert second.evaluate() == metrics_first
    assert second.embedder.rows_encoded == 0


def test_changed_max_length_invalidates_cache(tiny_model_dir, tmp_path):
    beir = write_beir(tmp_path / "beir")
    make_evaluator(tiny_model_dir, beir, tmp_path / "a", encoding_cache_dir=str(tmp_path / "cache")).evaluate()
    other = make_evaluator(tiny_model_dir, beir, tmp_path / "b", encoding_cache_dir=str(tmp_path / "cache"))
    other.data_collator.data_args.passage_max_len = 8
    other.evaluate()
    assert other.embedder.rows_encoded == 18  # passages again; queries (same length budget) reused


def test_encode_only_fills_cache_used_by_evaluate(tiny_model_dir, tmp_path):
    beir = write_beir(tmp_path / "beir")
    encoder = make_evaluator(tiny_model_dir, beir, tmp_path / "a", encoding_cache_dir=str(tmp_path / "cache"))
    assert encoder.encode()["encoded"] == 24
    evaluator = make_evaluator(tiny_model_dir, beir, tmp_path / "b", encoding_cache_dir=str(tmp_path / "cache"))
    evaluator.evaluate()
    assert evaluator.embedder.rows_encoded == 0


def test_encode_without_cache_dir_is_a_config_error(tiny_model_dir, tmp_path):
    beir = write_beir(tmp_path / "beir")
    with pytest.raises(ConfigError, match="encoding_cache_dir"):
        make_evaluator(tiny_model_dir, beir, tmp_path / "a").encode()


def test_malformed_corpus_line_fails_before_encoding(tiny_model_dir, tmp_path):
    beir = write_beir(tmp_path / "beir")
    with open(beir / "corpus.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"_id": "broken", "text": \n')
    with pytest.raises(InputError) as info:
        make_evaluator(tiny_model_dir, beir, tmp_path / "out")
    assert info.value.line == 19 and info.value.path.endswith("corpus.jsonl")


def test_binary_like_dataset_is_rejected(tiny_model_dir, tmp_path):
    beir = write_beir(tmp_path / "beir")
    evaluator = make_evaluator(tiny_model_dir, beir, tmp_path / "out")
    with pytest.raises(ConfigError, match="MultiLevelDataset"):
        RetrievalEvaluator(args=evaluator.args, model=evaluator.model, tokenizer=evaluator.tokenizer,
                           eval_dataset=[{"query": "x"}])


def test_unknown_measure_fails_when_arguments_are_made(tmp_path):
    with pytest.raises(ConfigError, match="ndcg"):
        EvaluationArguments(output_dir=str(tmp_path), measures=["ndgc@10"])


def test_report_to_wandb_logs_metrics(tiny_model_dir, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb", reason="wandb is a test dependency; install densekit[test]")
    logged, started = {}, []

    class FakeRun:
        def log(self, data):
            logged.update(data)

    monkeypatch.setattr(wandb, "run", None)
    monkeypatch.setattr(wandb, "init", lambda **kw: started.append(kw) or FakeRun())
    beir = write_beir(tmp_path / "beir")
    evaluator = make_evaluator(tiny_model_dir, beir, tmp_path / "out", report_to=["wandb"])
    aggregate = evaluator.evaluate()
    assert started and started[0]["project"] == "densekit"
    assert logged == {f"eval/{k}": v for k, v in aggregate.items()}


def test_report_to_unknown_tracker_fails_before_encoding(tiny_model_dir, tmp_path):
    beir = write_beir(tmp_path / "beir")
    with pytest.raises(ConfigError, match="report_to"):
        make_evaluator(tiny_model_dir, beir, tmp_path / "out", report_to=["mlflow"])


def test_mining_excludes_every_annotated_document_and_fills_topk(tiny_model_dir, tmp_path):
    from densekit.data.formats import read_qrels

    beir = write_beir(tmp_path / "beir", graded=True)
    evaluator = make_evaluator(tiny_model_dir, beir, tmp_path / "out", search_topk=5, no_annot_in_mined_hn=True,
                               merge_mined_qrels=True)
    paths = evaluator.mine_hard_negatives()
    mined = read_qrels(paths["mined"])
    original = read_qrels(beir / "qrels" / "test.tsv")
    assert set(mined) == set(original)
    for qid, docs in mined.items():
        assert len(docs) == 5
        assert not set(docs) & set(original[qid])
    merged = read_qrels(paths["merged"])
    for qid, docs in original.items():
        assert all(merged[qid][d] == s for d, s in docs.items())  # every original judgment kept as it was
        assert {d for d, s in merged[qid].items() if d not in docs} == set(mined[qid])
        assert all(merged[qid][d] == 0 for d in mined[qid])


def test_mining_without_exclusion_returns_top_documents_with_scores(tiny_model_dir, tmp_path):
    from densekit.data.formats import read_qrels

    beir = write_beir(tmp_path / "beir")
    evaluator = make_evaluator(tiny_model_dir, beir, tmp_path / "out", search_topk=4)
    mined = read_qrels(evaluator.mine_hard_negatives()["mined"])
    search = evaluator.search(topk=4)
    for row, qid in enumerate(search.query_ids):
        expected = {search.doc_ids[i]: s for i, s in zip(search.indices[row], search.scores[row])}
        assert mined[qid] == pytest.approx(expected, abs=1e-6)
    assert not (tmp_path / "out" / "merged_qrels.tsv").exists()


def test_changed_pooling_invalidates_both_kinds(tiny_model_dir, tmp_path):
    beir = write_beir(tmp_path / "beir")
    make_evaluator(tiny_model_dir, beir, tmp_path / "a", encoding_cache_dir=str(tmp_path / "cache")).evaluate()
    other = make_evaluator(tiny_model_dir, beir, tmp_path / "b", encoding_cache_dir=str(tmp_path / "cache"))
    other.model.encoder.pooling = "cls"  # resolved setting changed, raw arguments untouched
    other.evaluate()
    assert other.embedder.rows_encoded == 6 + 18


def test_changed_corpus_file_invalidates_only_the_corpus(tiny_model_dir, tmp_path):
    beir = write_beir(tmp_path / "beir")
    make_evaluator(tiny_model_dir, beir, tmp_path / "a", encoding_cache_dir=str(tmp_path / "cache")).evaluate()
    with open(beir / "corpus.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"_id": "extra", "title": "", "text": "a new document"}\n')
    again = make_evaluator(tiny_model_dir, beir, tmp_path / "b", encoding_cache_dir=str(tmp_path / "cache"))
    again.evaluate()
    assert again.embedder.rows_encoded == 19  # the corpus again, the queries from the cache


def test_max_length_beyond_model_positions_is_a_config_error(tiny_model_dir, tmp_path):
    beir = write_beir(tmp_path / "beir")
    evaluator = make_evaluator(tiny_model_dir, beir, tmp_path / "out")
    evaluator.data_collator.data_args.passage_max_len = 300  # the tiny model has 128 positions
    with pytest.raises(ConfigError, match="passage_max_len=300"):
        evaluator.evaluate()


def test_evaluator_without_collator_uses_the_dataset_lengths(tiny_model_dir, tmp_path):
    beir = write_beir(tmp_path / "beir")
    reference = make_evaluator(tiny_model_dir, beir, tmp_path / "a")
    bare = RetrievalEvaluator(args=reference.args, model=reference.model, tokenizer=reference.tokenizer)
    assert bare.evaluate(reference.eval_dataset) == reference.evaluate()


def test_filters_that_leave_no_judged_query_are_an_input_error(tmp_path):
    beir = write_beir(tmp_path / "beir")
    with pytest.raises(InputError, match="no query has a judgment"):
        MultiLevelDataset(DataArguments(), MaterializedQRelConfig(
            qrel_path=beir / "qrels" / "test.tsv", corpus_path=beir / "corpus.jsonl",
            query_path=beir / "queries.jsonl", min_score=5))


def test_bad_config_values_are_config_errors(tmp_path):
    beir = write_beir(tmp_path / "beir")
    files = dict(qrel_path=beir / "qrels" / "test.tsv", corpus_path=beir / "corpus.jsonl",
                 query_path=beir / "queries.jsonl")
    with pytest.raises(ConfigError, match="corpus_cache"):
        MaterializedQRelConfig(corpus_cache="sub/x.arrow", **files)
    with pytest.raises(ConfigError, match="min_score"):
        MaterializedQRelConfig(min_score="1", **files)
    with pytest.raises(ConfigError, match="group_sizes"):
        MultiLevelDataset(DataArguments(), MaterializedQRelConfig(**files), data_args_overrides={"group_sizes": 3})


def test_another_tokenizer_invalidates_the_cache(tiny_model_dir, tmp_path):
    beir = write_beir(tmp_path / "beir")
    make_evaluator(tiny_model_dir, beir, tmp_path / "a", encoding_cache_dir=str(tmp_path / "cache")).evaluate()
    other = make_evaluator(tiny_model_dir, beir, tmp_path / "b", encoding_cache_dir=str(tmp_path / "cache"))
    from tokenizers import normalizers

    # same weights, different tokenization (no lower-casing any more)
    other.tokenizer.backend_tokenizer.normalizer = normalizers.NFD()
    other.evaluate()
    assert other.embedder.rows_encoded == 6 + 18


def test_cache_is_shared_between_evaluate_and_mine_on_other_queries(tiny_model_dir, tmp_path):
    """The tokenizer keeps truncation state from its last call; that must not change the cache key."""
    beir = write_beir(tmp_path / "beir")
    first = make_evaluator(tiny_model_dir, beir, tmp_path / "a", encoding_cache_dir=str(tmp_path / "cache"))
    first.evaluate()
    again = make_evaluator(tiny_model_dir, beir, tmp_path / "b", encoding_cache_dir=str(tmp_path / "cache"),
                           search_topk=3)
    again.tokenizer = first.tokenizer  # the same tokenizer object, now carrying truncation state
    again.mine_hard_negatives()
    assert again.embedder.rows_encoded == 0
