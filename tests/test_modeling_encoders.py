"""Encoders: pooling math, normalization, sentence-transformers defaults, argument validation, registry."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from densekit.errors import ConfigError
from densekit.modeling.encoders import DefaultEncoder, PretrainedEncoder, available_encoders, pool
from densekit.modeling.model_args import ModelArguments
from densekit.modeling.st_config import read_st_defaults


@pytest.fixture
def registry_guard():
    """Classes defined inside a test are removed from the registry afterwards, so they cannot leak."""
    before = list(PretrainedEncoder._registry)
    yield
    PretrainedEncoder._registry[:] = before


def _hidden_and_mask():
    torch.manual_seed(0)
    hidden = torch.randn(3, 5, 4)
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    return hidden, right


# ----------------------------------------------------------------------------------------- pooling
def test_mean_pooling_matches_hand_computed_masked_mean():
    hidden, mask = _hidden_and_mask()
    expected = torch.stack([hidden[i, : int(mask[i].sum())].mean(dim=0) for i in range(3)])
    assert torch.allclose(pool(hidden, mask, "mean"), expected, atol=1e-6)


def test_mean_pooling_of_half_precision_accumulates_in_float32():
    hidden, mask = _hidden_and_mask()
    out = pool(hidden.half(), mask, "mean")
    assert out.dtype == torch.float16
    assert torch.allclose(out.float(), pool(hidden.half().float(), mask, "mean"), atol=1e-3)


def test_cls_pooling_takes_first_real_token_with_right_and_left_padding():
    hidden, right = _hidden_and_mask()
    assert torch.equal(pool(hidden, right, "cls"), hidden[:, 0])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert torch.equal(pool(hidden, left, "cls"), torch.stack([hidden[0, 2], hidden[1, 0], hidden[2, 4]]))


def test_last_token_pooling_takes_last_real_token_with_right_padding():
    hidden, right = _hidden_and_mask()
    expected = torch.stack([hidden[0, 2], hidden[1, 4], hidden[2, 0]])
    assert torch.equal(pool(hidden, right, "last_token"), expected)


def test_last_token_pooling_takes_final_position_with_left_padding():
    hidden, _ = _hidden_and_mask()
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert torch.equal(pool(hidden, left, "last_token"), hidden[:, 4])


def test_unknown_pooling_mode_raises_config_error():
    hidden, mask = _hidden_and_mask()
    with pytest.raises(ConfigError, match="cls, mean, last_token"):
        pool(hidden, mask, "max")


# --------------------------------------------------------------------------------- default encoder
def _inputs(tiny_model_dir, texts=("hello world", "a somewhat longer piece of text here", "x")):
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    return tok(list(texts), padding=True, return_tensors="pt")


@pytest.mark.parametrize("pooling", ["cls", "mean", "last_token"])
def test_default_encoder_pools_the_models_last_hidden_state(tiny_model_dir, pooling):
    encoder = DefaultEncoder(ModelArguments(model_name_or_path=str(tiny_model_dir), pooling=pooling)).eval()
    reference = AutoModel.from_pretrained(str(tiny_model_dir)).eval()
    batch = _inputs(tiny_model_dir)
    with torch.no_grad():
        got = encoder.encode(**batch)
        hidden = reference(**batch).last_hidden_state
    mask = batch["attention_mask"]
    lengths = mask.sum(dim=1)
    if pooling == "cls":
        expected = hidden[:, 0]
    elif pooling == "mean":
        expected = torch.stack([hidden[i, : lengths[i]].mean(0) for i in range(len(lengths))])
    else:
        expected = torch.stack([hidden[i, lengths[i] - 1] for i in range(len(lengths))])
    assert got.shape == (3, 32)
    assert torch.allclose(got, expected, atol=1e-5)


def test_normalize_true_gives_unit_vectors_and_false_does_not(tiny_model_dir):
    batch = _inputs(tiny_model_dir)
    plain = DefaultEncoder(ModelArguments(model_name_or_path=str(tiny_model_dir), normalize=False)).eval()
    unit = DefaultEncoder(ModelArguments(model_name_or_path=str(tiny_model_dir), normalize=True)).eval()
    with torch.no_grad():
        raw, normed = plain.encode(**batch), unit.encode(**batch)
    assert torch.allclose(normed.norm(dim=1), torch.ones(3), atol=1e-5)
    assert not torch.allclose(raw.norm(dim=1), torch.ones(3), atol=1e-3)
    assert torch.allclose(normed, raw / raw.norm(dim=1, keepdim=True), atol=1e-5)


def test_plain_hf_checkpoint_defaults_to_mean_unnormalized_and_position_limit(tiny_model_dir):
    encoder = DefaultEncoder(ModelArguments(model_name_or_path=str(tiny_model_dir)))
    assert (encoder.pooling, encoder.normalize, encoder.max_length) == ("mean", False, 128)


def test_torch_dtype_argument_sets_the_weights_dtype(tiny_model_dir):
    encoder = DefaultEncoder(ModelArguments(model_name_or_path=str(tiny_model_dir), torch_dtype="bfloat16"))
    assert next(encoder.parameters()).dtype == torch.bfloat16


def test_append_eos_token_only_for_last_token_pooling(tiny_model_dir):
    flags = {p: DefaultEncoder(ModelArguments(model_name_or_path=str(tiny_model_dir), pooling=p)).append_eos_token
             for p in ("cls", "mean", "last_token")}
    assert flags == {"cls": False, "mean": False, "last_token": True}


def test_missing_checkpoint_directory_raises_config_error(tmp_path):
    with pytest.raises(ConfigError, match="local checkpoint directory"):
        DefaultEncoder(ModelArguments(model_name_or_path=str(tmp_path / "nope")))


def test_encoder_without_model_path_raises_config_error():
    with pytest.raises(ConfigError, match="model_name_or_path"):
        DefaultEncoder(ModelArguments())


def test_format_query_and_passage_apply_prefixes_and_stripped_template(tiny_model_dir):
    encoder = DefaultEncoder(ModelArguments(model_name_or_path=str(tiny_model_dir), query_prefix="query: ",
                                            passage_prefix="passage: "))
    assert encoder.format_query("what is x") == "query: what is x"
    assert encoder.format_passage("body", title="Title") == "passage: Title body"
    assert encoder.format_passage("body") == "passage: body"
    assert encoder.format_passage("body ", title="") == "passage: body"
    custom = DefaultEncoder(ModelArguments(model_name_or_path=str(tiny_model_dir), passage_template="{title}. {text}"))
    assert custom.format_passage("b", title="T") == "T. b"


# ------------------------------------------------------------------------- sentence-transformers files
def _write_st_files(directory, pooling_config, normalize=True, max_seq_length=64):
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (directory / "modules.json").write_text(json.dumps(modules))
    (directory / "1_Pooling").mkdir(exist_ok=True)
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config))
    (directory / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))


def test_st_defaults_read_legacy_boolean_pooling_keys(tmp_path):
    _write_st_files(tmp_path, {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    got = read_st_defaults(tmp_path)
    assert (got.pooling, got.normalize, got.max_seq_length) == ("cls", True, 64)


def test_st_defaults_read_new_pooling_mode_key(tmp_path):
    _write_st_files(tmp_path, {"pooling_mode": "lasttoken"}, normalize=False)
    got = read_st_defaults(tmp_path)
    assert (got.pooling, got.normalize) == ("last_token", False)


def test_st_defaults_of_plain_hf_folder_are_unset(tiny_model_dir):
    got = read_st_defaults(tiny_model_dir)
    assert (got.pooling, got.normalize, got.max_seq_length, got.is_sentence_transformers) == (None, None, None, False)


@pytest.fixture
def st_tiny_dir(tiny_model_dir, tmp_path):
    directory = tmp_path / "st_tiny"
    shutil.copytree(tiny_model_dir, directory)
    _write_st_files(directory, {"pooling_mode_cls_token": True}, normalize=True, max_seq_length=16)
    return directory


def test_st_defaults_apply_when_arguments_are_unset(st_tiny_dir):
    encoder = DefaultEncoder(ModelArguments(model_name_or_path=str(st_tiny_dir)))
    assert (encoder.pooling, encoder.normalize, encoder.max_length) == ("cls", True, 16)


def test_explicit_arguments_win_over_st_defaults(st_tiny_dir):
    encoder = DefaultEncoder(ModelArguments(model_name_or_path=str(st_tiny_dir), pooling="mean", normalize=False,
                                            max_length=32))
    assert (encoder.pooling, encoder.normalize, encoder.max_length) == ("mean", False, 32)


def test_unsupported_st_pooling_raises_config_error_unless_overridden(st_tiny_dir):
    (st_tiny_dir / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(ConfigError, match="'max'"):
        DefaultEncoder(ModelArguments(model_name_or_path=str(st_tiny_dir)))
    assert DefaultEncoder(ModelArguments(model_name_or_path=str(st_tiny_dir), pooling="mean")).pooling == "mean"


@pytest.mark.integration
def test_bundled_minilm_declares_mean_pooling_normalize_and_256_tokens(minilm_dir):
    encoder = DefaultEncoder(ModelArguments(model_name_or_path=minilm_dir))
    assert (encoder.pooling, encoder.normalize, encoder.max_length) == ("mean", True, 256)


# ------------------------------------------------------------------------------------ ModelArguments
def test_unknown_pooling_argument_lists_the_choices():
    with pytest.raises(ConfigError, match="cls, mean, last_token"):
        ModelArguments(model_name_or_path="x", pooling="max")


@pytest.mark.parametrize("bad", ["yes", "true", 1])
def test_normalize_must_be_a_bool_not_a_string(bad):
    with pytest.raises(ConfigError, match="normalize must be True or False"):
        ModelArguments(model_name_or_path="x", normalize=bad)


@pytest.mark.parametrize("template", ["{title}", "{title} {body}", "{text} {}", "{text"])
def test_passage_template_must_use_text_and_only_known_fields(template):
    with pytest.raises(ConfigError, match="passage_template"):
        ModelArguments(passage_template=template)


def test_nonpositive_temperature_and_tiny_max_length_are_rejected():
    with pytest.raises(ConfigError, match="temperature"):
        ModelArguments(temperature=0)
    with pytest.raises(ConfigError, match="max_length"):
        ModelArguments(max_length=1)


def test_model_arguments_parse_from_command_line_with_typed_values():
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(ModelArguments).parse_args_into_dataclasses(
        ["--model_name_or_path", "m", "--pooling", "cls", "--normalize", "true", "--temperature", "0.05"])
    assert (args.pooling, args.normalize, args.temperature) == ("cls", True, 0.05)


# ------------------------------------------------------------------------------------------- registry
def test_default_encoder_is_found_by_alias_and_class_name():
    assert PretrainedEncoder.find("default") is DefaultEncoder
    assert PretrainedEncoder.find("DefaultEncoder") is DefaultEncoder
    assert {"default", "DefaultEncoder"} <= set(available_encoders())


def test_custom_encoder_registers_by_name_and_aliases(registry_guard):
    class ToyEncoder(PretrainedEncoder):
        _alias = ("toy", "toy-v2")

    assert PretrainedEncoder.find("ToyEncoder") is ToyEncoder
    assert PretrainedEncoder.find("toy") is ToyEncoder
    assert PretrainedEncoder.find("TOY-v2") is ToyEncoder
    assert "toy" in PretrainedEncoder.available_encoders()


def test_user_class_defined_later_wins_over_builtin_alias(registry_guard):
    class MyDefault(DefaultEncoder):
        _alias = "default"

    assert PretrainedEncoder.find("default") is MyDefault


def test_subclass_does_not_inherit_its_parents_alias(registry_guard):
    class Variant(DefaultEncoder):
        pass

    assert PretrainedEncoder.find("default") is DefaultEncoder
    assert PretrainedEncoder.find("Variant") is Variant


def test_unknown_encoder_name_error_lists_available_names():
    with pytest.raises(ConfigError) as info:
        PretrainedEncoder.find("no-such-encoder")
    assert "no-such-encoder" in str(info.value) and "default" in str(info.value)
