"""Every bad option is one clear error before any work: exit 1, a message naming the flag or file, no
traceback, no model loaded, no output folder (or ``pending.json``) left behind."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from densekit.cli.main import main
from densekit.errors import ConfigError
from densekit.modeling.encoders.default import DefaultEncoder
from densekit.modeling.model_args import ModelArguments
from densekit.modeling.retriever import BiEncoderRetriever
from tests.helpers import write_beir


@pytest.fixture
def beir(tmp_path) -> Path:
    folder = write_beir(tmp_path / "beir", split="train")
    write_beir(folder, split="test")
    return folder


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a command gets as far as loading a model."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad option was reported")

    monkeypatch.setattr(BiEncoderRetriever, "from_model_args", classmethod(refuse))


def fails(argv: list[str], capsys) -> str:
    """Run ``densekit argv`` in-process; assert exit 1 and return the one-line message."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    return err


def train_argv(model: Path, beir: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model_name_or_path", str(model), "--dataset", str(beir), "--output_dir", str(out),
            "--group_size", "2", "--per_device_train_batch_size", "3", "--save_strategy", "no",
            "--disable_tqdm", "true", *extra]


def eval_argv(model: Path, beir: Path, out: Path, *extra: str) -> list[str]:
    return ["evaluate", "--model_name_or_path", str(model), "--dataset", str(beir), "--output_dir", str(out),
            *extra]


# ------------------------------------------------------------------------------------------ unknown flags
def test_unknown_flag_is_named_without_traceback(tiny_model_dir, beir, tmp_path):
    out = tmp_path / "model"
    result = subprocess.run([sys.executable, "-m", "densekit.cli.main", *train_argv(tiny_model_dir, beir, out),
                             "--bogus", "1"], capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 1
    assert "unknown option --bogus" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_misspelt_flag_suggests_the_closest_and_is_not_taken_as_a_prefix(tiny_model_dir, beir, tmp_path, capsys,
                                                                          no_model_load):
    out = tmp_path / "model"
    err = fails(train_argv(tiny_model_dir, beir, out, "--learning_rat", "1e-5"), capsys)
    assert "unknown option --learning_rat (did you mean --learning_rate?)" in err
    assert not out.exists()


def test_unknown_key_in_a_config_file_suggests_the_closest(tiny_model_dir, beir, tmp_path, capsys, no_model_load):
    config = tmp_path / "eval.yaml"
    config.write_text(f"model_name_or_path: {tiny_model_dir}\ndataset: {beir}\nsearch_topks: 10\n")
    err = fails(["evaluate", str(config)], capsys)
    assert "search_topks" in err and "did you mean --search_topk?" in err


def test_malformed_value_is_a_config_error(tiny_model_dir, beir, tmp_path, capsys, no_model_load):
    err = fails(train_argv(tiny_model_dir, beir, tmp_path / "m", "--per_device_train_batch_size", "many"), capsys)
    assert "--per_device_train_batch_size" in err and "'many'" in err


# ------------------------------------------------------------------------------------------ sizes and schedule
@pytest.mark.parametrize("flag, value", [("--per_device_train_batch_size", "0"), ("--learning_rate", "-1"),
                                         ("--num_train_epochs", "0"), ("--gradient_accumulation_steps", "0")])
def test_train_refuses_bad_numbers_before_loading_or_creating_anything(flag, value, tiny_model_dir, beir, tmp_path,
                                                                        capsys, no_model_load):
    out = tmp_path / "model"
    err = fails(train_argv(tiny_model_dir, beir, out, flag, value), capsys)
    assert flag.lstrip("-") in err
    assert not out.exists()


def test_zero_epochs_train_when_max_steps_decides(tiny_model_dir, beir, tmp_path, capsys):
    out = tmp_path / "model"
    assert main(train_argv(tiny_model_dir, beir, out, "--num_train_epochs", "0", "--max_steps", "1")) == 0
    assert "1 steps" in capsys.readouterr().out


def test_evaluate_refuses_a_zero_batch_size_before_loading(tiny_model_dir, beir, tmp_path, capsys, no_model_load):
    out = tmp_path / "eval"
    err = fails(eval_argv(tiny_model_dir, beir, out, "--per_device_eval_batch_size", "0"), capsys)
    assert "--per_device_eval_batch_size must be a positive integer, got 0" in err
    assert not out.exists()


def test_encode_refuses_a_zero_block_size_and_leaves_no_pending_file(tiny_model_dir, beir, tmp_path, capsys,
                                                                     no_model_load):
    out = tmp_path / "embeddings"
    err = fails(["encode", "--model_name_or_path", str(tiny_model_dir), "--input_path", str(beir / "corpus.jsonl"),
                 "--output_dir", str(out), "--block_size", "0"], capsys)
    assert "--block_size must be a positive integer, got 0" in err
    assert not out.exists() and not list(tmp_path.rglob("pending.json"))


def test_encode_refuses_a_shard_outside_the_shards(tiny_model_dir, beir, tmp_path, capsys, no_model_load):
    out = tmp_path / "embeddings"
    err = fails(["encode", "--model_name_or_path", str(tiny_model_dir), "--input_path", str(beir / "corpus.jsonl"),
                 "--output_dir", str(out), "--shard_id", "2", "--num_shards", "2"], capsys)
    assert "--shard_id 2 is not below --num_shards 2" in err and not out.exists()


# ------------------------------------------------------------------------------------------ convert output
def test_convert_to_a_file_format_refuses_an_existing_folder(beir, tmp_path, capsys):
    folder = tmp_path / "out"
    folder.mkdir()
    for fmt in ("trec", "tevatron"):
        err = fails(["convert", "--input", str(beir), "--input_format", "beir", "--output", str(folder),
                     "--output_format", fmt], capsys)
        assert f"--output {folder} is an existing folder" in err and "give a file path" in err
    assert not any(folder.iterdir()) and not list(tmp_path.glob(".out*"))


def test_convert_to_beir_refuses_an_existing_file(beir, tmp_path, capsys):
    target = tmp_path / "out.txt"
    target.write_text("keep me")
    err = fails(["convert", "--input", str(beir), "--input_format", "beir", "--output", str(target),
                 "--output_format", "beir"], capsys)
    assert "is an existing file" in err and target.read_text() == "keep me"


# ------------------------------------------------------------------------------------------ model folders
def test_empty_model_folder_is_named_with_what_is_missing(beir, tmp_path, capsys):
    empty = tmp_path / "empty_model"
    empty.mkdir()
    out = tmp_path / "eval"
    err = fails(eval_argv(empty, beir, out), capsys)
    assert str(empty) in err and "no config.json" in err and "empty" in err
    assert not out.exists()


def test_config_without_model_type_is_named(beir, tmp_path, capsys):
    folder = tmp_path / "no_type"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"hidden_size": 32}))
    out = tmp_path / "model"
    err = fails(train_argv(folder, beir, out), capsys)
    assert str(folder / "config.json") in err and '"model_type"' in err
    assert not out.exists()


