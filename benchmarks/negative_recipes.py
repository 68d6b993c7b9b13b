"""Base model vs plain top-k mining vs densekit's recipe (``densekit demo``), on a BEIR folder's dev split.

The plain recipe is what issue 14 measured with yesterday's defaults: mine 30 negatives per training
query with the base model (``--no_annot_in_mined_hn``, top 30), train one epoch on them (batch 32, lr 5e-5,
temperature 0.05, group size 2, 128-token passages, no false-negative masking). densekit's recipe is
``densekit demo --dataset DATA --split dev`` with its defaults. Each is evaluated on dev (top-100), then
``densekit compare`` tests each against plain mining (paired t-test, randomization, bootstrap, Holm).

    python benchmarks/negative_recipes.py --dataset ../shared/data/nfcorpus --output_dir /tmp/recipes/nfcorpus
    python benchmarks/negative_recipes.py --dataset ../shared/data/scifact --output_dir /tmp/recipes/scifact

Every step is a densekit command (printed); a step whose output exists is skipped, so a rerun resumes.
"""
from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

from densekit_runs import bundled_model, run_densekit


def densekit(*argv: str) -> None:
    run_densekit(argv)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="BEIR folder with qrels/train.tsv and qrels/dev.tsv")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--model", default=None, help="default: the bundled all-MiniLM-L6-v2")
    parser.add_argument("--skip", nargs="*", default=[], choices=["plain", "densekit"], help="recipes to leave out")
    parser.add_argument("--demo_args", default="", help="extra options for densekit demo (quoted)")
    args = parser.parse_args()
    if args.model is None:
        args.model = bundled_model()
    out = Path(args.output_dir)
    data = ["--dataset", args.dataset]
    timings: dict[str, float] = {}
    runs = {}

    began = time.perf_counter()
    if "densekit" not in args.skip:  # its base stage is the base model's dev run
        if not (out / "densekit" / "report.md").is_file():
            densekit("demo", "--model_name_or_path", args.model, *data, "--split", "dev",
                     "--output_dir", str(out / "densekit"), *shlex.split(args.demo_args))
        runs["base"] = out / "densekit" / "base" / "run.trec"
        runs["densekit"] = out / "densekit" / "stage2" / "run.trec"
        timings["densekit"] = time.perf_counter() - began
    if "plain" not in args.skip:
        began = time.perf_counter()
        plain = out / "plain"
        if not (plain / "mined" / "mined_qrels.tsv").is_file():
            densekit("mine", "--model_name_or_path", args.model, *data, "--split", "train", "--search_topk", "30",
                     "--no_annot_in_mined_hn", "true", "--output_dir", str(plain / "mined"),
                     "--encoding_cache_dir", str(out / "cache"), "--mine_audit", "false")
        if not (plain / "model" / "densekit_config.json").is_file():
            densekit("train", "--model_name_or_path", args.model, *data, "--split", "train",
                     "--output_dir", str(plain / "model"), "--negative_qrel_path", str(plain / "mined" / "mined_qrels.tsv"),
                     "--per_device_train_batch_size", "32", "--learning_rate", "5e-5", "--temperature", "0.05",
                     "--group_size", "2", "--passage_max_len", "128", "--query_max_len", "64", "--num_train_epochs", "1",
                     "--mask_false_negatives", "false", "--save_strategy", "no", "--report_to", "none")
        if not (plain / "dev" / "run.trec").is_file():
            densekit("evaluate", "--model_name_or_path", str(plain / "model"), *data, "--split", "dev",
                     "--output_dir", str(plain / "dev"), "--search_topk", "100", "--query_max_len", "64")
        runs["plain"] = plain / "dev" / "run.trec"
        timings["plain"] = time.perf_counter() - began
    present = {name: path for name, path in runs.items() if path.is_file()}
    if "plain" in present:  # plain mining is the baseline of the comparison
        present = {"plain": present.pop("plain"), **present}
    if len(present) >= 2:
        densekit("compare", *map(str, present.values()), "--names", *present, "--qrels",
                 str(Path(args.dataset) / "qrels" / "dev.tsv"), "--queries", str(Path(args.dataset) / "queries.jsonl"),
                 "-m", "nDCG@10", "-m", "Recall@100", "--output_dir", str(out / "compare"))
    summary = {"timings_seconds": timings, "runs": {k: str(v) for k, v in present.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"negative_recipes: {out / 'compare' / 'compare.md'}; timings {timings}")


if __name__ == "__main__":
    main()
