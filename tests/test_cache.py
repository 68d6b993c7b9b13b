"""The embedding cache: reuse, resume after interruption, damaged files rebuilt, keys separate entries."""
from __future__ import annotations

import json

import numpy as np
import pytest

from densekit.cache import EmbeddingCache, fingerprint, texts_fingerprint


def fake_encoder(calls: list):
    def encode_rows(start: int, stop: int) -> np.ndarray:
        calls.append((start, stop))
        rows = np.arange(start, stop, dtype=np.float32)[:, None]
        return np.hstack([rows, rows * 2, np.sin(rows)]).astype(np.float32)
    return encode_rows


def test_complete_entry_is_reused_without_encoding(tmp_path):
    cache = EmbeddingCache(tmp_path, block_size=4)
    ids = [f"d{i}" for i in range(10)]
    entry = cache.entry("k1")
    calls: list = []
    assert entry.build(ids, fake_encoder(calls)) == 10
    assert calls == [(0, 4), (4, 8), (8, 10)]
    assert entry.is_complete()
    loaded_ids, embs = cache.entry("k1").load()
    assert loaded_ids == ids
    np.testing.assert_array_equal(embs[:, 0], np.arange(10, dtype=np.float32))
    blocks = list(cache.entry("k1").iter_blocks())
    assert [start for start, _ in blocks] == [0, 4, 8]


def test_interrupted_build_resumes_from_last_finished_block(tmp_path):
    cache = EmbeddingCache(tmp_path, block_size=3)
    ids = [f"d{i}" for i in range(8)]
    calls: list = []

    def dies_on_third_block(start, stop):
        if start >= 6:
            raise KeyboardInterrupt
        return fake_encoder(calls)(start, stop)

    with pytest.raises(KeyboardInterrupt):
        cache.entry("k").build(ids, dies_on_third_block)
    assert not cache.entry("k").is_complete()
    calls.clear()
    assert cache.entry("k").build(ids, fake_encoder(calls)) == 2
    assert calls == [(6, 8)]
    reference = EmbeddingCache(tmp_path / "ref", block_size=3).entry("k")
    reference.build(ids, fake_encoder([]))
    np.testing.assert_array_equal(cache.entry("k").load()[1], reference.load()[1])


def test_truncated_block_is_detected_and_rebuilt(tmp_path):
    cache = EmbeddingCache(tmp_path, block_size=4)
    ids = [f"d{i}" for i in range(8)]
    entry = cache.entry("k")
    entry.build(ids, fake_encoder([]))
    path = entry.block_path(1)
    path.write_bytes(path.read_bytes()[:-5])
    assert not entry.is_complete()
    calls: list = []
    assert entry.build(ids, fake_encoder(calls)) == 4
    assert calls == [(4, 8)]
    assert entry.is_complete()


def test_corrupted_block_with_same_size_is_rebuilt(tmp_path):
    cache = EmbeddingCache(tmp_path, block_size=4)
    ids = [f"d{i}" for i in range(8)]
    entry = cache.entry("k")
    entry.build(ids, fake_encoder([]))
    raw = bytearray(entry.block_path(0).read_bytes())
    raw[-1] ^= 0xFF
    entry.block_path(0).write_bytes(bytes(raw))
    assert not entry.is_complete()
    calls: list = []
    entry.build(ids, fake_encoder(calls))
    assert calls == [(0, 4)]
    np.testing.assert_array_equal(entry.load()[1][:, 0], np.arange(8, dtype=np.float32))


def test_named_entries_for_other_keys_live_side_by_side(tmp_path):
    cache = EmbeddingCache(tmp_path, block_size=4)
    ids = ["a", "b"]
    first = cache.entry("model-1", name="corpus.arrow")
    first.build(ids, fake_encoder([]))
    assert not cache.entry("model-2", name="corpus.arrow").is_complete()
    calls: list = []
    cache.entry("model-2", name="corpus.arrow").build(ids, lambda a, b: fake_encoder(calls)(a, b) + 100)
    assert calls == [(0, 2)]
    manifest = json.loads((tmp_path / "corpus.arrow" / "model-2" / "manifest.json").read_text())
    assert manifest["key"] == "model-2"
    assert first.is_complete()  # building model-2 did not touch model-1's entry
    np.testing.assert_array_equal(first.load()[1], fake_encoder([])(0, 2))
    np.testing.assert_array_equal(cache.entry("model-2", name="corpus.arrow").load()[1], fake_encoder([])(0, 2) + 100)


def test_named_folder_keeps_the_most_recently_used_entries(tmp_path):
    import os

    cache = EmbeddingCache(tmp_path, block_size=4, keep_per_name=2)
    entries = {k: cache.entry(k, name="c") for k in ("k1", "k2", "k3")}
    entries["k1"].build(["a"], fake_encoder([]))
    entries["k2"].build(["a"], fake_encoder([]))
    os.utime(entries["k1"].manifest_path, ns=(1, 1))
    os.utime(entries["k2"].manifest_path, ns=(2, 2))
    assert entries["k1"].is_complete()  # a read marks k1 as used now, so k2 is the least recently used
    entries["k3"].build(["a"], fake_encoder([]))
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["k1", "k3"]


def test_entry_used_within_the_grace_period_is_kept_beyond_the_count(tmp_path):
    import os

    cache = EmbeddingCache(tmp_path, block_size=4, keep_per_name=1, grace_seconds=60)
    for key in ("old", "recent", "new"):
        cache.entry(key, name="c").build(["a"], fake_encoder([]))
        if key == "old":
            os.utime(cache.entry(key, name="c").manifest_path, ns=(1, 1))  # unused for decades
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["new", "recent"]


def test_entry_in_use_is_not_removed_by_another_build(tmp_path):
    cache = EmbeddingCache(tmp_path, block_size=1, keep_per_name=1, grace_seconds=0)
    held = cache.entry("k1", name="c")
    held.build(["a", "b"], fake_encoder([]))
    reading = held.iter_blocks()
    next(reading)  # a reader is halfway through k1
    cache.entry("k2", name="c").build(["a"], fake_encoder([]))
    assert held.is_complete()
    assert [start for start, _ in reading] == [1]
    cache.entry("k3", name="c").build(["a"], fake_encoder([]))
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["k3"]


def test_format_1_files_in_a_named_folder_are_removed(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    for name in ("block_000000.npy", "ids.txt", "manifest.json", "pending.json"):
        (folder / name).write_text("old")
    EmbeddingCache(tmp_path, block_size=4).entry("k", name="c").build(["a"], fake_encoder([]))
    assert sorted(p.name for p in folder.iterdir()) == ["k"]


def test_fingerprints_change_with_content_and_order():
    assert texts_fingerprint(["a", "b"], ["x", "y"]) != texts_fingerprint(["b", "a"], ["y", "x"])
    assert texts_fingerprint(["a"], ["x"]) != texts_fingerprint(["a"], ["x "])
    assert fingerprint("q", {"pooling": "mean"}) != fingerprint("q", {"pooling": "cls"})
    assert fingerprint("q", {"a": 1, "b": 2}) == fingerprint("q", {"b": 2, "a": 1})
