"""Ids in a cache entry: any string round-trips, and a missing or damaged ids file is never read as valid."""
from __future__ import annotations

import json

import numpy as np
import pytest

from densekit.cache import CacheEntry, EmbeddingCache
from densekit.errors import InputError

AWKWARD_IDS = ["plain", "with\nnewline", "with\ttab", "trailing space ", "", "é ü 日本", "cr\r\nlf", "lone \ud800 surrogate",
               '"quoted" \\ backslash', "\u2028line separator"]


def rows(start: int, stop: int) -> np.ndarray:
    return np.arange(start, stop, dtype=np.float32)[:, None].repeat(2, axis=1)


def built(tmp_path, ids=AWKWARD_IDS) -> CacheEntry:
    entry = EmbeddingCache(tmp_path, block_size=3).entry("k")
    entry.build(ids, rows)
    return entry


def test_ids_with_newlines_tabs_and_any_character_round_trip(tmp_path):
    entry = built(tmp_path)
    assert entry.read_ids() == AWKWARD_IDS
    ids, embs = CacheEntry.open(entry.path).load()
    assert ids == AWKWARD_IDS and embs.shape == (len(AWKWARD_IDS), 2)
    np.testing.assert_array_equal(embs[:, 0], np.arange(len(AWKWARD_IDS), dtype=np.float32))


def test_empty_entry_has_no_ids(tmp_path):
    entry = built(tmp_path, ids=[])
    assert entry.is_complete() and entry.read_ids() == []
    assert entry.load()[1].shape == (0, 0)


@pytest.mark.parametrize("damage", ["missing", "truncated", "one id changed"])
def test_missing_or_damaged_ids_file_makes_the_entry_incomplete(tmp_path, damage):
    entry = built(tmp_path)
    if damage == "missing":
        entry.ids_path.unlink()
    elif damage == "truncated":
        entry.ids_path.write_bytes(entry.ids_path.read_bytes()[:-20])
    else:
        entry.ids_path.write_text(json.dumps(["PLAIN"] + AWKWARD_IDS[1:]), encoding="ascii")
    assert not entry.is_complete()
    with pytest.raises(InputError) as err:
        CacheEntry.open(entry.path)
    assert err.value.path == str(entry.path) and "ids file" in str(err.value) and "again" in err.value.fix
    calls: list = []
    entry.build(AWKWARD_IDS, lambda a, b: calls.append((a, b)) or rows(a, b))
    assert calls == [] and entry.is_complete() and entry.read_ids() == AWKWARD_IDS  # blocks kept, ids rewritten


def test_reading_ids_that_do_not_match_the_manifest_names_the_folder(tmp_path):
    entry = built(tmp_path)
    entry.ids_path.write_text(json.dumps(AWKWARD_IDS[:3]), encoding="ascii")
    with pytest.raises(InputError, match="ids.json") as err:
        entry.read_ids()
    assert err.value.path == str(entry.path)


def test_entry_of_the_previous_format_is_encoded_again(tmp_path):
    folder = tmp_path / "k"
    folder.mkdir()
    np.save(folder / "block_000000.npy", rows(0, 2) + 7)
    (folder / "ids.txt").write_text("a\nb", encoding="utf-8")
    (folder / "manifest.json").write_text(json.dumps({"version": 1, "key": "k", "count": 2, "dim": 2, "block_size": 3,
                                                      "block_bytes": [0], "block_sha256": ["x"], "info": {}}))
    with pytest.raises(InputError, match="format 1"):
        CacheEntry.open(folder)
    entry = EmbeddingCache(tmp_path, block_size=3).entry("k")
    assert not entry.is_complete()
    calls: list = []
    entry.build(["a", "b"], lambda a, b: calls.append((a, b)) or rows(a, b))
    assert calls == [(0, 2)] and not (folder / "ids.txt").exists()
    np.testing.assert_array_equal(entry.load()[1], rows(0, 2))
