"""Two processes using the same cache folder and entry name at once each get their own, correct vectors."""
from __future__ import annotations

import subprocess
import sys
import textwrap

WORKER = textwrap.dedent('''
    import sys, time, zlib
    import numpy as np
    from densekit.cache import EmbeddingCache

    root, tag, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ids = [f"d{i}" for i in range(30)]

    def vectors(key, start, stop):
        rows = np.arange(start, stop, dtype=np.float32)[:, None]
        return np.hstack([rows, np.full_like(rows, zlib.crc32(key.encode()) % 9973), rows * 3]).astype(np.float32)

    def check(entry):
        got_ids, embs = entry.load()
        assert got_ids == ids, (entry.key, got_ids[:3])
        np.testing.assert_array_equal(embs, vectors(entry.key, 0, len(ids)))
        for start, block in entry.iter_blocks():
            np.testing.assert_array_equal(block, vectors(entry.key, start, start + len(block)))

    cache = EmbeddingCache(root, block_size=3, keep_per_name=2)
    encoded = 0
    for r in range(rounds):
        key = tag if tag.startswith("same") else f"{tag}-{r}"
        entry = cache.entry(key, name="corpus_cache")

        def slow(start, stop, key=key):
            time.sleep(0.01)  # keeps the two processes' builds overlapping
            return vectors(key, start, stop)

        if not entry.is_complete():
            seen = []
            encoded += entry.build(ids, slow, on_block=lambda s, b: seen.append((s, b.copy())))
            for start, block in seen:
                np.testing.assert_array_equal(block, vectors(key, start, start + len(block)))
        check(entry)
        for old in range(r):  # earlier entries may have been removed (keep_per_name), never changed
            previous = cache.entry(f"{tag}-{old}", name="corpus_cache")
            if previous.is_complete():
                check(previous)
    print("encoded", encoded)
''')


def run_pair(root, tags, rounds):
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(root), tag, str(rounds)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for tag in tags]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    for out, err, code in results:
        assert code == 0, err[-3000:]
    return [int(out.split()[-1]) for out, _, _ in results]


def test_two_processes_with_different_keys_and_one_name_both_read_their_own_vectors(tmp_path):
    run_pair(tmp_path, ["A", "B"], rounds=4)


def test_two_processes_building_the_same_entry_encode_it_once(tmp_path):
    assert sorted(run_pair(tmp_path, ["same", "same"], rounds=1)) == [0, 30]
