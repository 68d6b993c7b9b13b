"""The code blocks of seed 000 (Trove's inference guide) run as written with ``trove`` -> ``densekit``.

Only the model name is replaced (a tiny local BERT instead of facebook/contriever: nothing downloads) and
the files are written into a temporary working directory under the names the guide uses.
"""
from __future__ import annotations

import shutil

import pytest
import torch

from tests.helpers import write_beir


@pytest.fixture()
def guide_files(tmp_path, monkeypatch):
    beir = write_beir(tmp_path / "beir", graded=True)
    shutil.copy(beir / "corpus.jsonl", tmp_path / "corpus.jsonl")
    shutil.copy(beir / "queries.jsonl", tmp_path / "queries.jsonl")
    shutil.copy(beir / "qrels" / "test.tsv", tmp_path / "test_qrel.tsv")
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    return tmp_path


@pytest.fixture()
def no_wandb_upload(monkeypatch):
    """report_to=["wandb"] is in the guide; record what would be logged instead of contacting a server."""
    wandb = pytest.importorskip("wandb", reason="wandb is a test dependency; install densekit[test]")
    logged = []

    class Run:
        def log(self, data):
            logged.append(data)

    monkeypatch.setattr(wandb, "run", None)
    monkeypatch.setattr(wandb, "init", lambda **kw: Run())
    return logged


def test_evaluation_section_runs_as_written(guide_files, tiny_model_dir, no_wandb_upload):
    model_name = str(tiny_model_dir)
    # --- seed block: Eval Arguments
    from densekit import EvaluationArguments

    eval_args = EvaluationArguments(
        output_dir="./eval_results",
        encoding_cache_dir="./model_encoding_cache_root",  # Only needed if you want to keep the cached embeddings
        broadcast_output=False,  # save memory
        report_to=["wandb"],  # report metrics to wandb
    )
    # --- seed block: Loading the Model
    from densekit import ModelArguments, BiEncoderRetriever
    from transformers import AutoTokenizer

    model_args = ModelArguments(
        model_name_or_path=model_name,
        encoder_class="default",
        pooling="mean",
        normalize=False,
        trust_remote_code=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    tokenizer.pad_token_id = tokenizer.eos_token_id
    tokenizer.padding_side = "right"
    model = BiEncoderRetriever.from_model_args(args=model_args)
    # --- seed block: Creating Evaluation Dataset
    from densekit import DataArguments, MaterializedQRelConfig, MultiLevelDataset, RetrievalCollator

    data_args = DataArguments(
        dataset_name="msmarco",
        query_max_len=32,
        passage_max_len=128,
    )
    mqrel_conf = MaterializedQRelConfig(
        qrel_path="test_qrel.tsv",
        corpus_path="corpus.jsonl",
        corpus_cache="corpus_emb_cache.arrow",
        query_path="queries.jsonl",
        query_cache="queries_emb_cache.arrow",
    )
    dataset = MultiLevelDataset(
        data_args=data_args,
        format_query=model.format_query,
        format_passage=model.format_passage,
        qrel_config=mqrel_conf,
        num_proc=8,
    )
    data_collator = RetrievalCollator(
        data_args=data_args,
        tokenizer=tokenizer,
        append_eos=model.append_eos_token,
    )
    # --- seed block: Evaluator
    from densekit import RetrievalEvaluator

    evaluator = RetrievalEvaluator(
        args=eval_args,
        model=model,
        tokenizer=tokenizer,
        data_collator=data_collator,
        eval_dataset=dataset,
    )
    metrics = evaluator.evaluate()

    assert set(metrics) == {"nDCG@10", "Recall@100", "MRR@10", "MAP"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert (guide_files / "eval_results" / "run.trec").is_file()
    assert len(list((guide_files / "model_encoding_cache_root" / "corpus_emb_cache.arrow").glob("*/manifest.json"))) == 1
    assert len(list((guide_files / "model_encoding_cache_root" / "queries_emb_cache.arrow").glob("*/manifest.json"))) == 1
    assert no_wandb_upload == [{f"eval/{k}": v for k, v in metrics.items()}]

    # --- seed block: Encoding (reuses the cache the evaluation filled)
    assert evaluator.encode()["encoded"] == 0


def test_hard_negative_mining_section_runs_as_written(guide_files, tiny_model_dir):
    from transformers import AutoTokenizer

    from densekit import (BiEncoderRetriever, DataArguments, EvaluationArguments, MaterializedQRelConfig,
                          ModelArguments, MultiLevelDataset, RetrievalCollator, RetrievalEvaluator)
    from densekit.data.formats import read_qrels

    model_args = ModelArguments(model_name_or_path=str(tiny_model_dir), encoder_class="default", pooling="mean",
                                normalize=False)
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    model = BiEncoderRetriever.from_model_args(args=model_args)
    data_args = DataArguments(dataset_name="msmarco", query_max_len=32, passage_max_len=128)
    # --- seed block: updated EvaluationArguments for mining
    eval_args = EvaluationArguments(
        output_dir="./hn_mining_results",
        encoding_cache_dir="./model_encoding_cache_root",  # Only needed if you want to cache the embeddings.
        broadcast_output=False,  # save memory
        search_topk=15,  # mine 15 negatives for each query
        no_annot_in_mined_hn=True,
        merge_mined_qrels=True,
    )
    # --- seed block: let annotated negatives through (labels >= 1 only in the dataset)
    mqrel_conf = MaterializedQRelConfig(
        min_score=1,  # only include documents with labels >= 1
        qrel_path="test_qrel.tsv",
        corpus_path="corpus.jsonl",
        query_path="queries.jsonl",
    )
    dataset = MultiLevelDataset(data_args=data_args, format_query=model.format_query,
                                format_passage=model.format_passage, qrel_config=mqrel_conf, num_proc=8)
    data_collator = RetrievalCollator(data_args=data_args, tokenizer=tokenizer, append_eos=model.append_eos_token)
    evaluator = RetrievalEvaluator(args=eval_args, model=model, tokenizer=tokenizer, data_collator=data_collator,
                                   eval_dataset=dataset)
    # --- seed block
    evaluator.mine_hard_negatives()

    mined = read_qrels(guide_files / "hn_mining_results" / "mined_qrels.tsv")
    judged = read_qrels(guide_files / "test_qrel.tsv")
    for qid, docs in mined.items():
        assert len(docs) == 15
        positives = {d for d, s in judged[qid].items() if s >= 1}
        negatives = {d for d, s in judged[qid].items() if s < 1}
        assert not positives & set(docs)  # annotated positives excluded
        assert negatives <= set(docs) or len(negatives) == 0  # annotated negatives may be mined (16 candidates)
