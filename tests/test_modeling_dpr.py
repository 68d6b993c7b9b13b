"""Hugging Face DPR checkpoints in: a ``DPRQuestionEncoder`` / ``DPRContextEncoder`` pair loads as the query and
passage towers (inner BERT, cls pooling, no normalization, ``encode_proj`` as the projection head) and gives
transformers' ``pooler_output`` within 1e-6; a DPR-loaded tower saved by densekit reloads as what it was."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer, DPRContextEncoder, DPRQuestionEncoder

from densekit.errors import ConfigError
from densekit.evaluation.encoding import encode_texts
from densekit.modeling.encoding_spec import weights_fingerprint
from densekit.modeling.model_args import ModelArguments
from densekit.modeling.retriever import BiEncoderRetriever
from tests.tiny_models import build_tiny_dpr

QUERIES = ["what are cats?", "how is bread baked", "a much longer question about the sun and the solar system"]
PASSAGES = ["cats are small felines", "bread is baked from water", "the sun is a star; rain falls from clouds"]


@pytest.fixture(scope="module", params=[8, 0], ids=["projection8", "no_projection"])
def dpr_pair(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"dpr{request.param}")
    return (build_tiny_dpr(root / "question", "question", projection_dim=request.param, seed=1),
            build_tiny_dpr(root / "context", "context", projection_dim=request.param, seed=2), request.param)


def pooler_output(klass, path, texts):
    """What transformers' DPR class gives for ``texts``."""
    batch = AutoTokenizer.from_pretrained(str(path))(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return klass.from_pretrained(str(path)).eval()(**batch).pooler_output


def densekit_vectors(model, tokenizer_dir, texts, kind):
    fmt = model.format_query if kind == "query" else model.format_passage
    return torch.from_numpy(encode_texts(model, AutoTokenizer.from_pretrained(str(tokenizer_dir)), [fmt(t) for t in texts],
                                         kind=kind, batch_size=2, show_progress=False))


def load_pair(question, context):
    return BiEncoderRetriever.from_model_args(ModelArguments(query_model_name_or_path=str(question),
                                                             passage_model_name_or_path=str(context))).eval()


def test_dpr_pair_gives_transformers_pooler_output(dpr_pair):
    question, context, projection_dim = dpr_pair
    model = load_pair(question, context)
    for kind, folder in (("query", question), ("passage", context)):
        tower = model.tower(kind)
        assert (type(tower.model).__name__, tower.model.config.model_type) == ("BertModel", "bert")
        assert (tower.pooling, tower.normalize) == ("cls", False)
        assert (tower.projection.out_features if tower.projection is not None else 0) == projection_dim
    torch.testing.assert_close(densekit_vectors(model, question, QUERIES, "query"),
                               pooler_output(DPRQuestionEncoder, question, QUERIES), atol=1e-6, rtol=0)
    torch.testing.assert_close(densekit_vectors(model, question, PASSAGES, "passage"),
                               pooler_output(DPRContextEncoder, context, PASSAGES), atol=1e-6, rtol=0)
    from densekit.modeling.seeded_dropout import make_seedable

    assert make_seedable(model)  # the inner BERT has a BertConfig: the gradient cache seeds it like any BERT


def test_context_encoder_folder_alone_loads_its_own_weights(dpr_pair):
    """AutoModel would build a DPRQuestionEncoder here, whose weight names do not match (random weights)."""
    _, context, _ = dpr_pair
    model = BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=str(context))).eval()
    torch.testing.assert_close(densekit_vectors(model, context, PASSAGES, "passage"),
                               pooler_output(DPRContextEncoder, context, PASSAGES), atol=1e-6, rtol=0)


def test_dpr_loaded_towers_saved_by_densekit_reload_as_what_they_were(dpr_pair, tmp_path):
    question, context, projection_dim = dpr_pair
    model = load_pair(question, context)
    model.save_pretrained(tmp_path / "saved", tokenizer=AutoTokenizer.from_pretrained(str(question)))
    tower_config = json.loads((tmp_path / "saved" / "query_model" / "densekit_config.json").read_text())
    assert (tower_config["pooling"], tower_config["normalize"]) == ("cls", False)
    assert tower_config["projection_dim"] == (projection_dim or None)
    assert json.loads((tmp_path / "saved" / "query_model" / "config.json").read_text())["model_type"] == "bert"

    reloaded = BiEncoderRetriever.from_pretrained(tmp_path / "saved").eval()
    for kind, texts in (("query", QUERIES), ("passage", PASSAGES)):
        torch.testing.assert_close(densekit_vectors(reloaded, tmp_path / "saved", texts, kind),
                                   densekit_vectors(model, question, texts, kind), atol=0, rtol=0)
        # the same weights (the unused BERT pooler included): the embedding cache keys match across reloads
        assert weights_fingerprint(reloaded, kind) == weights_fingerprint(model, kind)
    reloaded.load_checkpoint_weights(tmp_path / "saved")  # resume-style strict load


def test_dpr_reader_and_unknown_architectures_are_refused(dpr_pair, tmp_path):
    import shutil

    question, _, _ = dpr_pair
    folder = tmp_path / "reader"
    shutil.copytree(question, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["DPRReader"]}))
    with pytest.raises(ConfigError, match="reader is a DPR checkpoint .*'DPRReader'.*DPRQuestionEncoder and DPRContextEncoder"):
        BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=str(folder)))
