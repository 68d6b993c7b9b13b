"""One encoding spec: every consumer truncates the same way, keys follow the weights and settings now."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertTokenizer

from densekit import (BiEncoderRetriever, DataArguments, EvaluationArguments, MaterializedQRelConfig,
                      ModelArguments, MultiLevelDataset, RetrievalCollator, RetrievalEvaluator)
from densekit.modeling.encoding_spec import (embedding_key, encoding_spec, resolve_max_len,
                                             tokenizer_fingerprint)
from tests.helpers import write_beir
from tests.test_evaluation_evaluator import make_evaluator


def dataset_for(model, beir, **data_kw):
    return MultiLevelDataset(data_args=DataArguments(**data_kw), format_query=model.format_query,
                             format_passage=model.format_passage,
                             qrel_config=MaterializedQRelConfig(qrel_path=beir / "qrels" / "test.tsv",
                                                                corpus_path=beir / "corpus.jsonl",
                                                                query_path=beir / "queries.jsonl"))


@pytest.mark.integration
def test_minilm_training_and_evaluation_truncate_at_the_same_length(minilm_dir, tmp_path):
    """Unset DataArguments: the collator (training, IR metrics) and the evaluator both use the
    sentence-transformers config's 256, not the tokenizer's 512."""
    model = BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=minilm_dir))
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    assert tokenizer.model_max_length == 512 and model.max_length == 256
    collator = RetrievalCollator(DataArguments(), tokenizer).bind_model(model)
    beir = write_beir(tmp_path / "beir")
    evaluator = RetrievalEvaluator(EvaluationArguments(output_dir=str(tmp_path / "o"), disable_tqdm=True),
                                   model=model, tokenizer=tokenizer, eval_dataset=dataset_for(model, beir))
    specs = evaluator.encoding_specs()
    assert collator.passage_max_len == specs["passage"].max_len == 256
    assert collator.query_max_len == specs["query"].max_len == 256
    long_text = "word " * 600
    batch = collator([{"query": long_text, "passage": [long_text]}])
    assert batch["passage"]["input_ids"].shape[1] == 256
    from densekit.training.trainer import RetrievalTrainer  # the trainer binds the collator it is given
    from densekit.training.training_args import RetrievalTrainingArguments

    unbound = RetrievalCollator(DataArguments(), tokenizer)
    assert unbound.passage_max_len == 512  # the tokenizer's limit until a model is known
    RetrievalTrainer(model=model, args=RetrievalTrainingArguments(output_dir=str(tmp_path / "t"), report_to="none"),
                     data_collator=unbound, tokenizer=tokenizer)
    assert unbound.passage_max_len == 256


def test_explicit_length_beyond_positions_is_refused_everywhere(tiny_model_dir):
    model = BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=str(tiny_model_dir)))
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    from densekit.errors import ConfigError

    with pytest.raises(ConfigError, match="passage_max_len=300"):
        resolve_max_len("passage", 300, model, tokenizer)
    collator = RetrievalCollator(DataArguments(passage_max_len=300), tokenizer).bind_model(model)
    with pytest.raises(ConfigError, match="passage_max_len=300"):
        collator([{"query": "q", "passage": ["p"]}])


def test_evaluator_reencodes_after_the_weights_change_in_place(tiny_model_dir, tmp_path):
    beir = write_beir(tmp_path / "beir", graded=True)
    evaluator = make_evaluator(tiny_model_dir, beir, tmp_path / "a", encoding_cache_dir=str(tmp_path / "cache"),
                               search_topk=10)
    before = evaluator.evaluate()
    assert evaluator.embedder.rows_encoded == 24
    with torch.no_grad():  # a training step, or load_state_dict, changes weights in place
        for parameter in evaluator.model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.5)
    after = evaluator.evaluate()
    assert evaluator.embedder.rows_encoded == 48  # everything again: no stale vectors
    fresh = make_evaluator(tiny_model_dir, beir, tmp_path / "b", search_topk=10)
    fresh.model.load_state_dict(evaluator.model.state_dict())
    assert after == fresh.evaluate()  # the new model's metrics, not the old ones
    assert after != before


def test_reused_evaluator_uses_the_other_datasets_lengths(tiny_model_dir, tmp_path):
    beir = write_beir(tmp_path / "beir")
    evaluator = make_evaluator(tiny_model_dir, beir, tmp_path / "a", encoding_cache_dir=str(tmp_path / "cache"))
    evaluator.evaluate()
    other = dataset_for(evaluator.model, beir, query_max_len=16, passage_max_len=8)
    specs = evaluator.encoding_specs(other)
    assert specs["passage"].max_len == 8 and specs["query"].max_len == 16
    encoded = evaluator.embedder.rows_encoded
    result = evaluator.search(other)
    assert evaluator.embedder.rows_encoded - encoded == 18  # passages at 8 tokens; queries reused
    reference = make_evaluator(tiny_model_dir, beir, tmp_path / "b")
    reference.data_collator.data_args.passage_max_len = 8
    np.testing.assert_array_equal(result.indices, reference.search().indices)


def test_evaluator_leaves_the_model_as_it_found_it(tiny_model_dir, tmp_path):
    beir = write_beir(tmp_path / "beir")
    evaluator = make_evaluator(tiny_model_dir, beir, tmp_path / "a", encoding_cache_dir=str(tmp_path / "c"))
    evaluator.model.train()
    evaluator.evaluate()
    assert evaluator.model.training
    evaluator.encode()
    assert evaluator.model.training
    evaluator.model.eval()
    evaluator.mine_hard_negatives()
    assert not evaluator.model.training


def test_evaluation_report_prints_the_resolved_lengths(tiny_model_dir, tmp_path):
    import json

    beir = write_beir(tmp_path / "beir")
    evaluator = make_evaluator(tiny_model_dir, beir, tmp_path / "a", encoding_cache_dir=str(tmp_path / "c"))
    evaluator.evaluate()
    settings = json.loads((tmp_path / "a" / "metrics.json").read_text())["settings"]
    assert settings["query_max_len"] == 16 and settings["passage_max_len"] == 32
    assert settings["passage_pooling"] == "mean" and len(settings["passage_model_key"]) == 24
    assert "passage_max_len | 32" in (tmp_path / "a" / "report.md").read_text()


def test_slow_tokenizer_lowercasing_changes_the_key(tiny_model_dir):
    cased = BertTokenizer.from_pretrained(str(tiny_model_dir), do_lower_case=False)
    uncased = BertTokenizer.from_pretrained(str(tiny_model_dir), do_lower_case=True)
    again = BertTokenizer.from_pretrained(str(tiny_model_dir), do_lower_case=True)
    assert tokenizer_fingerprint(cased) != tokenizer_fingerprint(uncased)
    assert tokenizer_fingerprint(uncased) == tokenizer_fingerprint(again)
    fast = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    before = tokenizer_fingerprint(fast)
    fast(["some text"], truncation=True, max_length=4)  # per-call state must not change the key
    assert tokenizer_fingerprint(fast) == before


def test_one_key_for_the_evaluator_cache_and_encode_folders(tiny_model_dir, tmp_path):
    """`densekit encode` folders and the evaluator's cache entries are keyed by the same function."""
    from densekit.data.store import load_store
    from densekit.evaluation.embedding_files import encode_to_folder, formatted_texts

    beir = write_beir(tmp_path / "beir")
    evaluator = make_evaluator(tiny_model_dir, beir, tmp_path / "a", encoding_cache_dir=str(tmp_path / "c"))
    evaluator.encode()
    store = load_store([beir / "corpus.jsonl"], kind="corpus")
    entry = encode_to_folder(evaluator.model, evaluator.tokenizer, store, "passage", tmp_path / "folder",
                             max_len=32, show_progress=False)
    spec = evaluator.encoding_specs()["passage"]
    texts = formatted_texts(evaluator.model, store, "passage", range(len(store)))
    assert entry.key == embedding_key(spec, evaluator.model, list(store.ids), texts)
    assert spec == encoding_spec(evaluator.model, evaluator.tokenizer, "passage", max_len=32)
