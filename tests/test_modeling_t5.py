"""T5 encoders (OpenMatch's t5-base-scaled, GTR, Sentence-T5): an encoder-decoder checkpoint loads its encoder
only, pools its token states (mean or first token), reloads as it was saved, honours a sentence-transformers
layout with Dense + Normalize exactly as SentenceTransformer does, and refuses checkpoints whose encoder
would be random."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from transformers import AutoTokenizer

from densekit.errors import ConfigError
from densekit.evaluation.encoding import encode_texts
from densekit.modeling.model_args import ModelArguments
from densekit.modeling.retriever import BiEncoderRetriever
from tests.tiny_models import T5_FAMILIES, add_st_dense_normalize, build_tiny_t5, tokenize

TEXTS = ["what are cats?", "how is bread baked", "the sun is a star of the solar system and rain falls from clouds"]


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    """A full T5 (encoder + decoder), as t5-base is on the hub."""
    return build_tiny_t5(tmp_path_factory.mktemp("t5"))


@pytest.fixture(scope="module", params=list(T5_FAMILIES))
def family_dir(request, tmp_path_factory):
    """(prefix, folder) of a full T5, mT5 or umT5 (encoder + decoder; umT5 has a position bias in every layer)."""
    return T5_FAMILIES[request.param], build_tiny_t5(tmp_path_factory.mktemp(request.param), family=request.param)


def load(path, **settings):
    return BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=str(path), **settings)).eval()


def by_hand(path, prefix="T5"):
    """transformers' own encoder-only model (T5EncoderModel, or the MT5/UMT5 one) and the token states of TEXTS."""
    batch = tokenize(path, TEXTS)
    encoder = getattr(transformers, f"{prefix}EncoderModel").from_pretrained(str(path)).eval()
    with torch.no_grad():
        hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return batch, hidden


def densekit_vectors(model, path, kind="passage"):
    fmt = model.format_query if kind == "query" else model.format_passage
    return torch.from_numpy(encode_texts(model, AutoTokenizer.from_pretrained(str(path)), [fmt(t) for t in TEXTS],
                                         kind=kind, batch_size=2, show_progress=False))


def test_encoder_decoder_checkpoint_loads_its_encoder_and_mean_pools_like_by_hand(family_dir):
    prefix, folder = family_dir
    assert json.loads((folder / "config.json").read_text())["architectures"] == [f"{prefix}ForConditionalGeneration"]
    model = load(folder)
    assert type(model.encoder.model).__name__ == f"{prefix}EncoderModel" and model.encoder.pooling == "mean"
    batch, hidden = by_hand(folder, prefix)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = (hidden * mask).sum(1) / mask.sum(1)
    for kind in ("query", "passage"):
        torch.testing.assert_close(densekit_vectors(model, folder, kind), expected, atol=1e-6, rtol=0)


def test_first_token_pooling(t5_dir):
    _, hidden = by_hand(t5_dir)
    torch.testing.assert_close(densekit_vectors(load(t5_dir, pooling="cls"), t5_dir), hidden[:, 0], atol=1e-6, rtol=0)


def test_saved_t5_reloads_as_what_it_was(family_dir, tmp_path):
    prefix, folder = family_dir
    model = load(folder, pooling="cls", projection_dim=6)
    before = densekit_vectors(model, folder)
    model.save_pretrained(tmp_path / "saved", tokenizer=AutoTokenizer.from_pretrained(str(folder)))
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["architectures"] == [f"{prefix}EncoderModel"]
    reloaded = BiEncoderRetriever.from_pretrained(tmp_path / "saved").eval()
    assert (reloaded.encoder.pooling, reloaded.encoder.projection.out_features) == ("cls", 6)
    torch.testing.assert_close(densekit_vectors(reloaded, tmp_path / "saved"), before, atol=0, rtol=0)
    reloaded.load_checkpoint_weights(tmp_path / "saved")  # resume-style strict load of a T5 checkpoint


def test_sentence_t5_layout_with_dense_and_normalize_gives_sentence_transformers_vectors(tmp_path):
    from sentence_transformers import SentenceTransformer

    folder = add_st_dense_normalize(build_tiny_t5(tmp_path / "st5", seed=3), out_features=12, bias=False)
    model = load(folder)
    encoder = model.encoder
    assert (encoder.pooling, encoder.normalize, encoder.max_length) == ("mean", True, 64)
    assert encoder.projection.out_features == 12 and encoder.projection.bias is None
    theirs = SentenceTransformer(str(folder), device="cpu").encode(TEXTS, convert_to_numpy=True, batch_size=2)
    np.testing.assert_allclose(densekit_vectors(model, folder).numpy(), theirs, atol=1e-6, rtol=0)


