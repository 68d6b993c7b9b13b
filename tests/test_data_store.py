"""TextStore: Arrow-backed id -> (title, text), memory-mapped reopening, cached parsing, vectorized id lookup."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pytest

import densekit.data.formats as formats
from densekit.data.store import TextStore, cache_path, load_store
from densekit.errors import ConfigError, InputError

RECORDS = [{"_id": "b", "title": "Bee", "text": "buzz"}, {"_id": "a", "text": "apple"},
           {"_id": "c", "title": "Sea", "text": "wave wave"}]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_store_accessors_keep_file_order():
    store = TextStore.from_records(RECORDS)
    assert len(store) == 3 and store.ids == ["b", "a", "c"]
    assert store.index_of("a") == 1 and "c" in store and "z" not in store and 3 not in store
    assert store.get("c") == {"_id": "c", "title": "Sea", "text": "wave wave"}
    assert store.texts([2, 0]) == ["wave wave", "buzz"] and store.titles(np.array([1, 0])) == ["", "Bee"]


def test_indices_of_is_vectorized_and_names_first_unknown_id():
    store = TextStore.from_records(RECORDS)
    assert store.indices_of(["c", "b", "c"]).tolist() == [2, 0, 2]
    assert store.indices_of(np.array(["a"])).dtype == np.int64
    assert store.lookup(["a", "zz", ""]).tolist() == [1, -1, -1]
    with pytest.raises(InputError, match=r"2 id\(s\) not found, first 'x'"):
        store.indices_of(["a", "x", "y"])
    with pytest.raises(KeyError):
        store.index_of("missing")
    with pytest.raises(IndexError):
        store.texts([3])


def test_duplicate_ids_are_rejected_with_both_lines():
    with pytest.raises(InputError, match="duplicate id 'a' at line 2 and line 4"):
        TextStore.from_records(RECORDS + [{"_id": "a", "text": "again"}])


def test_build_writes_atomically_and_open_maps_the_same_rows(tmp_path):
    path = tmp_path / "sub" / "store.arrow"
    built = TextStore.build(RECORDS, path)
    reopened = TextStore.open(path)
    assert reopened.ids == built.ids == ["b", "a", "c"]
    assert reopened.get("b")["title"] == "Bee"
    assert [p.name for p in path.parent.iterdir()] == ["store.arrow"]  # no temporary file left behind


def test_build_failure_leaves_no_file(tmp_path):
    def records():
        yield {"_id": "a", "text": "x"}
        raise RuntimeError("interrupted")
    with pytest.raises(RuntimeError):
        TextStore.build(records(), tmp_path / "s.arrow")
    assert list(tmp_path.iterdir()) == []


def test_open_rejects_a_file_that_is_not_a_store(tmp_path):
    bad = tmp_path / "bad.arrow"
    bad.write_bytes(b"not arrow at all")
    with pytest.raises(InputError) as err:
        TextStore.open(bad)
    assert err.value.path == str(bad)


def test_200k_documents_build_reopen_mapped_and_look_up(tmp_path):
    n = 200_000
    rng = np.random.default_rng(0)
    ids = [f"doc-{v}" for v in rng.permutation(10 * n)[:n]]
    store = TextStore.build(({"_id": d, "title": f"t{i}", "text": f"text of {d}"} for i, d in enumerate(ids)),
                            tmp_path / "big.arrow")
    before = pa.total_allocated_bytes()
    mapped = TextStore.open(tmp_path / "big.arrow")
    assert pa.total_allocated_bytes() - before < 1_000_000  # texts stay in the mapped file, not copied
    assert len(mapped) == n and len(store) == n
    probe = rng.integers(0, n, size=5000)
    assert mapped.indices_of([ids[i] for i in probe]).tolist() == probe.tolist()
    assert mapped.texts(probe[:3]) == [f"text of {ids[i]}" for i in probe[:3]]
    assert mapped.title_at(int(probe[0])) == f"t{probe[0]}"
    assert mapped.lookup(["doc-x", ids[-1]]).tolist() == [-1, n - 1]
    assert mapped.ids[:2] == ids[:2]


def test_from_file_cache_is_reused_without_parsing_and_rebuilt_when_the_source_changes(tmp_path, monkeypatch):
    source = write_jsonl(tmp_path / "corpus.jsonl", RECORDS)
    cache = tmp_path / "cache"
    first = TextStore.from_file(source, kind="corpus", cache_dir=cache)
    assert cache_path(source, "corpus", cache).is_file()

    def no_parsing(*args, **kwargs):
        raise AssertionError("parsed again")
    monkeypatch.setattr(formats, "read_texts", no_parsing)
    again = TextStore.from_file(source, kind="corpus", cache_dir=cache)
    assert again.ids == first.ids and again.location(1) == (str(source), 2)
    monkeypatch.undo()

    write_jsonl(source, RECORDS[:2])
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert len(TextStore.from_file(source, kind="corpus", cache_dir=cache)) == 2


def test_from_file_rebuilds_a_corrupt_cache_entry(tmp_path):
    source = write_jsonl(tmp_path / "q.jsonl", [{"_id": "q", "text": "hi"}])
    entry = cache_path(source, "queries", tmp_path)
    entry.write_bytes(b"garbage")
    assert TextStore.from_file(source, kind="queries", cache_dir=tmp_path).get("q")["text"] == "hi"


def test_load_store_concatenates_files_and_rejects_ids_in_two_files(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", RECORDS[:2])
    b = write_jsonl(tmp_path / "b.jsonl", [{"_id": "z", "text": "zed"}])
    store = load_store([a, b], kind="corpus", cache_dir=tmp_path / "cache")
    assert store.ids == ["b", "a", "z"] and store.index_of("z") == 2 and store.location(2) == (str(b), 1)
    assert store.texts([2, 0, 1, 2]) == ["zed", "buzz", "apple", "zed"]  # rows from two mapped files
    c = write_jsonl(tmp_path / "c.jsonl", [{"_id": "y", "text": "y"}, {"_id": "a", "text": "dup"}])
    with pytest.raises(InputError) as err:
        load_store([a, c])
    assert f"{a}:2" in str(err.value) and f"{c}:2" in str(err.value)


def test_kind_must_be_corpus_or_queries(tmp_path):
    with pytest.raises(ConfigError):
        TextStore.from_file(write_jsonl(tmp_path / "x.jsonl", RECORDS), kind="docs")


def test_lookup_without_arrow_search_sorted_gives_the_same_rows(monkeypatch):
    import pyarrow.compute as pc

    store = TextStore.from_records({"_id": f"id{i}", "text": "t"} for i in range(100))
    expected = store.lookup(["id7", "nope", "id99", "id10"]).tolist()
    monkeypatch.delattr(pc, "search_sorted")
    assert TextStore.from_records(RECORDS).lookup(["c", "x"]).tolist() == [2, -1]
    assert store.lookup(["id7", "nope", "id99", "id10"]).tolist() == expected == [7, -1, 99, 10]


def test_from_file_cache_follows_a_same_size_edit_with_the_mtime_restored(tmp_path):
    source = write_jsonl(tmp_path / "corpus.jsonl", RECORDS)
    cache = tmp_path / "cache"
    before = source.stat()
    assert TextStore.from_file(source, kind="corpus", cache_dir=cache).get("a")["text"] == "apple"
    source.write_text(source.read_text(encoding="utf-8").replace("apple", "mango"), encoding="utf-8")
    os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))  # what cp -p, rsync -t and tar do
    assert source.stat().st_size == before.st_size and source.stat().st_mtime_ns == before.st_mtime_ns
    assert TextStore.from_file(source, kind="corpus", cache_dir=cache).get("a")["text"] == "mango"
    assert [p.name for p in cache.iterdir()] == [cache_path(source, "corpus", cache).name]  # stale copy removed
