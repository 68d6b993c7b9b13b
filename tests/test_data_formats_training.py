"""Training-data formats: Tevatron jsonl, DPR json, TSV templates, HF datasets, ir_datasets; round trips and bad input."""
from __future__ import annotations

import gzip
import json
import sys
import uuid
from pathlib import Path

import pytest

from densekit.data.formats.collection import Collection, read_beir_folder, write_beir_folder
from densekit.data.formats.dpr import passage_id, read_dpr
from densekit.data.formats.hf_datasets import read_hf_dataset
from densekit.data.formats.ir_datasets import read_ir_dataset
from densekit.data.formats.templates import read_templated_tsv, render_template
from densekit.data.formats.tevatron import read_tevatron, write_tevatron
from densekit.errors import ConfigError, InputError
from tests.helpers import write_beir


def rows(store) -> list[tuple[str, str, str]]:
    table = store.table.to_pydict()
    return list(zip(table["_id"], table["title"], table["text"]))


def tevatron_line(qid, query, pos, neg=()) -> str:
    passage = lambda d: {"docid": d, "title": f"t {d}", "text": f"x {d}"}  # noqa: E731
    return json.dumps({"query_id": qid, "query": query, "positive_passages": [passage(d) for d in pos],
                       "negative_passages": [passage(d) for d in neg]}) + "\n"


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ round trips
def test_beir_to_tevatron_to_beir_keeps_ids_texts_and_graded_scores(tmp_path):
    folder = write_beir(tmp_path / "beir", graded=True)  # every document is judged 2, 1 or 0
    with open(folder / "corpus.jsonl", "a", encoding="utf-8") as handle:  # texts JSON must escape exactly
        handle.write(json.dumps({"_id": "odd", "title": "naïve “quotes”", "text": "tab\there \\ back\nline é"}) + "\n")
    with open(folder / "qrels" / "test.tsv", "a", encoding="utf-8") as handle:
        handle.write("q-cats\todd\t1\n")
    original = read_beir_folder(folder, "test")
    counts = write_tevatron(tmp_path / "train.jsonl", original, progress=False)
    assert counts == {"queries": 6, "skipped_no_positive": 0, "positives": 13, "negatives": 6}
    back = read_tevatron(tmp_path / "train.jsonl")
    write_beir_folder(back, tmp_path / "again", "test")
    again = read_beir_folder(tmp_path / "again", "test")
    assert sorted(rows(again.corpus)) == sorted(rows(original.corpus))
    assert rows(again.queries) == rows(original.queries)
    assert again.qrels == original.qrels


def test_tevatron_lines_hold_positives_first_and_judged_negatives(tmp_path):
    original = read_beir_folder(write_beir(tmp_path / "beir", graded=True), "test")
    write_tevatron(tmp_path / "t.jsonl", original, extra_negatives={"q-cats": ["dogs-0"]}, progress=False)
    first = json.loads((tmp_path / "t.jsonl").read_text().splitlines()[0])
    assert first["query_id"] == "q-cats" and first["query"] == "what are cats?"
    assert [(p["docid"], p["score"]) for p in first["positive_passages"]] == [("cats-0", 2), ("cats-1", 1)]
    assert [p["docid"] for p in first["negative_passages"]] == ["cats-2", "dogs-0"]
    assert "score" not in first["negative_passages"][1]  # sampled, not judged
    assert first["positive_passages"][0]["text"] == original.corpus.get("cats-0")["text"]


def test_dpr_to_beir_keeps_ids_texts_and_labels(tmp_path):
    items = [
        {"question": "who wrote it?", "answers": ["me"],
         "positive_ctxs": [{"title": "Book", "text": "I wrote it.", "passage_id": "11"}],
         "negative_ctxs": [{"title": "Other", "text": "Nothing here.", "psg_id": 12}],
         "hard_negative_ctxs": [{"title": "Near", "text": "Someone wrote something."}]},
        {"question": "and then?", "answers": [],
         "positive_ctxs": [{"title": "Book", "text": "I wrote it.", "passage_id": "11"}],
         "negative_ctxs": [], "hard_negative_ctxs": []},
    ]
    path = write_text(tmp_path / "train.json", json.dumps(items, indent=2))
    collection = read_dpr(path)
    synthesized = passage_id("Near", "Someone wrote something.")
    assert synthesized == passage_id("Near", "Someone wrote something.") and synthesized.startswith("dpr-")
    assert collection.qrels == {"q0": {"11": 1, "12": 0, synthesized: 0}, "q1": {"11": 1}}
    write_beir_folder(collection, tmp_path / "beir", "train")
    back = read_beir_folder(tmp_path / "beir", "train")
    assert sorted(rows(back.corpus)) == sorted([("11", "Book", "I wrote it."), ("12", "Other", "Nothing here."),
                                                (synthesized, "Near", "Someone wrote something.")])
    assert rows(back.queries) == [("q0", "", "who wrote it?"), ("q1", "", "and then?")]
    assert back.qrels == collection.qrels


