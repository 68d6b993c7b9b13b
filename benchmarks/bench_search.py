"""Exact top-k search: densekit's ExactSearcher vs faiss.IndexFlatIP, same data, same run, same threads.

densekit is measured on the path the evaluator and ``densekit search`` use: an :class:`ExactSearcher`
fed the corpus block by block (``--block-size`` rows per ``add``, 16384 like the evaluator's encoding
blocks); ``exact_search`` is a loop over the same class. Also measures the peak resident memory of
that search over a memory-mapped corpus, to show that memory is bounded by the block sizes and the
running top-k rather than the corpus size.

    python benchmarks/bench_search.py --queries 1000 --docs 100000 --dim 384 --topk 100
    python benchmarks/bench_search.py --queries 10000 --docs 1000000 --memmap /tmp/corpus.f32 --repeat 1
    python benchmarks/bench_search.py --queries 100000 --docs 1000000 --memmap /tmp/corpus.f32 --no-faiss

Prints Markdown table rows. Run small sizes on shared machines; timings are the best of ``--repeat``
interleaved runs. "ids equal" < 1 only from near-ties that the two BLAS libraries round differently;
"max score diff" (largest difference between the two sorted score lists) shows they are only that.
With ``--memmap PATH`` the corpus is written to PATH (kept for reuse) and densekit searches the
memory-mapped file; its peak RSS growth during the first search is reported (faiss holds a copy).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def normalized(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def push_search(queries: np.ndarray, corpus: np.ndarray, topk: int, block_size: int, query_batch_size: int,
                progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The evaluator's way: one ExactSearcher, the corpus added block by block, then the results."""
    from densekit.search import ExactSearcher

    began, reported = time.perf_counter(), 0
    with ExactSearcher(queries, topk, query_batch_size=query_batch_size) as searcher:
        for start in range(0, corpus.shape[0], block_size):
            searcher.add(start, corpus[start:start + block_size])
            done = min(start + block_size, corpus.shape[0]) * 10 // corpus.shape[0]
            if progress and done > reported:
                reported = done
                print(f"  {done * 10}% of the corpus after {time.perf_counter() - began:.0f}s", file=sys.stderr)
        return searcher.results()


def child_rss(args: argparse.Namespace) -> None:
    """Child process: search a memory-mapped (or fully loaded) corpus, report RSS before and peak (KiB)."""
    shape = (args.docs, args.dim)
    if args.rss_mode == "memmap":
        corpus = np.memmap(args.rss_child, dtype=np.float32, mode="r", shape=shape)
    else:
        corpus = np.fromfile(args.rss_child, dtype=np.float32).reshape(shape)
    queries = normalized(args.queries, args.dim, 1)
    warm = normalized(min(args.rss_chunk_size, args.docs), args.dim, 2)  # same shapes: allocator/BLAS warm
    push_search(queries, warm, args.topk, args.rss_chunk_size, args.query_batch_size)
    del warm
    try:  # reset the peak (VmHWM) so it reflects the search only
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    before = rss_kib("VmRSS")
    push_search(queries, corpus, args.topk, args.rss_chunk_size, args.query_batch_size)
    print(json.dumps({"before_kib": before, "peak_kib": rss_kib("VmHWM")}))


def measure_rss(args: argparse.Namespace, corpus: np.ndarray) -> None:
    """Peak RSS growth of the search over a memmapped corpus vs the same corpus already in RAM.

    Equal growth for both means reading the memmap added nothing: memory is set by the chunk and
    query batch sizes (score block, candidates), not by the corpus size.
    """
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.f32"
        corpus.tofile(path)
        for mode in ("memmap", "ram"):
            cmd = [sys.executable, __file__, "--rss-child", str(path), "--rss-mode", mode,
                   "--queries", str(args.queries), "--docs", str(args.docs), "--dim", str(args.dim),
                   "--topk", str(args.topk), "--rss-chunk-size", str(args.rss_chunk_size),
                   "--query-batch-size", str(args.query_batch_size)]
            run = subprocess.run(cmd, check=True, capture_output=True, text=True, env=dict(os.environ))
            out = json.loads(run.stdout.strip().splitlines()[-1])
            rows.append((mode, (out["peak_kib"] - out["before_kib"]) / 1024))
    print()
    print("| corpus source | corpus MiB | chunk | peak RSS growth during search MiB |")
    print("|---|---|---|---|")
    for mode, grew in rows:
        print(f"| {mode} | {corpus.nbytes / 2**20:.0f} | {args.rss_chunk_size} | {grew:.0f} |")


