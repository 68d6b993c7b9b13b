"""The linear projection head (``projection_dim``; OpenMatch --add_linear_head, DPR projection_dim): applied after
pooling and before normalization on both encode paths, saved as ``projection.safetensors`` with
``projection_dim`` in densekit_config.json, reloaded as it was, restored strictly by resume-style
``load_weights``, and refused clearly when its shape does not match."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from densekit.errors import ConfigError
from densekit.modeling.encoders.default import pool
from densekit.modeling.model_args import ModelArguments
from densekit.modeling.projection import PROJECTION_FILE
from densekit.modeling.retriever import BiEncoderRetriever

TEXTS = ["what are cats?", "bread is baked from flour water yeast and salt",
         "the sun is the star at the centre of the solar system, and rain falls from clouds", "dogs"]


def build(model_dir, seed=0, **settings):
    torch.manual_seed(seed)  # the new head's initial weights
    return BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=str(model_dir), **settings))


def inputs(model_dir):
    return dict(AutoTokenizer.from_pretrained(str(model_dir))(TEXTS, padding=True, return_tensors="pt"))


def embed(model, batch, kind="query"):
    model.eval()
    with torch.inference_mode():
        return (model.encode_query if kind == "query" else model.encode_passage)(batch)


def test_head_is_applied_after_pooling_and_before_normalization(tiny_model_dir):
    model = build(tiny_model_dir, projection_dim=8, pooling="mean", normalize=True)
    encoder, batch = model.encoder, inputs(tiny_model_dir)
    assert isinstance(encoder.projection, torch.nn.Linear) and encoder.projection.in_features == 32
    got = embed(model, batch)
    with torch.no_grad():
        hidden = encoder.model(**batch).last_hidden_state
        expected = F.normalize(encoder.projection(pool(hidden, batch["attention_mask"], "mean")), dim=-1)
    assert got.shape == (len(TEXTS), 8)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_fast_inference_path_applies_the_head_too(tiny_model_dir):
    """With two threads the chunked parallel forward runs (it pools through the encoder's own reduce)."""
    model = build(tiny_model_dir, projection_dim=8, pooling="cls")
    batch = inputs(tiny_model_dir)
    slow = build(tiny_model_dir, projection_dim=8, pooling="cls", fast_inference=False)
    torch.set_num_threads(2)  # restored by conftest's one_torch_thread
    torch.testing.assert_close(embed(model, batch), embed(slow, batch), atol=1e-6, rtol=0)


def test_head_trains(tiny_model_dir):
    model = build(tiny_model_dir, projection_dim=8).train()
    batch = inputs(tiny_model_dir)
    model.encode_query(batch).pow(2).sum().backward()
    head = model.encoder.projection
    assert head.weight.requires_grad and head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    assert any(p is head.weight for p in model.parameters())  # the optimizer sees it


@pytest.mark.parametrize("untied", [False, True])
def test_head_round_trips_through_save_and_reload(tiny_model_dir, tmp_path, untied):
    settings = dict(projection_dim=8, pooling="mean", normalize=True, untie_encoder=untied)
    model = build(tiny_model_dir, **settings)
    batch = inputs(tiny_model_dir)
    before = {kind: embed(model, batch, kind) for kind in ("query", "passage")}
    model.save_pretrained(tmp_path / "saved", tokenizer=AutoTokenizer.from_pretrained(str(tiny_model_dir)))

    folders = [tmp_path / "saved" / sub for sub in ("query_model", "passage_model")] if untied else [tmp_path / "saved"]
    for folder in folders:
        assert (folder / PROJECTION_FILE).is_file()
        assert json.loads((folder / "densekit_config.json").read_text())["projection_dim"] == 8
        from safetensors.torch import load_file

        assert not any("projection" in key for key in load_file(folder / "model.safetensors"))  # HF weights untouched

    torch.manual_seed(123)  # a reload must not draw a new head
    reloaded = BiEncoderRetriever.from_pretrained(tmp_path / "saved")
    for kind in ("query", "passage"):
        assert reloaded.tower(kind).projection.out_features == 8
        torch.testing.assert_close(embed(reloaded, batch, kind), before[kind], atol=0, rtol=0)


def test_model_without_head_saves_no_head_file_and_overwrites_a_stale_one(tiny_model_dir, tmp_path):
    build(tiny_model_dir, projection_dim=8).save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / PROJECTION_FILE).is_file()
    plain = build(tiny_model_dir)
    assert plain.encoder.projection is None
    plain.save_pretrained(tmp_path / "ckpt")
    assert not (tmp_path / "ckpt" / PROJECTION_FILE).exists()
    assert json.loads((tmp_path / "ckpt" / "densekit_config.json").read_text())["projection_dim"] is None
    assert BiEncoderRetriever.from_pretrained(tmp_path / "ckpt").encoder.projection is None