def test_tsv_with_template_renders_named_columns(tmp_path):
    path = write_text(tmp_path / "corpus.tsv", "d1\tA <b> title\tsome text\nd2\t\tno title\n")
    store = read_templated_tsv(path, "id,title,text", "Title: <title> Text: <text>")
    assert rows(store) == [("d1", "", "Title: A <b> title Text: some text"), ("d2", "", "Title:  Text: no title")]
    assert render_template("<text>", {"text": "<title>", "title": "x"}) == "<title>"  # one pass only


def test_template_naming_an_unknown_column_is_a_config_error(tmp_path):
    path = write_text(tmp_path / "corpus.tsv", "d1\tt\tx\n")
    with pytest.raises(ConfigError, match="<body>"):
        read_templated_tsv(path, "id,title,text", "<title> <body>")


def test_tsv_line_with_wrong_number_of_fields_names_the_line(tmp_path):
    path = write_text(tmp_path / "corpus.tsv", "d1\tt\tx\nd2\tonly two\n")
    with pytest.raises(InputError) as err:
        read_templated_tsv(path, "id,title,text", "<title> <text>")
    assert err.value.line == 2 and err.value.path == str(path)


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("line, reason", [
    ('{"query_id": "q2", "query": "", "positive_passages": [{"docid": "d", "text": "x"}]}', "empty text"),
    ('{"query_id": "q2", "query": "q", "positive_passages": [{"docid": "d", "text": "x", "score": "high"}]}',
     "not a number"),
    ('{"query_id": "q2", "query": "q", "positive_passages": [{"text": "x"}]}', "docid"),
    ('{"query_id": "q2", "query": "q", "positive_passages": [{"docid": "a", "title": "t a", "text": "changed"}]}',
     "different title/text than at line 1"),
    ('{"query_id": "q2", "query": "q", "positive_passages": [', "malformed JSON"),
])
def test_bad_tevatron_line_is_an_input_error_naming_file_and_line(tmp_path, line, reason):
    path = write_text(tmp_path / "t.jsonl", tevatron_line("q1", "query one", ["a"], ["b"]) + line + "\n")
    with pytest.raises(InputError, match=reason) as err:
        read_tevatron(path)
    assert err.value.path == str(path) and err.value.line == 2


def test_non_utf8_line_in_tevatron_names_the_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(tevatron_line("q1", "one", ["a"]).encode() + b'{"query_id": "q2", "query": "caf\xe9"}\n')
    with pytest.raises(InputError, match="not UTF-8") as err:
        read_tevatron(path)
    assert err.value.line == 2


