"""Readers and writers of corpora, queries, qrels and runs: every layout, gz, and every bad input named by file/line."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from densekit.data.formats import (
    check_qrels,
    read_corpus,
    read_qrels,
    read_queries,
    read_run,
    read_tsv_texts,
    write_qrels,
    write_run,
)
from densekit.data.store import TextStore
from densekit.errors import ConfigError, InputError

DOCS = [
    {"_id": "d1", "title": "First", "text": "alpha beta", "metadata": {"x": 1}},
    {"_id": "d2", "title": "", "text": "gamma"},
    {"_id": "d3", "text": "delta épsilon"},
]


def write(path: Path, text: str) -> Path:
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def jsonl(records) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


# ------------------------------------------------------------------------------------------ corpora/queries
@pytest.mark.parametrize("name", ["corpus.jsonl", "corpus.jsonl.gz", "corpus_no_suffix"])
def test_beir_jsonl_corpus_reads_ids_titles_texts_in_file_order(tmp_path, name):
    store = read_corpus(write(tmp_path / name, jsonl(DOCS)))
    assert store.ids == ["d1", "d2", "d3"]
    assert store.get("d1") == {"_id": "d1", "title": "First", "text": "alpha beta"}
    assert store.title_at(2) == "" and store.text_at(2) == "delta épsilon"


def test_beir_jsonl_accepts_id_key_and_integer_ids(tmp_path):
    store = read_queries(write(tmp_path / "q.jsonl", '{"id": 7, "text": "why"}\n\n{"_id": "8", "text": "how"}\n'))
    assert store.ids == ["7", "8"]
    assert store.get("7")["text"] == "why"


@pytest.mark.parametrize("name", ["collection.tsv", "collection.tsv.gz"])
def test_msmarco_two_column_tsv_without_header(tmp_path, name):
    store = read_corpus(write(tmp_path / name, "0\tThe presence of \"quotes\"\n1\tsecond passage\n"))
    assert store.ids == ["0", "1"]
    assert store.text_at(0) == 'The presence of "quotes"' and store.title_at(0) == ""


def test_three_column_tsv_without_header_is_id_title_text(tmp_path):
    store = read_corpus(write(tmp_path / "corpus.tsv", "a\tTitle A\tText A\nb\t-\tText B\n"))
    assert store.get("a") == {"_id": "a", "title": "Title A", "text": "Text A"}


def test_tsv_header_finds_columns_by_name(tmp_path):
    path = write(tmp_path / "psgs.tsv", "id\ttext\ttitle\n1\tsome text\tSome Title\n")
    store = read_corpus(path)
    assert store.get("1") == {"_id": "1", "title": "Some Title", "text": "some text"}


def test_read_tsv_texts_with_named_and_joined_columns(tmp_path):
    path = write(tmp_path / "t.tsv.gz", "docid\tlang\ta\tb\nx\ten\thello\tworld\n")
    store = read_tsv_texts(path, id_column="docid", text_columns=["a", "b"])
    assert store.get("x")["text"] == "hello world"
    positional = read_tsv_texts(path, id_column=0, text_columns=3, header=True, kind="queries")
    assert positional.get("x")["text"] == "world"


def test_tsv_line_with_other_column_count_names_the_line(tmp_path):
    path = write(tmp_path / "c.tsv", "1\tone\n2\ttwo\textra\n")
    with pytest.raises(InputError) as err:
        read_corpus(path)
    assert err.value.path == str(path) and err.value.line == 2


# ------------------------------------------------------------------------------------------ bad text files
@pytest.mark.parametrize("content, line, words", [
    ('{"_id": "a", "text": "x"}\n{"_id": "b", "text": \n', 2, "malformed JSON"),
    ('{"_id": "a", "text": "x"}\n{"text": "y"}\n', 2, '"_id"'),
    ('{"_id": "a", "title": "t"}\n', 1, '"text"'),
    ('{"_id": "a", "text": 3}\n', 1, '"text"'),
    ('["a", "b"]\n', 1, "JSON object"),
])
def test_malformed_jsonl_records_name_file_and_line(tmp_path, content, line, words):
    path = write(tmp_path / "corpus.jsonl", content)
    with pytest.raises(InputError) as err:
        read_corpus(path)
    assert err.value.path == str(path) and err.value.line == line
    assert words in str(err.value) and "Fix:" in str(err.value)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(InputError) as err:
        read_corpus(tmp_path / "nope.jsonl")
    assert "nope.jsonl" in str(err.value) and "not found" in str(err.value)


@pytest.mark.parametrize("name", ["corpus.jsonl", "corpus.jsonl.gz"])
def test_empty_file_is_an_error(tmp_path, name):
    path = write(tmp_path / name, "\n\n")
    with pytest.raises(InputError, match="empty"):
        read_corpus(path)


def test_duplicate_id_names_both_lines(tmp_path):
    path = write(tmp_path / "q.jsonl", jsonl([{"_id": "a", "text": "1"}, {"_id": "b", "text": "2"},
                                             {"_id": "a", "text": "3"}]))
    with pytest.raises(InputError) as err:
        read_queries(path)
    message = str(err.value)
    assert "'a'" in message and "line 1" in message and "line 3" in message and err.value.path == str(path)


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "caf\xe9"}\n')
    with pytest.raises(InputError) as err:
        read_corpus(path)
    assert err.value.line == 2 and "UTF-8" in str(err.value)


def test_truncated_gzip_is_reported_not_read_short(tmp_path):
    full = tmp_path / "full.jsonl.gz"
    write(full, jsonl({"_id": str(i), "text": f"text {i} " * 20} for i in range(2000)))
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(InputError) as err:
        read_corpus(cut)
    assert err.value.path == str(cut) and "truncated" in str(err.value)


def test_empty_query_text_names_file_and_line(tmp_path):
    path = write(tmp_path / "q.jsonl", jsonl([{"_id": "a", "text": "fine"}, {"_id": "b", "text": "  "}]))
    with pytest.raises(InputError) as err:
        read_queries(path)
    assert err.value.line == 2 and "'b'" in str(err.value)


def test_empty_document_is_kept_with_a_counted_warning(tmp_path):
    path = write(tmp_path / "c.jsonl", jsonl([{"_id": "a", "text": ""}, {"_id": "b", "title": "t", "text": ""}]))
    with pytest.warns(UserWarning, match="1 document"):
        store = read_corpus(path)
    assert len(store) == 2


# ------------------------------------------------------------------------------------------ qrels
@pytest.mark.parametrize("name, content", [
    ("beir.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t2\nq2\td1\t0\n"),
    ("beir.tsv.gz", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t2\nq2\td1\t0\n"),
    ("plain.tsv", "q1\td1\t1\nq1\td2\t2\nq2\td1\t0\n"),
    ("qrels.trec", "q1 0 d1 1\nq1 0 d2 2\nq2  Q0  d1 0\n"),
    ("qrels.trec.gz", "q1 0 d1 1\nq1 0 d2 2\nq2 0 d1 0\n"),
])
def test_read_qrels_layouts(tmp_path, name, content):
    assert read_qrels(write(tmp_path / name, content)) == {"q1": {"d1": 1, "d2": 2}, "q2": {"d1": 0}}


def test_read_qrels_merges_files_and_rejects_conflicting_scores(tmp_path):
    a = write(tmp_path / "a.tsv", "q1\td1\t1\n")
    b = write(tmp_path / "b.tsv", "q1\td2\t1\nq1\td1\t1\n")
    assert read_qrels([a, b]) == {"q1": {"d1": 1, "d2": 1}}
    c = write(tmp_path / "c.tsv", "q2\td9\t1\nq1\td1\t2\n")
    with pytest.raises(InputError) as err:
        read_qrels([a, c])
    assert err.value.path == str(c) and err.value.line == 2 and f"{a}:1" in str(err.value)


def test_qrel_score_must_be_a_number(tmp_path):
    path = write(tmp_path / "q.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\thigh\n")
    with pytest.raises(InputError) as err:
        read_qrels(path)
    assert err.value.line == 3 and "'high'" in str(err.value)


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_qrel_score_must_be_finite(tmp_path, bad):
    with pytest.raises(InputError, match="not a number"):
        read_qrels(write(tmp_path / "q.tsv", f"q1\td1\t{bad}\n"))


def test_real_valued_scores_round_trip_exactly(tmp_path):
    qrels = {"q1": {"d1": 0.8234567891234, "d2": 1}, "q2": {"d3": -2.5}}
    write_qrels(tmp_path / "mined.tsv", qrels)
    back = read_qrels(tmp_path / "mined.tsv")
    assert back == qrels and isinstance(back["q1"]["d2"], int)


@pytest.mark.parametrize("content, line", [("q1\td1\n", 1), ("q1\td1\t1\nq1 0 d2 1\n", 2), ("a b c d e\n", 1)])
def test_qrel_line_with_wrong_column_count_names_the_line(tmp_path, content, line):
    path = write(tmp_path / "q.tsv", content)
    with pytest.raises(InputError) as err:
        read_qrels(path)
    assert err.value.path == str(path) and err.value.line == line and "columns" in str(err.value)


@pytest.mark.parametrize("fmt, name", [("beir", "out.tsv"), ("trec", "out.trec"), ("beir", "out.tsv.gz")])
def test_write_qrels_round_trips(tmp_path, fmt, name):
    qrels = {"q1": {"d1": 1, "d2": 0}, "q2": {"d3": 2}}
    write_qrels(tmp_path / name, qrels, format=fmt)
    assert read_qrels(tmp_path / name) == qrels
    opener = gzip.open if name.endswith(".gz") else open
    with opener(tmp_path / name, "rt") as handle:
        first = handle.readline().rstrip("\n")
    assert first == ("query-id\tcorpus-id\tscore" if fmt == "beir" else "q1 0 d1 1")


def test_write_qrels_rejects_non_finite_scores(tmp_path):
    with pytest.raises(ConfigError):
        write_qrels(tmp_path / "q.tsv", {"q": {"d": float("nan")}})
    assert not (tmp_path / "q.tsv").exists()


def test_check_qrels_names_file_unknown_id_and_count(tmp_path):
    queries = TextStore.from_records([{"_id": "q1", "text": "a"}], kind="queries")
    corpus = TextStore.from_records([{"_id": "d1", "text": "x"}])
    check_qrels({"q1": {"d1": 1}}, queries, corpus, "ok.tsv")
    with pytest.raises(InputError) as err:
        check_qrels({"q1": {"d1": 1, "d7": 0, "d8": 1}, "q2": {"d8": 1}}, TextStore.from_records(
            [{"_id": "q1", "text": "a"}, {"_id": "q2", "text": "b"}], kind="queries"), corpus, "judged.tsv")
    assert err.value.path == "judged.tsv" and "2 of 3" in str(err.value) and "'d7'" in str(err.value)
    with pytest.raises(InputError, match="1 of 2 judged query"):
        check_qrels({"q1": {"d1": 1}, "qX": {"d1": 1}}, queries, corpus, "judged.tsv")


# ------------------------------------------------------------------------------------------ runs
def test_write_run_skips_padding_ranks_kept_entries_and_round_trips(tmp_path):
    doc_ids = ["d0", "d1", "d2", "d3"]
    indices = np.array([[2, 0, -1], [-1, -1, -1], [3, -1, 1]], dtype=np.int64)
    scores = np.array([[0.9, 0.5, 0.0], [0, 0, 0], [2.5, 0, -1.25]], dtype=np.float32)
    n = write_run(tmp_path / "run.trec", ["qa", "qb", "qc"], indices, scores, doc_ids, tag="test")
    lines = (tmp_path / "run.trec").read_text().splitlines()
    assert n == 4 and lines[0] == "qa Q0 d2 1 0.9 test" and lines[3] == "qc Q0 d1 2 -1.25 test"
    run = read_run(tmp_path / "run.trec")
    assert run == {"qa": {"d2": pytest.approx(0.9), "d0": 0.5}, "qc": {"d3": 2.5, "d1": -1.25}}


def test_write_run_accepts_a_store_for_doc_ids_and_many_rows(tmp_path):
    store = TextStore.from_records({"_id": f"doc{i}", "text": "t"} for i in range(50))
    rng = np.random.default_rng(0)
    indices = np.stack([rng.permutation(50)[:10] for _ in range(300)])
    scores = -np.sort(-rng.random((300, 10)), axis=1)
    write_run(tmp_path / "r.txt", [f"q{i}" for i in range(300)], indices, scores, store, queries_per_chunk=64)
    run = read_run(tmp_path / "r.txt")
    assert len(run) == 300 and run["q123"][f"doc{indices[123, 4]}"] == pytest.approx(scores[123, 4])


def test_write_run_gz_and_input_checks(tmp_path):
    write_run(tmp_path / "r.trec.gz", ["q"], np.array([[1, 0]]), np.array([[2.0, 1.0]]), ["a", "b"])
    assert read_run(tmp_path / "r.trec.gz") == {"q": {"b": 2.0, "a": 1.0}}
    with pytest.raises(ConfigError, match="out of range"):
        write_run(tmp_path / "x.trec", ["q"], np.array([[5]]), np.array([[1.0]]), ["a"])
    with pytest.raises(ConfigError, match="query ids"):
        write_run(tmp_path / "x.trec", ["q", "r"], np.array([[0]]), np.array([[1.0]]), ["a"])
    assert not (tmp_path / "x.trec").exists()


def test_read_run_rejects_short_lines_and_bad_scores(tmp_path):
    with pytest.raises(InputError) as err:
        read_run(write(tmp_path / "a.run", "q1 Q0 d1 1 0.5 t\nq1 Q0 d2 2 0.4\n"))
    assert err.value.line == 2
    with pytest.raises(InputError, match="not a number"):
        read_run(write(tmp_path / "b.run", "q1 Q0 d1 1 high t\n"))


# ------------------------------------------------------------------------------------------ SciFact
@pytest.mark.integration
def test_scifact_reads_with_known_record_and_consistent_qrels(scifact_dir):
    corpus = read_corpus(scifact_dir / "corpus.jsonl")
    queries = read_queries(scifact_dir / "queries.jsonl")
    qrels = read_qrels([scifact_dir / "qrels" / "train.tsv", scifact_dir / "qrels" / "dev.tsv"])
    assert (len(corpus), len(queries), len(qrels)) == (5183, 809, 809)
    assert sum(len(d) for d in qrels.values()) == 919
    assert corpus.ids[0] == "4983"
    assert corpus.get("4983")["title"].startswith("Microstructural development of human newborn cerebral white")
    assert queries.get("0")["text"] == "0-dimensional biomaterials lack inductive properties."
    check_qrels(qrels, queries, corpus, scifact_dir / "qrels" / "train.tsv")


def test_dpr_passage_tsv_is_unquoted_like_csv(tmp_path):
    """DPR's psgs.tsv (id, text, title; csv.writer quoting) reads back the original texts."""
    import csv

    from densekit.data.store import load_store

    rows = [("p1", 'He said "hi" there', "A title"), ("p2", "plain text", 'Title "quoted"'), ("p3", '"x"', "t")]
    with open(tmp_path / "psgs.tsv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["id", "text", "title"])
        writer.writerows(rows)
    store = load_store([tmp_path / "psgs.tsv"], kind="corpus")
    assert [(store.ids[i], store.text_at(i), store.title_at(i)) for i in range(3)] == rows
    # an MS MARCO-style file (no DPR header) keeps its quotes as they are
    (tmp_path / "collection.tsv").write_text('1\t"quoted" text\n', encoding="utf-8")
    assert load_store([tmp_path / "collection.tsv"], kind="corpus").text_at(0) == '"quoted" text'


@pytest.mark.integration
def test_squad_dpr_passages_equal_the_beir_copy():
    import json
    from pathlib import Path

    from densekit.data.store import load_store

    squad = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad"
    store = load_store([squad / "psgs.tsv"], kind="corpus")
    beir = {}
    for line in open(squad / "corpus.jsonl", encoding="utf-8"):
        row = json.loads(line)
        beir[row["_id"]] = (row["text"], row.get("title", ""))
    assert len(store) == len(beir)
    assert all(beir[store.ids[i]] == (store.text_at(i), store.title_at(i)) for i in range(len(store)))
