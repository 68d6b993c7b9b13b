"""``densekit export --format sentence-transformers``: the folder loads in SentenceTransformer and gives
densekit's embeddings, carries a model card with config, data and negative fingerprints, command and
evaluation table; pooling it cannot express and unknown formats are clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from densekit.cli import export as export_cli
from densekit.cli.main import main
from densekit.errors import ConfigError
from densekit.evaluation.encoding import encode_texts
from densekit.model_card import read_provenance, write_training_provenance
from densekit.modeling.model_args import ModelArguments
from densekit.modeling.retriever import BiEncoderRetriever
from tests.helpers import write_beir

QUERIES = ["what are cats?", "how is bread baked", "a much longer question about the sun and the solar system"]
PASSAGES = ["cats are small domesticated felines", "bread is baked from flour water yeast and salt",
            "the sun is the star at the centre of the solar system, and rain falls from clouds"]


def save_model(tiny_model_dir, folder, **settings):
    """A densekit model folder (what densekit train writes) from the tiny BERT."""
    model = BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=str(tiny_model_dir), **settings))
    model.save_pretrained(folder, tokenizer=AutoTokenizer.from_pretrained(str(tiny_model_dir)))
    return folder


def densekit_embeddings(folder, texts, kind):
    model = BiEncoderRetriever.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    fmt = model.format_query if kind == "query" else model.format_passage
    return encode_texts(model, tokenizer, [fmt(t) for t in texts], kind=kind, batch_size=2, show_progress=False)


@pytest.mark.parametrize("settings", [
    dict(pooling="mean", normalize=True, query_prefix="query: ", passage_prefix="passage: "),
    dict(pooling="cls", normalize=False),
])
def test_exported_folder_gives_densekit_embeddings_in_sentence_transformers(tiny_model_dir, tmp_path, settings):
    from sentence_transformers import SentenceTransformer

    source = save_model(tiny_model_dir, tmp_path / "model", max_length=24, **settings)
    out = tmp_path / "exported"
    assert main(["export", "--model_name_or_path", str(source), "--output_dir", str(out),
                 "--format", "sentence-transformers"]) == 0
    st = SentenceTransformer(str(out), device="cpu")
    prompts = {"query": "query" if settings.get("query_prefix") else None,
               "passage": "document" if settings.get("passage_prefix") else None}
    for kind, texts in (("query", QUERIES), ("passage", PASSAGES)):
        theirs = st.encode(texts, prompt_name=prompts[kind], convert_to_numpy=True, batch_size=2)
        ours = densekit_embeddings(source, texts, kind)
        np.testing.assert_allclose(theirs, ours, atol=1e-5, rtol=0)
    assert not list(tmp_path.glob(".exported.*"))  # no staging folder left behind


def test_model_card_has_config_data_negatives_command_and_evaluation(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    source = save_model(tiny_model_dir, run_dir / "checkpoint-4", pooling="mean", normalize=True,
                        query_prefix="query: ")
    beir = write_beir(tmp_path / "beir", split="train")
    mined = tmp_path / "mined"
    mined.mkdir()
    (mined / "mined_qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq-cats\tdogs-0\t0.5\n")
    (mined / "mining.json").write_text(json.dumps({"fingerprint": "abc123negatives"}))
    # the training run records its data in its output_dir, the parent of the checkpoint exported
    write_training_provenance(run_dir, data_files=[beir / "corpus.jsonl", beir / "qrels" / "train.tsv"],
                              command="densekit train --dataset beir", base_model="tiny-bert",
                              negative_files=[mined / "mined_qrels.tsv"])
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"aggregate": {"nDCG@10": 0.4321, "Recall@100": 0.9},
                                   "settings": {"num_queries": 6, "num_documents": 18}}))
    out = tmp_path / "exported"
    argv = ["--model_name_or_path", str(source), "--output_dir", str(out), "--metrics", str(metrics)]
    assert export_cli.run(argv) == 0
    card = (out / "README.md").read_text()
    front = card.split("---")[1]
    assert "library_name: sentence-transformers" in front and "- densekit" in front and "base_model: tiny-bert" in front
    for section in ("## Usage", "## Configuration", "## Training data", "## Hard negatives", "## Command",
                    "## Evaluation"):
        assert section in card
    training, _ = read_provenance(source)
    assert training["fingerprint"] in card and "train.tsv" in card
    assert "abc123negatives" in card
    assert '| pooling | "mean" |' in card and "| normalize | True |" in card and '"query: "' in card
    assert "| max_length |" in card and 'prompt_name="query"' in card
    assert "densekit export --model_name_or_path" in card and "densekit train --dataset beir" in card
    assert "| nDCG@10 | 0.4321 |" in card and "num_queries: 6" in card


def test_card_without_provenance_says_so_and_mining_json_alone_is_read(tiny_model_dir, tmp_path):
    source = save_model(tiny_model_dir, tmp_path / "model", pooling="cls")
    (tmp_path / "mining.json").write_text(json.dumps({"fingerprint": "pool-42"}))
    out = tmp_path / "exported"
    assert export_cli.run(["--model_name_or_path", str(source), "--output_dir", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert "Not recorded" in card and "pool-42" in card and "No evaluation given" in card


def test_last_token_pooling_is_refused_before_anything_is_written(tiny_model_dir, tmp_path, capsys):
    source = save_model(tiny_model_dir, tmp_path / "model", pooling="last_token")
    out = tmp_path / "exported"
    with pytest.raises(ConfigError, match="cls or mean pooling.*'last_token'"):
        export_cli.run(["--model_name_or_path", str(source), "--output_dir", str(out)])
    assert not out.exists() and not list(tmp_path.glob(".exported.*"))
    assert main(["export", "--model_name_or_path", str(source), "--output_dir", str(out)]) == 1
    assert "eos token" in capsys.readouterr().err


def test_unknown_format_lists_the_known_ones_and_output_dir_is_protected(tiny_model_dir, tmp_path):
    source = save_model(tiny_model_dir, tmp_path / "model", pooling="mean")
    with pytest.raises(ConfigError, match="known formats: dpr, sentence-transformers"):
        export_cli.run(["--model_name_or_path", str(source), "--output_dir", str(tmp_path / "x"), "--format", "onnx"])
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="--overwrite"):
        export_cli.run(["--model_name_or_path", str(source), "--output_dir", str(busy)])
    assert export_cli.run(["--model_name_or_path", str(source), "--output_dir", str(busy), "--overwrite"]) == 0
    assert (busy / "modules.json").is_file() and not (busy / "keep.txt").exists()
    with pytest.raises(ConfigError, match="model folder itself"):
        export_cli.run(["--model_name_or_path", str(source), "--output_dir", str(source)])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"aggregate": {"nDCG@10": "high"}}))
    with pytest.raises(Exception, match="aggregate"):
        export_cli.run(["--model_name_or_path", str(source), "--output_dir", str(tmp_path / "y"),
                        "--metrics", str(bad)])