def test_sentence_transformers_dense_with_an_activation_is_refused(tmp_path):
    folder = add_st_dense_normalize(build_tiny_t5(tmp_path / "st5"))
    config_file = folder / "2_Dense" / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "activation_function": "torch.nn.modules.activation.Tanh"}))
    with pytest.raises(ConfigError, match="2_Dense.*activation 'torch.nn.modules.activation.Tanh'.*linear"):
        load(folder)


def test_missing_encoder_weights_are_a_clear_error_not_random_weights(t5_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "decoder_only_weights"
    shutil.copytree(t5_dir, broken)
    state = load_file(broken / "model.safetensors")
    save_file({k: v for k, v in state.items() if not k.startswith("encoder.block.1.")}, str(broken / "model.safetensors"),
              metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=r"decoder_only_weights.*does not hold the encoder T5EncoderModel needs "
                                          r"\(missing weights: encoder\.block\.1\..*would be random"):
        load(broken)


def test_an_encoder_decoder_without_an_encoder_module_is_a_clear_error(tmp_path, tiny_model_dir):
    """A config that claims to be an encoder-decoder while its model has no encoder (get_encoder() is the model)."""
    import shutil

    folder = tmp_path / "claims_enc_dec"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "is_encoder_decoder": True}))
    with pytest.raises(ConfigError, match="claims_enc_dec is an encoder-decoder checkpoint .*without a separate text encoder .*BertEncoder, which takes no input_ids"):
        load(folder)


def test_other_encoder_decoders_load_their_get_encoder_and_reload_as_saved(tmp_path):
    """The generic fallback (an encoder-decoder without a T5-style encoder class): BART's get_encoder()."""
    from transformers import BartConfig, BartModel

    config = BartConfig(vocab_size=100, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64)
    torch.manual_seed(0)
    full = BartModel(config).eval()
    full.save_pretrained(tmp_path / "bart")
    ids = torch.randint(4, 100, (3, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    batch = {"input_ids": ids * mask, "attention_mask": mask}
    with torch.no_grad():
        expected = full.get_encoder()(**batch).last_hidden_state[:, 0]
    model = load(tmp_path / "bart", pooling="cls")
    assert type(model.encoder.model).__name__ == "BartEncoder"
    with torch.inference_mode():
        torch.testing.assert_close(model.encode_query(batch), expected, atol=1e-6, rtol=0)
    model.save_pretrained(tmp_path / "saved")  # architectures: ["BartEncoder"], found in transformers' bart module
    with torch.inference_mode():
        torch.testing.assert_close(BiEncoderRetriever.from_pretrained(tmp_path / "saved").eval().encode_query(batch),
                                   expected, atol=1e-6, rtol=0)


def test_fast_inference_path_is_taken_for_t5_and_equals_the_plain_forward(family_dir, monkeypatch):
    """T5's positions are relative and padded keys masked (mT5's and umT5's too): chunks trimmed to their own
    length are exact."""
    from densekit.modeling import fast_inference

    _, folder = family_dir
    texts = TEXTS * 3
    batch = dict(tokenize(folder, texts))
    model = load(folder, projection_dim=5)
    calls = []
    real = fast_inference.ChunkedParallelForward.__call__
    monkeypatch.setattr(fast_inference.ChunkedParallelForward, "__call__",
                        lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    torch.set_num_threads(2)  # restored by conftest's one_torch_thread
    with torch.inference_mode():
        fast = model.encode_passage(batch)
        model.encoder.fast_inference = False
        plain = model.encode_passage(batch)
    assert calls and fast.shape == (len(texts), 5)
    torch.testing.assert_close(fast, plain, atol=1e-6, rtol=0)


def test_lora_t5_saved_as_adapters_reloads_onto_the_encoder(t5_dir, tmp_path):
    """A LoRA folder names its base (the full T5): the base goes through the same encoder-only loading and the
    adapters are loaded into it (AutoModel would build the encoder-decoder, where they do not fit)."""
    torch.manual_seed(0)
    model = load(t5_dir, use_peft=True, lora_r=2, projection_dim=4)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.1)  # as if trained: the adapters change the vectors
    model.save_pretrained(tmp_path / "lora")
    assert (tmp_path / "lora" / "adapter_config.json").is_file() and not (tmp_path / "lora" / "config.json").exists()
    reloaded = BiEncoderRetriever.from_pretrained(tmp_path / "lora").eval()
    assert type(reloaded.encoder.model).__name__ == "T5EncoderModel" and hasattr(reloaded.encoder.model, "peft_config")
    before = densekit_vectors(model.eval(), t5_dir)
    torch.testing.assert_close(densekit_vectors(reloaded, t5_dir), before, atol=1e-6, rtol=0)
    torch.manual_seed(0)
    without_adapters = load(t5_dir, projection_dim=4)  # the same head (drawn first), no adapters
    assert torch.equal(without_adapters.encoder.projection.weight, reloaded.encoder.projection.weight)
    assert not torch.allclose(densekit_vectors(without_adapters, t5_dir), before, atol=1e-4)