def memmap_corpus(path: str, docs: int, dim: int) -> np.ndarray:
    """Normalized random vectors (seed 0), written once to ``path`` in pieces of 65536 rows."""
    if not (Path(path).exists() and Path(path).stat().st_size == docs * dim * 4):
        partial = path + ".partial"  # renamed when complete: an interrupted run is not reused
        out = np.memmap(partial, dtype=np.float32, mode="w+", shape=(docs, dim))
        rng = np.random.default_rng(0)
        for start in range(0, docs, 65536):
            x = rng.standard_normal((min(65536, docs - start), dim), dtype=np.float32)
            out[start:start + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
        out.flush()
        del out
        os.replace(partial, path)
    return np.memmap(path, dtype=np.float32, mode="r", shape=(docs, dim))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--docs", type=int, default=100000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--topk", type=int, default=100)
    parser.add_argument("--block-size", type=int, default=16384, help="corpus rows per ExactSearcher.add")
    parser.add_argument("--query-batch-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=None, help="set torch and faiss threads (default: as is)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs; the best of each is reported")
    parser.add_argument("--rss-chunk-size", type=int, default=2048, help="block size for the RSS measurement")
    parser.add_argument("--no-faiss", action="store_true", help="densekit only (e.g. the mining-sized run)")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--memmap", default=None, help="corpus file to create/reuse and search memory-mapped")
    parser.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--rss-mode", default="memmap", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        child_rss(args)
        return

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    faiss = None
    if not args.no_faiss:
        import faiss

        if args.threads:
            faiss.omp_set_num_threads(args.threads)
    queries = normalized(args.queries, args.dim, 1)
    if args.memmap:
        corpus = memmap_corpus(args.memmap, args.docs, args.dim)
    else:
        corpus = normalized(args.docs, args.dim, 0)

    def ours_search() -> tuple[np.ndarray, np.ndarray]:
        return push_search(queries, corpus, args.topk, args.block_size, args.query_batch_size,
                           progress=args.repeat == 1)

    ours, theirs, rss_growth = [], [], None
    if args.memmap:  # first densekit run before faiss holds its in-RAM copy: its own peak RSS
        push_search(queries, np.array(corpus[:8192]), args.topk, args.block_size,
                    args.query_batch_size)  # warm-up: thread pools, allocator, numba cache
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM)
        before = rss_kib("VmRSS")
        start = time.perf_counter()
        ours_scores, ours_ids = ours_search()
        ours.append(time.perf_counter() - start)
        rss_growth, rss_peak = (rss_kib("VmHWM") - before) / 1024, rss_kib("VmHWM") / 1024
    if faiss is not None:
        index = faiss.IndexFlatIP(args.dim)
        for start in range(0, args.docs, 65536):
            index.add(np.ascontiguousarray(corpus[start:start + 65536]))
    for rep in range(args.repeat if faiss is not None or not args.memmap else 0):
        if not (args.memmap and rep == 0):  # interleaved, so both see the same machine load
            start = time.perf_counter()
            ours_scores, ours_ids = ours_search()
            ours.append(time.perf_counter() - start)
        if faiss is not None:
            start = time.perf_counter()
            faiss_scores, faiss_ids = index.search(queries, args.topk)
            theirs.append(time.perf_counter() - start)
    ours_time = min(ours)
    print("| queries | docs | dim | topk | block | qbatch | torch thr | faiss thr | densekit s | faiss s "
          "| ratio (ours/faiss) | ids equal | max score diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    if faiss is not None:
        agree = float(np.mean(ours_ids == faiss_ids))
        score_diff = float(np.max(np.abs(ours_scores - faiss_scores)))
        faiss_time = min(theirs)
        print(f"| {args.queries} | {args.docs} | {args.dim} | {args.topk} | {args.block_size} | "
              f"{args.query_batch_size} | {torch.get_num_threads()} | {faiss.omp_get_max_threads()} | "
              f"{ours_time:.3f} | {faiss_time:.3f} | {ours_time / faiss_time:.2f}x | {agree:.4f} | {score_diff:.1e} |")
    else:
        print(f"| {args.queries} | {args.docs} | {args.dim} | {args.topk} | {args.block_size} | "
              f"{args.query_batch_size} | {torch.get_num_threads()} | - | {ours_time:.3f} | - | - | - | - |")
    runs = f"densekit {' '.join(f'{t:.3f}' for t in ours)}; faiss {' '.join(f'{t:.3f}' for t in theirs)}"
    print(f"\nall runs (s): {runs}")
    if rss_growth is not None:
        print(f"densekit peak RSS growth during the search over the {corpus.nbytes / 2**20:.0f} MiB memmap: "
              f"{rss_growth:.0f} MiB; whole-process peak RSS {rss_peak:.0f} MiB (memmap pages included)")
    if not args.skip_rss and not args.memmap:
        measure_rss(args, corpus)


if __name__ == "__main__":
    main()