def test_truncated_gz_is_an_input_error_for_tevatron_and_dpr(tmp_path):
    data = gzip.compress("".join(tevatron_line(f"q{i}", f"query {i}", [f"d{i}"]) for i in range(200)).encode())
    (tmp_path / "t.jsonl.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated"):
        read_tevatron(tmp_path / "t.jsonl.gz")
    dpr = gzip.compress(json.dumps([{"question": "q", "positive_ctxs": []}] * 50).encode())
    (tmp_path / "d.json.gz").write_bytes(dpr[: len(dpr) // 2])
    with pytest.raises(InputError, match="truncated"):
        read_dpr(tmp_path / "d.json.gz")


def test_dpr_errors_name_the_line_where_the_item_starts(tmp_path):
    items = [{"question": "ok", "positive_ctxs": [{"title": "", "text": "t", "passage_id": "1"}]},
             {"question": "", "positive_ctxs": []}]
    path = write_text(tmp_path / "d.json", json.dumps(items, indent=1))
    second_item_line = 1 + json.dumps(items, indent=1).split("\n").index(" {", 2)
    with pytest.raises(InputError, match="empty text") as err:
        read_dpr(path)
    assert err.value.line == second_item_line
    path = write_text(tmp_path / "bad.json", '[\n{"question": "a"},\n{"question": }\n]')
    with pytest.raises(InputError, match="malformed JSON") as err:
        read_dpr(path)
    assert err.value.line == 3


def test_beir_qrel_naming_a_document_missing_from_the_corpus_is_an_input_error(tmp_path):
    folder = write_beir(tmp_path / "beir")
    with open(folder / "qrels" / "test.tsv", "a", encoding="utf-8") as handle:
        handle.write("q-cats\tghost\t1\n")
    with pytest.raises(InputError, match="ghost"):
        read_beir_folder(folder, "test")


# ------------------------------------------------------------------------------------------ HF datasets
def tevatron_records() -> list[dict]:
    return [json.loads(tevatron_line("q1", "query one", ["a"], ["b", "c"])),
            json.loads(tevatron_line("q2", "query two", ["c"], ["a"]))]


def test_hf_dataset_saved_to_disk_reads_like_the_same_jsonl(tmp_path):
    import datasets

    records = tevatron_records()
    datasets.DatasetDict({"train": datasets.Dataset.from_list(records)}).save_to_disk(str(tmp_path / "saved"))
    path = write_text(tmp_path / "t.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    from_hf, from_file = read_hf_dataset(tmp_path / "saved", "train"), read_tevatron(path)
    assert sorted(rows(from_hf.corpus)) == sorted(rows(from_file.corpus))
    assert rows(from_hf.queries) == rows(from_file.queries) and from_hf.qrels == from_file.qrels
    from_json_files = read_hf_dataset(path)
    assert from_json_files.qrels == from_file.qrels
    with pytest.raises(ConfigError, match="no split 'dev'"):
        read_hf_dataset(tmp_path / "saved", "dev")


def test_hf_rows_with_bad_records_name_the_row(tmp_path):
    import datasets

    records = tevatron_records()
    records[1]["query"] = " "
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(InputError, match="empty text") as err:
        read_hf_dataset(tmp_path / "saved")
    assert err.value.line == 2


def test_missing_datasets_package_is_a_config_error_with_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ConfigError, match=r"pip install densekit\[datasets\]"):
        read_hf_dataset(tmp_path)


# ------------------------------------------------------------------------------------------ ir_datasets
def register_local_ir_dataset(tmp_path: Path) -> str:
    """A dataset built from ir_datasets' own classes (TsvDocs, TsvQueries, TrecQrels over LocalDownload)."""
    import ir_datasets

    write_text(tmp_path / "docs.tsv", "d1\tfirst document\nd2\tsecond document\nd3\tthird one\n")
    write_text(tmp_path / "queries.tsv", "1\twhich document?\n2\tthird?\n")
    write_text(tmp_path / "qrels.txt", "1 0 d1 2\n1 0 d2 0\n2 0 d3 1\n")
    name = f"densekit-test/{uuid.uuid4().hex}"
    dataset = ir_datasets.create_dataset(docs_tsv=str(tmp_path / "docs.tsv"),
                                         queries_tsv=str(tmp_path / "queries.tsv"),
                                         qrels_trec=str(tmp_path / "qrels.txt"))
    ir_datasets.registry.register(name, dataset)
    return name


def test_ir_datasets_id_reads_docs_queries_and_qrels_through_the_package(tmp_path):
    collection = read_ir_dataset(register_local_ir_dataset(tmp_path))
    assert rows(collection.corpus) == [("d1", "", "first document"), ("d2", "", "second document"),
                                       ("d3", "", "third one")]
    assert rows(collection.queries) == [("1", "", "which document?"), ("2", "", "third?")]
    assert collection.qrels == {"1": {"d1": 2, "d2": 0}, "2": {"d3": 1}}


def test_unknown_ir_datasets_id_and_missing_package_are_config_errors(monkeypatch):
    with pytest.raises(ConfigError, match="no dataset"):
        read_ir_dataset("densekit-test/does-not-exist")
    monkeypatch.setitem(sys.modules, "ir_datasets", None)
    with pytest.raises(ConfigError, match=r"pip install densekit\[ir_datasets\]"):
        read_ir_dataset("beir/nfcorpus/train")


def test_collection_summary_counts_everything(tmp_path):
    collection = read_beir_folder(write_beir(tmp_path / "b", graded=True), "test")
    assert isinstance(collection, Collection)
    assert collection.summary() == "6 queries, 18 documents, 18 judgments"