def test_missing_model_folder_and_missing_flag(beir, tmp_path, capsys):
    err = fails(eval_argv(tmp_path / "nowhere", beir, tmp_path / "eval"), capsys)
    assert "nowhere" in err and "does not exist" in err
    err = fails(["evaluate", "--dataset", str(beir)], capsys)
    assert "--model_name_or_path is required" in err


def test_loading_an_unloadable_folder_through_the_api_is_a_config_error(tmp_path):
    folder = tmp_path / "no_type"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="model_type"):
        DefaultEncoder(ModelArguments(model_name_or_path=str(folder)))
    (folder / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    with pytest.raises(ConfigError, match="cannot load a model from"):
        DefaultEncoder(ModelArguments(model_name_or_path=str(folder)))


# ------------------------------------------------------------------------------------------ random negatives
def test_random_corpus_negatives_give_no_short_negatives_warning_and_skip_still_trains(tiny_model_dir, beir,
                                                                                        tmp_path, capsys):
    for extra in ((), ("--short_negatives", "skip")):
        out = tmp_path / f"model{len(extra)}"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code = main(train_argv(tiny_model_dir, beir, out, "--group_size", "4", "--max_steps", "1", *extra))
        assert code == 0, capsys.readouterr().err
        assert "6 queries, 1 steps" in capsys.readouterr().out
        assert not [w for w in caught if "negatives" in str(w.message)]
