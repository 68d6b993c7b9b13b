"""Resuming an unfinished entry reuses only blocks that match the key, rows and checksum they were written with."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from densekit.cache import CacheEntry, EmbeddingCache


def encoder(calls: list, offset: float = 0.0):
    def encode_rows(start: int, stop: int) -> np.ndarray:
        calls.append((start, stop))
        rows = np.arange(start, stop, dtype=np.float32)[:, None]
        return np.hstack([rows, rows * 2 + offset, np.cos(rows)]).astype(np.float32)
    return encode_rows


def interrupted(entry: CacheEntry, ids: list, after_rows: int, offset: float = 0.0) -> None:
    def dies(start: int, stop: int) -> np.ndarray:
        if start >= after_rows:
            raise KeyboardInterrupt
        return encoder([], offset)(start, stop)
    with pytest.raises(KeyboardInterrupt):
        entry.build(ids, dies)


def test_flipped_byte_in_a_block_of_an_unfinished_entry_is_encoded_again(tmp_path):
    ids = [f"d{i}" for i in range(10)]
    entry = EmbeddingCache(tmp_path, block_size=4).entry("k")
    interrupted(entry, ids, after_rows=8)
    assert not entry.manifest_path.exists()
    raw = bytearray(entry.block_path(0).read_bytes())
    raw[-3] ^= 0x40  # a float value changes; shape and dtype stay valid
    entry.block_path(0).write_bytes(bytes(raw))
    calls: list = []
    assert entry.build(ids, encoder(calls)) == 6
    assert calls == [(0, 4), (8, 10)]
    reference = EmbeddingCache(tmp_path / "ref", block_size=4).entry("k")
    reference.build(ids, encoder([]))
    assert entry.load()[1].tobytes() == reference.load()[1].tobytes()
    manifest = json.loads(entry.manifest_path.read_text())
    assert manifest["block_sha256"][0] == hashlib.sha256(reference.block_path(0).read_bytes()).hexdigest()
    assert entry.is_complete()


def test_sidecar_records_key_rows_and_checksum_of_each_block(tmp_path):
    entry = EmbeddingCache(tmp_path, block_size=4).entry("k")
    interrupted(entry, [f"d{i}" for i in range(6)], after_rows=4)
    meta = json.loads(entry.sidecar_path(0).read_text())
    data = entry.block_path(0).read_bytes()
    assert meta == {"key": "k", "start": 0, "stop": 4, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_block_missing_its_sidecar_is_encoded_again(tmp_path):
    ids = [f"d{i}" for i in range(10)]
    entry = EmbeddingCache(tmp_path, block_size=4).entry("k")
    interrupted(entry, ids, after_rows=8)  # blocks 0 and 1 written, no manifest
    entry.sidecar_path(1).unlink()
    calls: list = []
    entry.build(ids, encoder(calls))
    assert calls == [(4, 8), (8, 10)]


def test_blocks_of_another_key_in_the_same_folder_are_not_reused(tmp_path):
    ids = [f"d{i}" for i in range(8)]
    interrupted(CacheEntry(tmp_path / "out", key="model-a", block_size=4), ids, after_rows=4, offset=50.0)
    entry = CacheEntry(tmp_path / "out", key="model-b", block_size=4)
    calls: list = []
    assert entry.build(ids, encoder(calls)) == 8
    assert calls == [(0, 4), (4, 8)]
    np.testing.assert_array_equal(entry.load()[1], encoder([])(0, 8))


def test_blocks_of_another_block_size_are_not_reused(tmp_path):
    ids = [f"d{i}" for i in range(10)]
    CacheEntry(tmp_path / "out", key="k", block_size=4).build(ids, encoder([], offset=50.0))
    smaller = CacheEntry(tmp_path / "out", key="k", block_size=2)
    calls: list = []
    assert smaller.build(ids, encoder(calls)) == 10
    np.testing.assert_array_equal(smaller.load()[1], encoder([])(0, 10))
    assert sorted(p.name for p in (tmp_path / "out").glob("block_*.npy")) == [f"block_00000{i}.npy" for i in range(5)]
