"""BiEncoderRetriever: construction from arguments, delegation to the encoder, save/load round trip."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer

from densekit.errors import ConfigError
from densekit.modeling.encoders import DENSEKIT_CONFIG_NAME, DefaultEncoder, PretrainedEncoder
from densekit.modeling.model_args import ModelArguments
from densekit.modeling.retriever import BiEncoderRetriever


@pytest.fixture
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def _batch(tokenizer, texts):
    return tokenizer(texts, padding=True, return_tensors="pt")


def test_from_model_args_builds_the_named_encoder(tiny_model_dir):
    model = BiEncoderRetriever.from_model_args(args=ModelArguments(model_name_or_path=str(tiny_model_dir),
                                                                   pooling="last_token"))
    assert isinstance(model.encoder, DefaultEncoder)
    assert model.append_eos_token is True
    assert model.max_length == 128


def test_from_model_args_rejects_anything_but_model_arguments(tiny_model_dir):
    with pytest.raises(ConfigError, match="ModelArguments"):
        BiEncoderRetriever.from_model_args(args={"model_name_or_path": str(tiny_model_dir)})


def test_format_methods_delegate_to_the_encoder(tiny_model_dir):
    model = BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=str(tiny_model_dir),
                                                              query_prefix="q: ", passage_prefix="p: "))
    assert model.format_query("x", dataset="msmarco") == "q: x"
    assert model.format_passage("body", title="T") == "p: T body"


def test_forward_scores_every_query_against_every_passage(tiny_model_dir, tokenizer):
    model = BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=str(tiny_model_dir))).eval()
    query, passage = _batch(tokenizer, ["q one", "q two"]), _batch(tokenizer, ["p1", "p two", "p3 x", "p4"])
    with torch.no_grad():
        out = model(query=query, passage=passage)
        q, p = model.encode_query(query), model.encode_passage(passage)
    assert out.logits.shape == (2, 4)
    assert torch.allclose(out.logits, q @ p.T, atol=1e-6)
    assert out.loss is None


def test_save_and_reload_gives_identical_embeddings_and_settings(tiny_model_dir, tokenizer, tmp_path):
    args = ModelArguments(model_name_or_path=str(tiny_model_dir), pooling="cls", normalize=True,
                          query_prefix="query: ", passage_template="{title}: {text}", max_length=40)
    model = BiEncoderRetriever.from_model_args(args).eval()
    with torch.no_grad():  # change a weight so a reload of the original checkpoint would be caught
        model.encoder.model.embeddings.word_embeddings.weight.mul_(1.5)
    model.save_pretrained(tmp_path / "ckpt", tokenizer=tokenizer)

    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    assert (tmp_path / "ckpt" / "tokenizer_config.json").is_file()
    saved = json.loads((tmp_path / "ckpt" / DENSEKIT_CONFIG_NAME).read_text())
    assert saved["encoder_class"] == "DefaultEncoder" and saved["pooling"] == "cls" and saved["normalize"] is True

    again = BiEncoderRetriever.from_pretrained(tmp_path / "ckpt").eval()
    batch = _batch(tokenizer, ["some text", "another, longer text for the encoder"])
    with torch.no_grad():
        assert torch.equal(model.encode_passage(batch), again.encode_passage(batch))
    enc = again.encoder
    assert (enc.pooling, enc.normalize, enc.max_length) == ("cls", True, 40)
    assert again.format_query("x") == "query: x" and again.format_passage("b", title="T") == "T: b"


def test_from_pretrained_overrides_replace_saved_settings(tiny_model_dir, tmp_path):
    BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=str(tiny_model_dir), pooling="cls")
                                       ).save_pretrained(tmp_path / "ckpt")
    assert BiEncoderRetriever.from_pretrained(tmp_path / "ckpt", pooling="mean").encoder.pooling == "mean"


def test_checkpoint_of_custom_encoder_reloads_as_that_class(tiny_model_dir, tmp_path):
    before = list(PretrainedEncoder._registry)
    try:
        class PrefixedEncoder(DefaultEncoder):
            _alias = "prefixed-test"

            def format_query(self, text, dataset=None):
                return f"[{dataset}] {text}"

        model = BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=str(tiny_model_dir),
                                                                  encoder_class="prefixed-test"))
        model.save_pretrained(tmp_path / "ckpt")
        again = BiEncoderRetriever.from_pretrained(tmp_path / "ckpt")
        assert type(again.encoder) is PrefixedEncoder
        assert again.format_query("hi", dataset="nq") == "[nq] hi"
    finally:
        PretrainedEncoder._registry[:] = before


def test_plain_hf_folder_loads_with_from_pretrained(tiny_model_dir):
    model = BiEncoderRetriever.from_pretrained(tiny_model_dir)
    assert isinstance(model.encoder, DefaultEncoder) and model.encoder.pooling == "mean"
