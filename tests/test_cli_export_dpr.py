"""``densekit export --format dpr``: a BERT model trained by densekit becomes ``question_encoder/`` and ``ctx_encoder/``
folders that transformers' DPRQuestionEncoder / DPRContextEncoder load and that give densekit's vectors;
what DPR cannot express is refused before anything is written."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer, DPRContextEncoder, DPRContextEncoderTokenizer, DPRQuestionEncoder

from densekit.cli import export as export_cli
from densekit.cli.main import main
from densekit.errors import ConfigError
from densekit.modeling.retriever import BiEncoderRetriever
from tests.helpers import write_beir
from tests.test_cli_export import PASSAGES, QUERIES, densekit_embeddings, save_model
from tests.tiny_models import build_tiny_t5


def train_untied(model_dir, tmp_path, *extra):
    """Three densekit training steps of an untied pair of tiny BERTs, cls pooling, a DPR-style projection head."""
    beir = write_beir(tmp_path / "beir", split="train")
    out = tmp_path / "trained"
    assert main(["train", "--model_name_or_path", str(model_dir), "--untie_encoder", "true", "--pooling", "cls",
                 "--normalize", "false", "--projection_dim", "8", "--dataset", str(beir), "--split", "train",
                 "--output_dir", str(out), "--group_size", "2", "--per_device_train_batch_size", "3",
                 "--max_steps", "3", "--learning_rate", "1e-3", "--save_strategy", "no", "--disable_tqdm", "true",
                 "--dataloader_pin_memory", "false", *extra]) == 0
    return out


def dpr_vectors(klass, folder, texts):
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    with torch.no_grad():
        return klass.from_pretrained(str(folder)).eval()(**tokenizer(texts, padding=True, return_tensors="pt")).pooler_output


def test_trained_untied_bert_exports_to_dpr_classes_with_equal_vectors(tiny_model_dir, tmp_path):
    trained = train_untied(tiny_model_dir, tmp_path)
    model = BiEncoderRetriever.from_pretrained(trained)
    initial = BiEncoderRetriever.from_model_args(type(model.args)(model_name_or_path=str(tiny_model_dir)))
    assert not torch.equal(model.tower("query").model.embeddings.LayerNorm.weight,
                           initial.encoder.model.embeddings.LayerNorm.weight)  # training changed the weights

    out = tmp_path / "dpr"
    assert main(["export", "--model_name_or_path", str(trained), "--output_dir", str(out), "--format", "dpr"]) == 0
    for name, arch in (("question_encoder", "DPRQuestionEncoder"), ("ctx_encoder", "DPRContextEncoder")):
        config = json.loads((out / name / "config.json").read_text())
        assert (config["model_type"], config["architectures"], config["projection_dim"]) == ("dpr", [arch], 8)
        assert config["hidden_size"] == 32 and config["num_hidden_layers"] == 2
    card = (out / "README.md").read_text()
    assert "library_name: transformers" in card and 'DPRContextEncoder.from_pretrained("PATH/ctx_encoder")' in card

    question, context = dpr_vectors(DPRQuestionEncoder, out / "question_encoder", QUERIES), \
        dpr_vectors(DPRContextEncoder, out / "ctx_encoder", PASSAGES)
    torch.testing.assert_close(question, torch.from_numpy(densekit_embeddings(trained, QUERIES, "query")),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(context, torch.from_numpy(densekit_embeddings(trained, PASSAGES, "passage")),
                               atol=1e-5, rtol=0)
    assert not torch.allclose(dpr_vectors(DPRQuestionEncoder, out / "question_encoder", PASSAGES), context,
                              atol=1e-3)  # two different towers, each in its place

    # DPR's own tokenizer classes read the exported tokenizer, and densekit reads the pair back as it was
    assert DPRContextEncoderTokenizer.from_pretrained(str(out / "ctx_encoder"))("cats")["input_ids"] == \
        AutoTokenizer.from_pretrained(str(trained))("cats")["input_ids"]
    back = BiEncoderRetriever.from_model_args(type(model.args)(query_model_name_or_path=str(out / "question_encoder"),
                                                               passage_model_name_or_path=str(out / "ctx_encoder")))
    torch.testing.assert_close(torch.from_numpy(densekit_embeddings_of(back, out / "ctx_encoder", PASSAGES)), context,
                               atol=1e-5, rtol=0)


def densekit_embeddings_of(model, tokenizer_dir, texts):
    from densekit.evaluation.encoding import encode_texts

    return encode_texts(model.eval(), AutoTokenizer.from_pretrained(str(tokenizer_dir)),
                        [model.format_passage(t) for t in texts], kind="passage", batch_size=2, show_progress=False)


def test_shared_encoder_without_head_goes_into_both_dpr_encoders(tiny_model_dir, tmp_path):
    source = save_model(tiny_model_dir, tmp_path / "model", pooling="cls", normalize=False)
    out = tmp_path / "dpr"
    assert export_cli.run(["--model_name_or_path", str(source), "--output_dir", str(out), "--format", "dpr"]) == 0
    assert json.loads((out / "question_encoder" / "config.json").read_text())["projection_dim"] == 0
    expected = torch.from_numpy(densekit_embeddings(source, PASSAGES, "passage"))
    for klass, name in ((DPRQuestionEncoder, "question_encoder"), (DPRContextEncoder, "ctx_encoder")):
        torch.testing.assert_close(dpr_vectors(klass, out / name, PASSAGES), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("settings, message", [
    (dict(pooling="mean", normalize=False), r"needs cls pooling .*the model uses 'mean'"),
    (dict(pooling="last_token", normalize=False), r"needs cls pooling .*'last_token'"),
    (dict(pooling="cls", normalize=True), r"cannot express normalize=True"),
    (dict(pooling="cls", normalize=False, query_prefix="query: "), r"cannot express the query prefix 'query: '"),
    (dict(pooling="cls", normalize=False, untie_encoder=True, passage_prefix="p: "), r"passage prefix 'p: '"),
])
def test_what_dpr_cannot_express_is_refused_before_anything_is_written(tiny_model_dir, tmp_path, settings, message):
    source = save_model(tiny_model_dir, tmp_path / "model", **settings)
    out = tmp_path / "dpr"
    with pytest.raises(ConfigError, match=message):
        export_cli.run(["--model_name_or_path", str(source), "--output_dir", str(out), "--format", "dpr"])
    assert not out.exists() and not list(tmp_path.glob(".dpr.*"))


def test_a_non_bert_model_is_refused(tmp_path):
    t5 = build_tiny_t5(tmp_path / "t5")
    source = save_model(t5, tmp_path / "model", pooling="cls", normalize=False)
    with pytest.raises(ConfigError, match="needs a BERT model .*'t5'"):
        export_cli.run(["--model_name_or_path", str(source), "--output_dir", str(tmp_path / "dpr"), "--format", "dpr"])


def test_sentence_transformers_export_refuses_untied_towers_and_writes_a_head_as_dense(tiny_model_dir, tmp_path):
    untied = save_model(tiny_model_dir, tmp_path / "untied", pooling="cls", untie_encoder=True)
    with pytest.raises(ConfigError, match="separate query and passage towers. Use --format dpr"):
        export_cli.run(["--model_name_or_path", str(untied), "--output_dir", str(tmp_path / "a")])
    head = save_model(tiny_model_dir, tmp_path / "head", pooling="cls", projection_dim=8)
    export_cli.run(["--model_name_or_path", str(head), "--output_dir", str(tmp_path / "b")])
    from sentence_transformers import SentenceTransformer

    texts = ["what do cats eat", "rain falls from clouds"]
    theirs = SentenceTransformer(str(tmp_path / "b"), device="cpu").encode(texts, convert_to_tensor=True)
    model = BiEncoderRetriever.from_pretrained(head).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(head))
    with torch.no_grad():
        ours = model.encode_passage(dict(tokenizer(texts, padding=True, return_tensors="pt")))
    assert theirs.shape[1] == 8
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
