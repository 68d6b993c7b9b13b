"""``densekit encode`` / ``search`` / ``mine``: shard jobs read back as one index, kill -9 resumes bit for bit."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from densekit.cache import CacheEntry
from densekit.cli.main import main
from densekit.data.formats import read_qrels, read_run
from densekit.errors import InputError
from tests.helpers import write_beir


def encode(model, path, out, *extra):
    assert main(["encode", "--model_name_or_path", str(model), "--input_path", str(path), "--output_dir", str(out),
                 "--passage_max_len", "32", "--query_max_len", "16", *extra]) == 0


def test_sharded_encoding_then_search_equals_evaluate(tiny_model_dir, tmp_path):
    beir = write_beir(tmp_path / "beir", graded=True)
    for shard in range(3):
        encode(tiny_model_dir, beir / "corpus.jsonl", tmp_path / f"corpus{shard}", "--shard_id", str(shard),
               "--num_shards", "3", "--block_size", "2")
    encode(tiny_model_dir, beir / "queries.jsonl", tmp_path / "queries", "--kind", "query")
    assert main(["search", "--query_embeddings", str(tmp_path / "queries"), "--corpus_embeddings",
                 *[str(tmp_path / f"corpus{s}") for s in range(3)], "--topk", "10", "--qrels",
                 str(beir / "qrels" / "test.tsv"), "--output_dir", str(tmp_path / "searched")]) == 0
    assert main(["evaluate", "--model_name_or_path", str(tiny_model_dir), "--dataset", str(beir),
                 "--passage_max_len", "32", "--query_max_len", "16", "--search_topk", "10",
                 "--output_dir", str(tmp_path / "evaluated"), "--disable_tqdm", "true"]) == 0
    searched, evaluated = read_run(tmp_path / "searched" / "run.trec"), read_run(tmp_path / "evaluated" / "run.trec")
    assert searched.keys() == evaluated.keys()
    for qid in searched:
        assert searched[qid] == pytest.approx(evaluated[qid], abs=1e-5)
    m1 = json.loads((tmp_path / "searched" / "metrics.json").read_text())["aggregate"]
    m2 = json.loads((tmp_path / "evaluated" / "metrics.json").read_text())["aggregate"]
    assert m1 == pytest.approx(m2, abs=1e-6)


def test_search_without_qrels_writes_only_the_run(tiny_model_dir, tmp_path):
    beir = write_beir(tmp_path / "beir")
    encode(tiny_model_dir, beir / "corpus.jsonl", tmp_path / "c")
    encode(tiny_model_dir, beir / "queries.jsonl", tmp_path / "q", "--kind", "query")
    assert main(["search", "--query_embeddings", str(tmp_path / "q"), "--corpus_embeddings", str(tmp_path / "c"),
                 "--topk", "3", "--output_dir", str(tmp_path / "out")]) == 0
    run = read_run(tmp_path / "out" / "run.trec")
    assert len(run) == 6 and all(len(d) == 3 for d in run.values())
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_encoding_again_is_a_no_op(tiny_model_dir, tmp_path, capsys):
    beir = write_beir(tmp_path / "beir")
    encode(tiny_model_dir, beir / "corpus.jsonl", tmp_path / "c")
    encode(tiny_model_dir, beir / "corpus.jsonl", tmp_path / "c")
    assert "nothing to do" in capsys.readouterr().out


KILLER = textwrap.dedent("""
    import os, signal, sys
    import densekit.evaluation.embedding_files as files
    real = files.encode_texts
    calls = []
    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of the third block
        return real(*args, **kwargs)
    files.encode_texts = dying
    from densekit.cli.main import main
    sys.exit(main(sys.argv[1:]))
""")


def test_kill_9_during_encoding_resumes_and_matches_uninterrupted_run_bit_for_bit(tiny_model_dir, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "title": f"t{i}", "text": f"doc {i} " + "word " * (i % 17)})
                              + "\n" for i in range(50)), encoding="utf-8")
    args = ["encode", "--model_name_or_path", str(tiny_model_dir), "--input_path", str(corpus),
            "--block_size", "8", "--passage_max_len", "32"]
    killed = subprocess.run([sys.executable, "-c", KILLER, *args, "--output_dir", str(tmp_path / "resumed")],
                            capture_output=True, text=True)
    assert killed.returncode == -9
    assert sorted(p.name for p in (tmp_path / "resumed").glob("block_*.npy")) == ["block_000000.npy", "block_000001.npy"]
    assert not (tmp_path / "resumed" / "manifest.json").exists()
    with pytest.raises(InputError, match="not a finished embedding folder"):
        CacheEntry.open(tmp_path / "resumed")
    # Rerun the same command the way a user would (a fresh process with the same settings), and an
    # uninterrupted run for reference.
    for out in ("resumed", "straight"):
        subprocess.run([sys.executable, "-m", "densekit.cli.main", *args, "--output_dir", str(tmp_path / out)],
                       check=True, capture_output=True)
    ids_a, embs_a = CacheEntry.open(tmp_path / "resumed").load()
    ids_b, embs_b = CacheEntry.open(tmp_path / "straight").load()
    assert ids_a == ids_b == [f"d{i}" for i in range(50)]
    assert embs_a.tobytes() == embs_b.tobytes()


def test_truncated_block_in_embedding_folder_is_detected_then_rebuilt(tiny_model_dir, tmp_path):
    beir = write_beir(tmp_path / "beir")
    encode(tiny_model_dir, beir / "corpus.jsonl", tmp_path / "c", "--block_size", "5")
    before = CacheEntry.open(tmp_path / "c").load()[1].copy()
    block = tmp_path / "c" / "block_000001.npy"
    block.write_bytes(block.read_bytes()[:100])
    with pytest.raises(InputError, match="damaged"):
        CacheEntry.open(tmp_path / "c")
    encode(tiny_model_dir, beir / "corpus.jsonl", tmp_path / "c", "--block_size", "5")
    np.testing.assert_array_equal(CacheEntry.open(tmp_path / "c").load()[1], before)


def test_mine_command_writes_mined_and_merged_qrels(tiny_model_dir, tmp_path):
    beir = write_beir(tmp_path / "beir", graded=True)
    assert main(["mine", "--model_name_or_path", str(tiny_model_dir), "--dataset", str(beir), "--search_topk", "4",
                 "--no_annot_in_mined_hn", "true", "--merge_mined_qrels", "true", "--output_dir", str(tmp_path / "hn"),
                 "--disable_tqdm", "true"]) == 0
    mined, merged = read_qrels(tmp_path / "hn" / "mined_qrels.tsv"), read_qrels(tmp_path / "hn" / "merged_qrels.tsv")
    judged = read_qrels(beir / "qrels" / "test.tsv")
    assert all(len(d) == 4 and not set(d) & set(judged[q]) for q, d in mined.items())
    assert all(merged[q][d] == s for q, docs in judged.items() for d, s in docs.items())


def test_search_measures_without_qrels_is_refused(tmp_path, capsys):
    assert main(["search", "--query_embeddings", "q", "--corpus_embeddings", "c", "--output_dir", str(tmp_path),
                 "--measures", "nDCG@10"]) == 1
    assert "--qrels" in capsys.readouterr().err