def test_resume_style_load_weights_restores_the_head(tiny_model_dir, tmp_path):
    trained = build(tiny_model_dir, seed=1, projection_dim=8)
    with torch.no_grad():
        trained.encoder.projection.weight.mul_(3.0)  # as if trained
    trained.save_pretrained(tmp_path / "checkpoint-3")
    batch = inputs(tiny_model_dir)

    fresh = build(tiny_model_dir, seed=2, projection_dim=8)  # another initial head
    assert not torch.allclose(embed(fresh, batch), embed(trained, batch))
    fresh.load_checkpoint_weights(tmp_path / "checkpoint-3")
    torch.testing.assert_close(embed(fresh, batch), embed(trained, batch), atol=0, rtol=0)


def test_load_weights_refuses_a_head_of_another_shape_or_a_missing_one(tiny_model_dir, tmp_path):
    build(tiny_model_dir, projection_dim=8).save_pretrained(tmp_path / "with_head")
    build(tiny_model_dir).save_pretrained(tmp_path / "without_head")
    wider = build(tiny_model_dir, projection_dim=16)
    weight_before = wider.encoder.projection.weight.clone()
    with pytest.raises(ConfigError, match=r"other shape: projection\.bias \(8,\) vs \(16,\), projection\.weight \(8, 32\) vs \(16, 32\).*projection_dim"):
        wider.load_checkpoint_weights(tmp_path / "with_head")
    assert torch.equal(wider.encoder.projection.weight, weight_before)  # nothing loaded
    with pytest.raises(ConfigError, match=r"missing: projection\.bias, projection\.weight"):
        wider.load_checkpoint_weights(tmp_path / "without_head")
    with pytest.raises(ConfigError, match=r"unexpected: projection\.bias, projection\.weight"):
        build(tiny_model_dir).load_checkpoint_weights(tmp_path / "with_head")


def test_a_projection_dim_other_than_the_folders_head_is_a_clear_error(tiny_model_dir, tmp_path):
    build(tiny_model_dir, projection_dim=8).save_pretrained(tmp_path / "saved")
    with pytest.raises(ConfigError, match=r"projection_dim=16 but .*saved/projection\.safetensors holds a 8-dimensional head"):
        BiEncoderRetriever.from_pretrained(tmp_path / "saved", projection_dim=16)


def test_a_head_for_another_hidden_size_is_refused(tiny_model_dir, tmp_path):
    build(tiny_model_dir, projection_dim=8).save_pretrained(tmp_path / "saved")
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(8, 48), "bias": torch.zeros(8)}, str(tmp_path / "saved" / PROJECTION_FILE))
    with pytest.raises(ConfigError, match="takes 48 inputs but the model .* has hidden size 32"):
        BiEncoderRetriever.from_pretrained(tmp_path / "saved")


def test_a_recorded_head_whose_file_is_missing_is_an_incomplete_checkpoint(tiny_model_dir, tmp_path):
    build(tiny_model_dir, projection_dim=8).save_pretrained(tmp_path / "saved")
    (tmp_path / "saved" / PROJECTION_FILE).unlink()
    with pytest.raises(ConfigError, match="records a 8-dimensional projection head but projection.safetensors is missing"):
        BiEncoderRetriever.from_pretrained(tmp_path / "saved")


def test_head_written_as_a_sentence_transformers_dense_module_gives_densekit_vectors(tiny_model_dir, tmp_path):
    """A saved model with a head gets a sentence-transformers Dense module between Pooling and Normalize:
    SentenceTransformer computes densekit's vectors, and densekit reads the Dense module back as the head."""
    from sentence_transformers import SentenceTransformer

    model = build(tiny_model_dir, projection_dim=8, pooling="mean", normalize=True)
    folder = tmp_path / "st"
    model.save_pretrained(folder, tokenizer=AutoTokenizer.from_pretrained(str(tiny_model_dir)))
    assert model.save_sentence_transformers_config(folder)
    modules = json.loads((folder / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Dense", "Normalize"]
    assert [m["name"] for m in modules] == ["0", "1", "2", "3"]
    (folder / PROJECTION_FILE).unlink()  # densekit must find the head in the Dense module alone
    (folder / "densekit_config.json").unlink()

    theirs = SentenceTransformer(str(folder), device="cpu").encode(TEXTS, convert_to_tensor=True, batch_size=2)
    torch.testing.assert_close(theirs, embed(model, inputs(tiny_model_dir)), atol=1e-6, rtol=0)
    reread = BiEncoderRetriever.from_pretrained(folder)
    torch.testing.assert_close(embed(reread, inputs(tiny_model_dir)), theirs, atol=1e-6, rtol=0)
