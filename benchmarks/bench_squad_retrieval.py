"""SQuAD open-domain retrieval (issue 13): DPR top-k accuracy of the bundled MiniLM before and after fine-tuning.

Every step is a densekit command (printed before it runs), timed, run one after the other:

1. ``base``: ``densekit evaluate --qa_file qa/dev.csv --passages psgs.tsv`` with the bundled MiniLM
   (top-1/5/20/100 answer-match accuracy; the passage vectors go to the embedding cache).
2. ``mine``: a seeded sample of ``--train_questions`` questions of ``retriever/train.json`` (gold
   paragraph kept as the positive) searched with the base model; ``densekit mine --qa_file`` keeps
   retrieved passages WITHOUT an answer as hard negatives plus other paragraphs of the same article without
   an answer (in-article negatives) and writes a BEIR folder. The passages come from the cache of step 1.
3. ``train``: ``densekit train`` on that folder, gradient cache on, judged-0 passages as hard negatives.
4. ``after``: step 1 with the fine-tuned model (its dev results JSON is copied to ``--dev_results``).
5. ``train_results`` (``--train_results PATH``): the fine-tuned model's results on all train questions,
   for the reader (passages from the cache of step 4).

    nice -n 10 python benchmarks/bench_squad_retrieval.py --out /tmp/qa13/bench \\
        --retriever_out /tmp/qa13/retriever --dev_results /tmp/qa13/dev_results.json \\
        --train_results /tmp/qa13/train_results.json

Prints a Markdown table and writes ``OUT/summary.json`` (accuracies, wall time per step, load average).
A step whose outputs exist is not run again (``--fresh`` to redo everything).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import time
from pathlib import Path

from densekit_runs import bundled_model, run_densekit

SQUAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad"


def run_step(name: str, args: list[str], log: Path, timings: dict) -> None:
    """``densekit ARGS`` with its output in ``log``; its wall time and the load average around it go to ``timings``."""
    print(f"\n[{name}]", flush=True)
    load = os.getloadavg()[0]
    ran = run_densekit(args, log=log)
    timings[name] = {"seconds": round(ran.seconds, 1), "load_before": round(load, 2),
                     "load_after": round(os.getloadavg()[0], 2)}


def accuracy(folder: Path) -> dict[str, float]:
    return json.loads((folder / "metrics.json").read_text())["aggregate"]


def sample_train(path: Path, n: int, seed: int) -> None:
    """A seeded sample of ``n`` questions of retriever/train.json (all articles), in file order."""
    items = json.loads((SQUAD / "retriever" / "train.json").read_text(encoding="utf-8"))
    keep = sorted(random.Random(seed).sample(range(len(items)), min(n, len(items))))
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("[\n" + ",\n".join(json.dumps({"id": f"t{i}", **items[i]}, ensure_ascii=False) for i in keep)
                     + "\n]\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="/tmp/qa13/bench")
    parser.add_argument("--model", default=None, help="default: the bundled all-MiniLM-L6-v2")
    parser.add_argument("--train_questions", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--learning_rate", type=float, default=2e-5)
    parser.add_argument("--group_size", type=int, default=2)
    parser.add_argument("--train_passage_max_len", type=int, default=192)
    parser.add_argument("--eval_passage_max_len", type=int, default=256)
    parser.add_argument("--hard_negatives", type=int, default=3, help="retrieved, without an answer, per question")
    parser.add_argument("--in_article_negatives", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=16, help="gradient cache chunk size (queries and passages)")
    parser.add_argument("--retriever_out", default=None, help="copy the fine-tuned retriever here")
    parser.add_argument("--dev_results", default=None, help="copy the fine-tuned dev results JSON here")
    parser.add_argument("--train_results", default=None, help="also write the fine-tuned train results JSON here")
    parser.add_argument("--fresh", action="store_true", help="redo steps whose outputs exist")
    args = parser.parse_args()

    out = Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    model = args.model or bundled_model()
    cache = str(out / "cache")
    qa = ["--passages", str(SQUAD / "psgs.tsv"), "--query_max_len", "64", "--encoding_cache_dir", cache,
          "--disable_tqdm", "true"]
    timings: dict = {}
    began = time.time()

    if not (out / "base_dev" / "metrics.json").is_file():
        run_step("base", ["evaluate", "--model_name_or_path", model, "--qa_file", str(SQUAD / "qa" / "dev.csv"),
                               "--passage_max_len", str(args.eval_passage_max_len), "--output_dir",
                               str(out / "base_dev"), *qa], out / "base_dev.log", timings)
    if not (out / "hn" / "beir" / "qrels" / "train.tsv").is_file():
        sample_train(out / "train_sample.json", args.train_questions, args.seed)
        run_step("mine", ["mine", "--model_name_or_path", model, "--qa_file", str(out / "train_sample.json"),
                               "--passage_max_len", str(args.eval_passage_max_len), "--n_docs", "20",
                               "--top_k", "1", "5", "20", "--answer_positives", "0",
                               "--num_hard_negatives", str(args.hard_negatives),
                               "--in_article_negatives", str(args.in_article_negatives), "--negative_seed",
                               str(args.seed), "--output_format", "beir", "--output_dir", str(out / "hn"), *qa],
                 out / "mine.log", timings)
    retriever = out / "retriever"
    if not (retriever / "model.safetensors").is_file():
        run_step("train", ["train", "--model_name_or_path", model, "--dataset", str(out / "hn" / "beir"),
                                "--negative_qrel_path", str(out / "hn" / "beir" / "qrels" / "train.tsv"),
                                "--output_dir", str(retriever), "--per_device_train_batch_size", str(args.batch),
                                "--group_size", str(args.group_size), "--learning_rate", str(args.learning_rate),
                                "--temperature", "0.05", "--warmup_steps", "0.1", "--query_max_len", "64",
                                "--passage_max_len", str(args.train_passage_max_len), "--num_train_epochs",
                                str(args.epochs), "--grad_cache", "true", "--query_chunk_size", str(args.chunk),
                                "--passage_chunk_size", str(args.chunk), "--seed", str(args.seed),
                                "--save_strategy", "no", "--logging_steps", "5", "--disable_tqdm", "true",
                                "--dataloader_pin_memory", "false"], out / "train.log", timings)
    if not (out / "after_dev" / "metrics.json").is_file():
        run_step("after", ["evaluate", "--model_name_or_path", str(retriever), "--qa_file",
                                str(SQUAD / "qa" / "dev.csv"), "--passage_max_len", str(args.eval_passage_max_len),
                                "--output_dir", str(out / "after_dev"), *qa], out / "after_dev.log", timings)
    total = time.time() - began
    if args.train_results and not (out / "after_train" / "metrics.json").is_file():
        run_step("train_results", ["evaluate", "--model_name_or_path", str(retriever), "--qa_file",
                                        str(SQUAD / "retriever" / "train.json"), "--passage_max_len",
                                        str(args.eval_passage_max_len), "--output_dir", str(out / "after_train"),
                                        *qa], out / "after_train.log", timings)
    if args.retriever_out:
        shutil.copytree(retriever, args.retriever_out, dirs_exist_ok=True)
    if args.dev_results:
        shutil.copyfile(out / "after_dev" / "results.json", args.dev_results)
    if args.train_results:
        shutil.copyfile(out / "after_train" / "results.json", args.train_results)

    before, after = accuracy(out / "base_dev"), accuracy(out / "after_dev")
    print("\n| model | " + " | ".join(before) + " |")
    print("| --- |" + " --- |" * len(before))
    print("| bundled MiniLM | " + " | ".join(f"{v:.4f}" for v in before.values()) + " |")
    print("| fine-tuned | " + " | ".join(f"{after[k]:.4f}" for k in before) + " |")
    print("| difference | " + " | ".join(f"{after[k] - before[k]:+.4f}" for k in before) + " |")
    summary = {"before": before, "after": after, "steps": timings, "wall_seconds_base_to_after": round(total, 1),
               "settings": vars(args)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print("\nsteps: " + ", ".join(f"{k} {v['seconds']:.0f} s" for k, v in timings.items())
          + f"; base..after {total / 60:.1f} min (steps run in this call)")


if __name__ == "__main__":
    main()
