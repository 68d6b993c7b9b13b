"""Untied query and passage towers: training, saving and reloading, the layouts of Tevatron/OpenMatch, the
per-tower cache keys, LoRA, resume, and the errors (mismatched tokenizers, half a pair)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoTokenizer

from densekit.cli.main import main
from densekit.errors import ConfigError
from densekit.modeling.encoders import TwoTowerEncoder
from densekit.modeling.encoding_spec import embedding_key, encoding_spec, weights_by_kind
from densekit.modeling.model_args import ModelArguments
from densekit.modeling.retriever import BiEncoderRetriever
from tests.conftest import build_tiny_bert, minilm_path
from tests.helpers import write_beir

QUERIES = ["what do cats eat?", "why is the sky blue"]
PASSAGES = ["cats are small domesticated felines", "rain is liquid water falling from clouds"]


def embed(model, tokenizer):
    model.eval()
    with torch.no_grad():
        q = model.encode_query(dict(tokenizer(QUERIES, padding=True, return_tensors="pt")))
        p = model.encode_passage(dict(tokenizer(PASSAGES, padding=True, return_tensors="pt")))
    return q, p


def train(model_args, beir, out, *extra):
    return main(["train", *model_args, "--dataset", str(beir), "--split", "train", "--output_dir", str(out),
                 "--group_size", "2", "--per_device_train_batch_size", "3", "--max_steps", "3",
                 "--learning_rate", "1e-3", "--save_strategy", "no", "--disable_tqdm", "true",
                 "--dataloader_pin_memory", "false", "--query_max_len", "16", "--passage_max_len", "32", *extra])


def test_untied_training_saves_two_towers_that_reload_with_the_same_embeddings(tiny_dropout_model_dir, tmp_path):
    beir = write_beir(tmp_path / "beir", split="train")
    out = tmp_path / "untied"
    assert train(["--model_name_or_path", str(tiny_dropout_model_dir), "--untie_encoder", "true"], beir, out,
                 "--grad_cache", "--query_chunk_size", "2", "--passage_chunk_size", "2") == 0
    for tower in ("query_model", "passage_model"):  # Tevatron's / OpenMatch's layout, each a full checkpoint
        assert (out / tower / "model.safetensors").is_file() and (out / tower / "densekit_config.json").is_file()
    assert json.loads((out / "densekit_config.json").read_text())["encoder_class"] == "TwoTowerEncoder"
    model = BiEncoderRetriever.from_pretrained(out)
    assert isinstance(model.encoder, TwoTowerEncoder)
    tokenizer = AutoTokenizer.from_pretrained(out)
    q, p = embed(model, tokenizer)
    # the towers were trained apart: the same text no longer gets the same vector from both
    same_text = dict(tokenizer(QUERIES, padding=True, return_tensors="pt"))
    with torch.no_grad():
        assert not torch.allclose(model.encode_query(same_text), model.encode_passage(same_text), atol=1e-4)
    again = BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=str(out)))  # the CLI's path
    q2, p2 = embed(again, tokenizer)
    assert torch.allclose(q, q2, atol=1e-6) and torch.allclose(p, p2, atol=1e-6)
    # resume path: weights loaded in place into a fresh untied model equal the saved ones
    fresh = BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=str(tiny_dropout_model_dir),
                                                              untie_encoder=True))
    fresh.load_checkpoint_weights(out)
    q3, p3 = embed(fresh, tokenizer)
    assert torch.allclose(q, q3, atol=1e-6) and torch.allclose(p, p3, atol=1e-6)
    # a shared model's checkpoint is not an untied one: refused, nothing loaded
    with pytest.raises(ConfigError, match="do not match|no model.safetensors"):
        fresh.load_checkpoint_weights(tiny_dropout_model_dir)


def test_untied_model_runs_evaluate_encode_search_and_mine(tiny_model_dir, tmp_path):
    beir = write_beir(tmp_path / "beir", split="train")
    shutil.copy(beir / "qrels" / "train.tsv", beir / "qrels" / "test.tsv")
    out = tmp_path / "untied"
    # mixed precision (bf16 autocast on the CPU) as a shared encoder has it
    assert train(["--model_name_or_path", str(tiny_model_dir), "--untie_encoder", "true"], beir, out, "--bf16") == 0
    common = ["--query_max_len", "16", "--passage_max_len", "32"]
    assert main(["evaluate", "--model_name_or_path", str(out), "--dataset", str(beir), "--search_topk", "10",
                 "--output_dir", str(tmp_path / "eval"), "--disable_tqdm", "true", *common]) == 0
    assert main(["encode", "--model_name_or_path", str(out), "--input_path", str(beir / "corpus.jsonl"),
                 "--output_dir", str(tmp_path / "corpus"), *common]) == 0
    assert main(["encode", "--model_name_or_path", str(out), "--input_path", str(beir / "queries.jsonl"),
                 "--output_dir", str(tmp_path / "queries"), "--kind", "query", *common]) == 0
    assert main(["search", "--query_embeddings", str(tmp_path / "queries"), "--corpus_embeddings",
                 str(tmp_path / "corpus"), "--topk", "10", "--qrels", str(beir / "qrels" / "test.tsv"),
                 "--output_dir", str(tmp_path / "searched")]) == 0
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())["aggregate"]
    searched = json.loads((tmp_path / "searched" / "metrics.json").read_text())["aggregate"]
    assert evaluated["nDCG@10"] == pytest.approx(searched["nDCG@10"], abs=1e-6)
    # the untied model's scores are not the shared base model's
    assert main(["evaluate", "--model_name_or_path", str(tiny_model_dir), "--dataset", str(beir), "--search_topk",
                 "10", "--output_dir", str(tmp_path / "base"), "--disable_tqdm", "true", *common]) == 0
    assert (tmp_path / "base" / "run.trec").read_text() != (tmp_path / "eval" / "run.trec").read_text()
    assert main(["mine", "--model_name_or_path", str(out), "--dataset", str(beir), "--split", "train",
                 "--search_topk", "5", "--output_dir", str(tmp_path / "mined"), "--disable_tqdm", "true",
                 *common]) == 0
    assert (tmp_path / "mined" / "mined_qrels.tsv").stat().st_size > 0


def test_tevatron_untied_folder_loads_as_two_towers(tmp_path):
    folder = tmp_path / "tevatron_untied"
    build_tiny_bert(folder / "query_model", seed=1)
    build_tiny_bert(folder / "passage_model", seed=2)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(folder)
    model = BiEncoderRetriever.from_pretrained(folder, pooling="cls")
    assert isinstance(model.encoder, TwoTowerEncoder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    q, p = embed(model, tokenizer)
    for kind, vectors, texts in (("query", q, QUERIES), ("passage", p, PASSAGES)):
        single = BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=str(folder / f"{kind}_model"),
                                                                   pooling="cls")).eval()
        with torch.no_grad():
            expected = single.encode_query(dict(tokenizer(texts, padding=True, return_tensors="pt")))
        assert torch.allclose(vectors, expected, atol=1e-6)


def test_two_checkpoints_as_towers_and_their_errors(tmp_path):
    q_dir, p_dir = build_tiny_bert(tmp_path / "q", seed=1), build_tiny_bert(tmp_path / "p", seed=2)
    args = ModelArguments(query_model_name_or_path=str(q_dir), passage_model_name_or_path=str(p_dir))
    assert args.untied and args.model_name_or_path == str(q_dir)  # the tokenizer is read from the query tower
    model = BiEncoderRetriever.from_model_args(args)
    assert model.tower("query") is not model.tower("passage")
    # a different tokenizer (no lower-casing) on one side: refused at load time, naming both folders
    AutoTokenizer.from_pretrained(minilm_path(), do_lower_case=False).save_pretrained(p_dir)
    with pytest.raises(ConfigError, match="different tokenizers"):
        BiEncoderRetriever.from_model_args(args)
    with pytest.raises(ConfigError, match="give both"):
        ModelArguments(passage_model_name_or_path=str(p_dir))


def test_each_tower_keys_its_own_kind_in_the_embedding_cache(tiny_model_dir):
    model = BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=str(tiny_model_dir),
                                                              untie_encoder=True))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    specs = {kind: encoding_spec(model, tokenizer, kind) for kind in ("query", "passage")}
    before = {kind: embedding_key(spec, model, ["a"], ["text"]) for kind, spec in specs.items()}
    assert weights_by_kind(model)["query"] == weights_by_kind(model)["passage"]  # both towers start equal
    with torch.no_grad():
        next(model.tower("query").parameters()).add_(0.01)
    after = {kind: embedding_key(spec, model, ["a"], ["text"]) for kind, spec in specs.items()}
    assert after["query"] != before["query"]
    assert after["passage"] == before["passage"]  # the passage vectors in a cache stay valid
    shared = BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=str(tiny_model_dir)))
    assert shared.tower("query") is shared.tower("passage")


def test_lora_adapters_on_both_towers_train_and_reload(tiny_model_dir, tmp_path):
    pytest.importorskip("peft", reason="peft is a test dependency")
    beir = write_beir(tmp_path / "beir", split="train")
    out = tmp_path / "lora"
    assert train(["--model_name_or_path", str(tiny_model_dir), "--untie_encoder", "true", "--use_peft", "true",
                  "--lora_target_modules", "query", "value"], beir, out) == 0
    for tower in ("query_model", "passage_model"):
        assert (out / tower / "adapter_model.safetensors").is_file()
    model = BiEncoderRetriever.from_pretrained(out)
    trainable = BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=str(tiny_model_dir),
                                                                  untie_encoder=True, use_peft=True,
                                                                  lora_target_modules=["query", "value"]))
    names = [n for n, p in trainable.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert any(n.startswith("encoder.query_encoder.") for n in names)
    assert any(n.startswith("encoder.passage_encoder.") for n in names)
    trainable.load_checkpoint_weights(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    q, p = embed(model, tokenizer)
    q2, p2 = embed(trainable, tokenizer)
    assert torch.allclose(q, q2, atol=1e-6) and torch.allclose(p, p2, atol=1e-6)


def write_openmatch_head(folder, weight):
    folder.mkdir(parents=True)
    torch.save({"linear.weight": weight}, folder / "model.pt")
    (folder / "config.json").write_text(json.dumps({"input_dim": weight.shape[1], "output_dim": weight.shape[0]}))


def test_openmatch_untied_folder_with_linear_heads_loads_each_tower_with_its_head(tmp_path):
    folder = tmp_path / "openmatch_untied"
    build_tiny_bert(folder / "query_model", seed=1)
    build_tiny_bert(folder / "passage_model", seed=2)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(folder)
    heads = {"query": torch.randn(8, 32), "passage": torch.randn(8, 32)}
    write_openmatch_head(folder / "head_q", heads["query"])
    write_openmatch_head(folder / "head_p", heads["passage"])
    model = BiEncoderRetriever.from_pretrained(folder, pooling="cls")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    q, p = embed(model, tokenizer)
    for kind, vectors, texts in (("query", q, QUERIES), ("passage", p, PASSAGES)):
        bare = BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=str(folder / f"{kind}_model"),
                                                                 pooling="cls", fast_inference=False))
        bare.tower(kind).projection = None  # the tower alone, without the head OpenMatch keeps beside it
        bare.eval()
        with torch.no_grad():
            pooled = bare.encode_query(dict(tokenizer(texts, padding=True, return_tensors="pt")))
        assert vectors.shape[1] == 8
        assert torch.allclose(vectors, pooled @ heads[kind].T, atol=1e-5)
    # a tied OpenMatch folder whose two heads differ cannot be one shared encoder
    tied = build_tiny_bert(tmp_path / "openmatch_tied")
    write_openmatch_head(tied / "head_q", heads["query"])
    write_openmatch_head(tied / "head_p", heads["passage"])
    with pytest.raises(ConfigError, match="head_q and head_p differ"):
        BiEncoderRetriever.from_pretrained(tied, pooling="cls")
