"""Batched encoding: length-sorted batches come back in input order and match one-by-one encoding."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from densekit.errors import ConfigError, InputError
from densekit.evaluation.encoding import encode_texts, iter_encode_blocks
from densekit.modeling.model_args import ModelArguments
from densekit.modeling.retriever import BiEncoderRetriever

TEXTS = [
    "short",
    "a considerably longer text that spans quite a few word pieces for the tokenizer to chew on",
    "medium length text here",
    "x",
    "another long one: dense retrieval encodes queries and passages separately and compares vectors",
    "",
    "two words",
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="module")
def retriever(tiny_model_dir):
    return BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=str(tiny_model_dir)))


def _one_by_one(retriever, tokenizer, texts, kind="passage"):
    encode = retriever.encode_query if kind == "query" else retriever.encode_passage
    with torch.no_grad():
        return np.stack([encode(tokenizer([t], return_tensors="pt"))[0].numpy() for t in texts])


def test_encode_texts_restores_input_order_and_matches_unbatched_encoding(retriever, tokenizer):
    got = encode_texts(retriever, tokenizer, TEXTS, kind="passage", batch_size=3, show_progress=False)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(got, _one_by_one(retriever, tokenizer, TEXTS), atol=1e-5)


def test_query_kind_uses_encode_query(retriever, tokenizer, monkeypatch):
    calls = []
    original = retriever.encode_query
    monkeypatch.setattr(retriever, "encode_query", lambda inputs: calls.append(1) or original(inputs))
    encode_texts(retriever, tokenizer, TEXTS[:2], kind="query", show_progress=False)
    assert calls


def test_iter_encode_blocks_yields_consecutive_blocks_equal_to_the_whole(retriever, tokenizer):
    whole = encode_texts(retriever, tokenizer, TEXTS, kind="passage", show_progress=False)
    blocks = list(iter_encode_blocks(retriever, tokenizer, (t for t in TEXTS), kind="passage", block_size=3,
                                     batch_size=2, show_progress=False))
    assert [start for start, _ in blocks] == [0, 3, 6]
    assert [len(emb) for _, emb in blocks] == [3, 3, 1]
    np.testing.assert_allclose(np.concatenate([emb for _, emb in blocks]), whole, atol=1e-5)


def test_default_max_len_is_the_retrievers_max_length(tiny_model_dir, tokenizer):
    short = BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=str(tiny_model_dir), max_length=5))
    got = encode_texts(short, tokenizer, TEXTS[1:2], kind="passage", show_progress=False)
    with torch.no_grad():
        expected = short.encode_passage(tokenizer(TEXTS[1:2], truncation=True, max_length=5, return_tensors="pt"))
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)
    longer = encode_texts(short, tokenizer, TEXTS[1:2], kind="passage", max_len=20, show_progress=False)
    assert not np.allclose(got, longer, atol=1e-3)


def test_encoding_runs_in_eval_mode_and_restores_training_mode(tiny_dropout_model_dir, tokenizer):
    model = BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=str(tiny_dropout_model_dir)))
    model.train()
    first = encode_texts(model, tokenizer, TEXTS, kind="passage", show_progress=False)
    second = encode_texts(model, tokenizer, TEXTS, kind="passage", show_progress=False)
    np.testing.assert_array_equal(first, second)  # dropout off: deterministic
    assert model.training


def test_non_string_text_is_an_input_error_naming_its_position(retriever, tokenizer):
    with pytest.raises(InputError, match="text 2"):
        encode_texts(retriever, tokenizer, ["a", "b", None], kind="passage", show_progress=False)


def test_unknown_kind_is_a_config_error(retriever, tokenizer):
    with pytest.raises(ConfigError, match="kind"):
        encode_texts(retriever, tokenizer, ["a"], kind="document", show_progress=False)


def test_empty_input_is_an_input_error(retriever, tokenizer):
    with pytest.raises(InputError, match="no texts"):
        encode_texts(retriever, tokenizer, [], kind="passage", show_progress=False)


@pytest.mark.integration
def test_minilm_without_flags_matches_sentence_transformers(minilm_dir):
    from sentence_transformers import SentenceTransformer

    texts = [f"{word} is a topic with {n} words about retrieval" * (n % 4 + 1)
             for n, word in enumerate(["science", "covid", "protein", "gene", "cell"] * 4)]
    texts[3] = "a passage " * 200  # longer than 256 tokens: both must truncate the same way
    model = BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=minilm_dir))
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    ours = encode_texts(model, tokenizer, texts, kind="passage", batch_size=8, show_progress=False)
    reference = SentenceTransformer(minilm_dir, device="cpu").encode(texts, normalize_embeddings=False)
    assert ours.shape == (20, 384)
    np.testing.assert_allclose(ours, reference, atol=1e-5)
