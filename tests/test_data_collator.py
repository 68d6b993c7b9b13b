"""RetrievalCollator and tokenize_texts: truncation budgets, padding, appended eos, batch layout."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from densekit.data.collator import RetrievalCollator, pad_token_lists, tokenize_texts
from densekit.data.data_args import DataArguments
from densekit.errors import ConfigError, InputError

LONG = "dense retrieval maps queries and passages into one vector space " * 4


@pytest.fixture
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture
def eos_tokenizer(tiny_model_dir):
    """A tokenizer whose eos is a token BERT never adds by itself, so appending is visible."""
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tok.eos_token = "[unused1]"
    return tok


def _lengths(encoding):
    return encoding["attention_mask"].sum(dim=1).tolist()


def test_queries_and_passages_are_truncated_to_their_budgets(tokenizer):
    collate = RetrievalCollator(DataArguments(query_max_len=6, passage_max_len=10), tokenizer)
    batch = collate([{"query": LONG, "passage": [LONG, "short"]}])
    assert batch["query"]["input_ids"].shape == (1, 6)
    assert _lengths(batch["passage"]) == [10, len(tokenizer("short")["input_ids"])]
    assert batch["query"]["input_ids"][0, -1].item() == tokenizer.sep_token_id  # truncation keeps [SEP]


def test_rows_are_right_padded_to_the_longest_in_batch(tokenizer):
    collate = RetrievalCollator(DataArguments(query_max_len=32), tokenizer)
    batch = collate([{"query": "one two three four"}, {"query": "one"}])
    ids, mask = batch["query"]["input_ids"], batch["query"]["attention_mask"]
    expected = tokenizer(["one two three four", "one"], padding=True, return_tensors="pt")
    assert torch.equal(ids, expected["input_ids"]) and torch.equal(mask, expected["attention_mask"])
    assert set(batch["query"].keys()) == {"input_ids", "attention_mask", "token_type_ids"}


def test_left_padding_side_is_respected(tokenizer):
    tokenizer.padding_side = "left"
    batch = RetrievalCollator(DataArguments(), tokenizer)([{"query": "one two three four"}, {"query": "one"}])
    assert batch["query"]["attention_mask"][1].tolist()[:3] == [0, 0, 0]
    assert batch["query"]["attention_mask"][1, -1].item() == 1


def test_passages_are_flattened_by_group_and_labels_keep_group_shape(tokenizer):
    collate = RetrievalCollator(DataArguments(), tokenizer)
    batch = collate([{"query": "q1", "passage": ["a", "b bb"], "label": [1, 0]},
                     {"query": "q2", "passage": ["c", "d"], "label": [0, 1]}])
    assert batch["passage"]["input_ids"].shape[0] == 4
    first = tokenizer("b bb")["input_ids"]
    assert batch["passage"]["input_ids"][1, : len(first)].tolist() == first
    assert batch["label"].dtype == torch.float32 and batch["label"].tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_only_the_keys_present_in_examples_are_returned(tokenizer):
    collate = RetrievalCollator(DataArguments(), tokenizer)
    assert set(collate([{"passage": ["a"]}])) == {"passage"}
    assert set(collate([{"query": "a"}])) == {"query"}


def test_eos_is_appended_within_the_token_budget(eos_tokenizer):
    collate = RetrievalCollator(DataArguments(query_max_len=6), eos_tokenizer, append_eos=True)
    batch = collate([{"query": LONG}, {"query": "hi"}])
    ids, mask = batch["query"]["input_ids"], batch["query"]["attention_mask"]
    assert ids.shape[1] == 6
    for row, length in enumerate(_lengths(batch["query"])):
        assert ids[row, length - 1].item() == eos_tokenizer.eos_token_id
    assert ids[1, :4].tolist() == eos_tokenizer("hi")["input_ids"] + [eos_tokenizer.eos_token_id]
    assert mask[1].tolist() == [1, 1, 1, 1, 0, 0]


def test_eos_is_not_doubled_when_the_tokenizer_already_ends_with_it(tokenizer):
    tokenizer.eos_token = tokenizer.sep_token  # BERT already ends every input with [SEP]
    out = tokenize_texts(tokenizer, ["hello there"], max_len=None, append_eos=True)
    assert out["input_ids"][0] == tokenizer("hello there")["input_ids"]


def test_append_eos_without_an_eos_token_is_a_config_error(tokenizer):
    assert tokenizer.eos_token_id is None
    with pytest.raises(ConfigError, match="eos"):
        tokenize_texts(tokenizer, ["x"], max_len=8, append_eos=True)


def test_seed_idiom_pad_token_id_equals_eos_none_still_pads(tokenizer):
    tokenizer.pad_token_id = tokenizer.eos_token_id  # None for BERT tokenizers, as in the seed code
    batch = RetrievalCollator(DataArguments(), tokenizer)([{"query": "a b c"}, {"query": "a"}])
    assert batch["query"]["input_ids"][1, -1].item() == 0
    assert batch["query"]["attention_mask"][1, -1].item() == 0


def test_model_max_length_applies_when_data_args_leave_it_unset(tokenizer):
    collate = RetrievalCollator(DataArguments(), tokenizer, model_max_length=5)
    assert collate([{"query": LONG}])["query"]["input_ids"].shape == (1, 5)


def test_pad_token_lists_pads_only_the_selected_rows(tokenizer):
    features = tokenize_texts(tokenizer, ["a b c d e", "a", "a b"], max_len=None)
    batch = pad_token_lists(tokenizer, features, rows=[2, 1])
    assert batch["input_ids"].shape == (2, 4)
    assert batch["input_ids"][0].tolist() == features["input_ids"][2]


def test_unequal_passage_groups_are_an_input_error(tokenizer):
    collate = RetrievalCollator(DataArguments(), tokenizer)
    with pytest.raises(InputError, match="group_size"):
        collate([{"passage": ["a", "b"]}, {"passage": ["c"]}])


def test_missing_query_text_is_an_input_error(tokenizer):
    with pytest.raises(InputError, match="example 1"):
        RetrievalCollator(DataArguments(), tokenizer)([{"query": "a"}, {"query": None}])


def test_labels_that_do_not_match_passages_are_an_input_error(tokenizer):
    with pytest.raises(InputError, match="one label per passage"):
        RetrievalCollator(DataArguments(), tokenizer)([{"passage": ["a", "b"], "label": [1.0]}])


def test_scoring_batches_carry_passage_text_hashes_and_padded_positive_rows(tokenizer):
    collate = RetrievalCollator(DataArguments(), tokenizer)
    batch = collate([{"query": "q", "passage": ["a", "b"], "label": [1, 0], "positive_rows": [4, 5]},
                     {"query": "r", "passage": ["b", "c"], "label": [1, 0], "positive_rows": []}])
    assert batch["passage_hash"].shape == (2, 2) and batch["passage_hash"][0, 1] == batch["passage_hash"][1, 0]
    assert batch["positive_rows"].tolist() == [[4, 5], [-1, -1]]
    assert "passage_hash" not in collate([{"passage": ["a"]}])  # encoding passages alone: nothing to mask
