"""Ids with whitespace (or empty) are refused when a file is read, naming file, line and the id."""
from __future__ import annotations

import json

import pytest

from densekit.data.formats import read_corpus, read_qrels, read_queries
from densekit.data.formats.dpr import read_dpr
from densekit.data.formats.tevatron import read_tevatron
from densekit.data.store import TextStore, check_id, load_store
from densekit.errors import InputError

BAD_IDS = ["doc 19 x", "doc\t19", "doc\n19", "trailing ", "nbsp\u00a0id", "\u3000ideographic"]


def jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def assert_names(err, path, line, bad):
    assert err.path == str(path) and err.line == line
    assert repr(bad) in str(err) and "whitespace" in str(err) and "rename the id" in err.fix


@pytest.mark.parametrize("bad", BAD_IDS)
def test_corpus_jsonl_id_with_whitespace_names_file_and_line(tmp_path, bad):
    path = jsonl(tmp_path / "corpus.jsonl", [{"_id": "d1", "text": "a"}, {"_id": bad, "title": "t", "text": "b"}])
    with pytest.raises(InputError) as err:
        read_corpus(path)
    assert_names(err.value, path, 2, bad)


@pytest.mark.parametrize("bad", BAD_IDS)
def test_queries_jsonl_id_with_whitespace_names_file_and_line(tmp_path, bad):
    path = jsonl(tmp_path / "queries.jsonl", [{"_id": bad, "text": "what"}])
    with pytest.raises(InputError) as err:
        read_queries(path)
    assert_names(err.value, path, 1, bad)


def test_cached_store_loading_refuses_too(tmp_path):
    path = jsonl(tmp_path / "corpus.jsonl", [{"_id": "doc 1", "text": "a"}])
    with pytest.raises(InputError) as err:
        load_store([path], cache_dir=tmp_path / "cache")
    assert_names(err.value, path, 1, "doc 1")


def test_tsv_id_with_a_space_names_file_and_line(tmp_path):
    path = tmp_path / "collection.tsv"
    path.write_text("1\tfirst\n2 b\tsecond\n", encoding="utf-8")
    with pytest.raises(InputError) as err:
        read_corpus(path)
    assert_names(err.value, path, 2, "2 b")


def test_qrels_tsv_id_with_a_space_names_the_id(tmp_path):
    path = tmp_path / "test.tsv"
    path.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\tdoc 19 x\t1\n", encoding="utf-8")
    with pytest.raises(InputError) as err:
        read_qrels(path)
    assert_names(err.value, path, 3, "doc 19 x")


def test_tevatron_and_dpr_ids_with_whitespace_name_file_and_line(tmp_path):
    tev = jsonl(tmp_path / "train.jsonl", [
        {"query_id": "q1", "query": "x", "positive_passages": [{"docid": "d1", "title": "", "text": "a"}]},
        {"query_id": "q2", "query": "y", "positive_passages": [{"docid": "d 2", "title": "", "text": "b"}]}])
    with pytest.raises(InputError) as err:
        read_tevatron(tev)
    assert_names(err.value, tev, 2, "d 2")
    dpr = tmp_path / "nq.json"
    dpr.write_text(json.dumps([{"question": "q", "answers": [], "positive_ctxs": [
        {"title": "", "text": "a", "passage_id": "p\t1"}]}], indent=1), encoding="utf-8")
    with pytest.raises(InputError) as err:
        read_dpr(dpr)
    assert_names(err.value, dpr, 2, "p\t1")  # the item starts on line 2, after "["


def test_empty_id_is_refused():
    with pytest.raises(InputError, match="empty document id"):
        TextStore.from_records([{"_id": "", "text": "a"}])
    with pytest.raises(InputError, match="empty id"):
        check_id("", "f.tsv", 3)


def test_usual_ids_are_accepted(tmp_path):
    ids = ["d1", "MED-10", "4983", "doc_19_x", "Zoë-日本", "a/b:c#1", "x\u200by"]  # zero-width space is not whitespace
    path = jsonl(tmp_path / "corpus.jsonl", [{"_id": i, "text": "t"} for i in ids])
    assert read_corpus(path).ids == ids
