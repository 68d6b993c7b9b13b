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


def test_named_entry_built_for_another_key_is_rebuilt(tmp_path):
    cache = EmbeddingCache(tmp_path, block_size=4)
    ids = ["a", "b"]
    cache.entry("model-1", name="corpus.arrow").build(ids, fake_encoder([]))
    assert not cache.entry("model-2", name="corpus.arrow").is_complete()
    calls: list = []
    cache.entry("model-2", name="corpus.arrow").build(ids, fake_encoder(calls))
    assert calls == [(0, 2)]
    manifest = json.loads((tmp_path / "corpus.arrow" / "manifest.json").read_text())
    assert manifest["key"] == "model-2"


def test_fingerprints_change_with_content_and_order():
    assert texts_fingerprint(["a", "b"], ["x", "y"]) != texts_fingerprint(["b", "a"], ["y", "x"])
    assert texts_fingerprint(["a"], ["x"]) != texts_fingerprint(["a"], ["x "])
    assert fingerprint("q", {"pooling": "mean"}) != fingerprint("q", {"pooling": "cls"})
    assert fingerprint("q", {"a": 1, "b": 2}) == fingerprint("q", {"b": 2, "a": 1})
