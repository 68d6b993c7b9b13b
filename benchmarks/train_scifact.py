"""Fine-tune the bundled MiniLM on SciFact train, report dev nDCG@10 / Recall@100 before and after.

Default (ANCE-style, one round): evaluate the base model, mine hard negatives for the train queries
with the base model itself (annotated documents excluded; the corpus embeddings come from the
evaluation's cache, so the corpus is encoded once), train on (positive, mined negative) groups with
in-batch negatives (InfoNCE, temperature 0.05), evaluate.
``--random_epochs N`` first trains N epochs with one random corpus negative per query and mines with
that model instead (the longer two-stage recipe).
Every stage goes through the ``densekit`` command line, so this is also an end-to-end check of
evaluate -> mine -> train -> evaluate. Settings were chosen on dev (the only split here).

Usage: python benchmarks/train_scifact.py [--data ../shared/data/scifact] [--work runs/train_scifact]
       [--random_epochs 0] [--hn_epochs 3] [--batch 32] [--lr 5e-5] [--passage_max_len 128] [--untie_encoder]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from densekit_runs import bundled_model, run_densekit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def densekit(*args: str) -> None:
    run_densekit(args)


def evaluate(model: str, data: str, out: Path, cache: Path) -> dict:
    densekit("evaluate", "--model_name_or_path", model, "--dataset", data, "--split", "dev", "--output_dir", str(out),
             "--measures", "nDCG@10", "Recall@100", "--search_topk", "100", "--passage_max_len", "256",
             "--encoding_cache_dir", str(cache), "--disable_tqdm", "true")
    return json.loads((out / "metrics.json").read_text())["aggregate"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "scifact"))
    parser.add_argument("--work", default=str(ROOT / "runs" / "train_scifact"))
    parser.add_argument("--random_epochs", type=int, default=0)
    parser.add_argument("--hn_epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--passage_max_len", type=int, default=128, help="training passages; evaluation and mining use 256")
    parser.add_argument("--untie_encoder", action="store_true",
                        help="train separate query and passage towers (both from the base model)")
    args = parser.parse_args()
    work, base = Path(args.work), bundled_model()
    cache = work / "embedding_cache"
    began = time.perf_counter()
    results = {"base": evaluate(base, args.data, work / "eval_base", cache)}
    common = ["--per_device_train_batch_size", str(args.batch), "--learning_rate", str(args.lr),
              "--temperature", "0.05", "--group_size", "2", "--query_max_len", "64",
              "--passage_max_len", str(args.passage_max_len), "--warmup_steps", "0.1", "--logging_steps", "5",
              "--save_strategy", "no", "--disable_tqdm", "true", "--seed", "13"]
    miner = base
    if args.random_epochs:
        miner = str(work / "random_negatives")
        densekit("train", "--model_name_or_path", base, "--dataset", args.data, "--split", "train",
                 "--output_dir", miner, "--num_train_epochs", str(args.random_epochs), *common)
        results["random_negatives"] = evaluate(miner, args.data, work / "eval_random_negatives", cache)
    densekit("mine", "--model_name_or_path", miner, "--dataset", args.data, "--split", "train",
             "--search_topk", "30", "--no_annot_in_mined_hn", "true", "--output_dir", str(work / "mined"),
             "--passage_max_len", "256", "--encoding_cache_dir", str(cache), "--disable_tqdm", "true")
    tuned = work / "mined_negatives"
    densekit("train", "--model_name_or_path", miner, "--dataset", args.data, "--split", "train",
             "--negative_qrel_path", str(work / "mined" / "mined_qrels.tsv"), "--output_dir", str(tuned),
             "--num_train_epochs", str(args.hn_epochs), *common,
             *(["--untie_encoder", "true"] if args.untie_encoder else []))
    results["mined_negatives"] = evaluate(str(tuned), args.data, work / "eval_mined_negatives", cache)
    minutes = (time.perf_counter() - began) / 60
    print("| model | dev nDCG@10 | dev Recall@100 |")
    print("| --- | --- | --- |")
    for name, metrics in results.items():
        print(f"| {name} | {metrics['nDCG@10']:.4f} | {metrics['Recall@100']:.4f} |")
    print(f"total wall time {minutes:.1f} min")
    (work / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
