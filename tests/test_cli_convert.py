"""``densekit convert``: every input format to BEIR / Tevatron / TREC, negatives random or from a run."""
from __future__ import annotations

import json
from pathlib import Path

from densekit.cli.main import main
from densekit.data.formats import read_qrels
from densekit.data.formats.collection import read_beir_folder
from tests.helpers import write_beir
from tests.test_data_formats_training import register_local_ir_dataset, rows, write_text


def tevatron_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def negatives_of(path: Path) -> dict[str, list[str]]:
    return {r["query_id"]: [p["docid"] for p in r["negative_passages"]] for r in tevatron_lines(path)}


def test_beir_to_tevatron_with_seeded_random_negatives(tmp_path, capsys):
    folder = write_beir(tmp_path / "beir")  # positives only: cats-0, cats-1 for q-cats ...
    args = ["convert", "--input", str(folder), "--input_format", "beir", "--split", "test",
            "--output_format", "tevatron", "--num_negatives", "3"]
    assert main(args + ["--output", str(tmp_path / "a.jsonl")]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("densekit convert: beir -> tevatron: 6 queries, 12 positives, 18 negatives")
    assert main(args + ["--output", str(tmp_path / "b.jsonl")]) == 0
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    negatives = negatives_of(tmp_path / "a.jsonl")
    for qid, docs in negatives.items():
        topic = qid.removeprefix("q-")
        assert len(set(docs)) == 3 and not {f"{topic}-0", f"{topic}-1"} & set(docs)
    assert main(args + ["--output", str(tmp_path / "c.jsonl"), "--seed", "7"]) == 0
    assert negatives_of(tmp_path / "c.jsonl") != negatives


def test_beir_to_tevatron_with_run_negatives_skips_judged_documents(tmp_path):
    folder = write_beir(tmp_path / "beir")
    run = write_text(tmp_path / "run.trec", "q-cats Q0 cats-0 1 9.0 r\nq-cats Q0 dogs-2 2 8.0 r\n"
                                            "q-cats Q0 cats-1 3 7.0 r\nq-cats Q0 sun-1 4 6.0 r\n"
                                            "q-cats Q0 rain-0 5 5.0 r\nq-dogs Q0 cats-0 1 3.0 r\n")
    out = tmp_path / "hn.jsonl"
    assert main(["convert", "--input", str(folder), "--input_format", "beir", "--split", "test", "--output", str(out),
                 "--output_format", "tevatron", "--negatives_run", str(run), "--depth", "4"]) == 0
    negatives = negatives_of(out)
    assert negatives["q-cats"] == ["dogs-2", "sun-1"]  # rank 5 is beyond the depth; cats-0/1 are judged
    assert negatives["q-dogs"] == ["cats-0"] and negatives["q-sun"] == []


def test_run_naming_an_unknown_document_is_an_error_naming_the_run(tmp_path, capsys):
    folder = write_beir(tmp_path / "beir")
    run = write_text(tmp_path / "run.trec", "q-cats Q0 ghost 1 9.0 r\n")
    assert main(["convert", "--input", str(folder), "--input_format", "beir", "--split", "test", "--output",
                 str(tmp_path / "o.jsonl"), "--output_format", "tevatron", "--negatives_run", str(run)]) == 1
    err = capsys.readouterr().err
    assert "run.trec" in err and "ghost" in err
    assert not (tmp_path / "o.jsonl").exists()  # nothing half-written


def test_tsv_with_templates_to_beir(tmp_path):
    corpus = write_text(tmp_path / "corpus.tsv", "d1\tFirst\tbody one\nd2\tSecond\tbody two\n")
    queries = write_text(tmp_path / "queries.tsv", "q1\tfind one\n")
    qrels = write_text(tmp_path / "qrels.tsv", "q1\td1\t1\nq1\td2\t0\n")
    assert main(["convert", "--input", str(corpus), "--input_format", "tsv", "--query_path", str(queries),
                 "--qrel_path", str(qrels), "--doc_template", "Title: <title> Text: <text>",
                 "--doc_column_names", "id,title,text", "--query_template", "query: <text>",
                 "--query_column_names", "id,text", "--output", str(tmp_path / "out"), "--output_format", "beir"]) == 0
    out = read_beir_folder(tmp_path / "out", "train")
    assert rows(out.corpus) == [("d1", "", "Title: First Text: body one"), ("d2", "", "Title: Second Text: body two")]
    assert rows(out.queries) == [("q1", "", "query: find one")]
    assert out.qrels == {"q1": {"d1": 1, "d2": 0}}


def test_qrel_score_that_is_not_a_number_names_file_and_line(tmp_path, capsys):
    corpus = write_text(tmp_path / "corpus.tsv", "d1\tbody one\n")
    queries = write_text(tmp_path / "queries.tsv", "q1\tfind one\n")
    qrels = write_text(tmp_path / "qrels.tsv", "q1\td1\t1\nq1\td1\thigh\n")
    assert main(["convert", "--input", str(corpus), "--input_format", "tsv", "--query_path", str(queries),
                 "--qrel_path", str(qrels), "--output", str(tmp_path / "q.trec"), "--output_format", "trec"]) == 1
    assert f"{qrels}:2:" in capsys.readouterr().err


def test_dpr_to_trec_qrels(tmp_path):
    items = [{"question": "q?", "positive_ctxs": [{"title": "", "text": "yes", "passage_id": "p1"}],
              "hard_negative_ctxs": [{"title": "", "text": "no", "passage_id": "p2"}]}]
    path = write_text(tmp_path / "dpr.json", json.dumps(items))
    assert main(["convert", "--input", str(path), "--input_format", "dpr", "--output", str(tmp_path / "q.trec"),
                 "--output_format", "trec"]) == 0
    assert (tmp_path / "q.trec").read_text() == "q0 0 p1 1\nq0 0 p2 0\n"
    assert read_qrels(tmp_path / "q.trec") == {"q0": {"p1": 1, "p2": 0}}


def test_ir_datasets_id_to_tevatron_as_the_tutorial_does_by_hand(tmp_path):
    name = register_local_ir_dataset(tmp_path)
    out = tmp_path / "train.jsonl"
    assert main(["convert", "--input", name, "--input_format", "ir_datasets", "--output", str(out),
                 "--output_format", "tevatron", "--num_negatives", "1"]) == 0
    records = tevatron_lines(out)
    assert [r["query_id"] for r in records] == ["1", "2"]
    assert [p["docid"] for p in records[0]["positive_passages"]] == ["d1"]
    assert [p["docid"] for p in records[0]["negative_passages"]] == ["d2", "d3"]  # judged 0, then 1 random
    assert records[1]["negative_passages"][0]["docid"] in {"d1", "d2"}


def test_options_that_do_not_fit_the_output_are_rejected(tmp_path, capsys):
    folder = write_beir(tmp_path / "beir")
    assert main(["convert", "--input", str(folder), "--input_format", "beir", "--output", str(tmp_path / "o"),
                 "--output_format", "beir", "--num_negatives", "3"]) == 1
    assert "only apply to --output_format tevatron" in capsys.readouterr().err
