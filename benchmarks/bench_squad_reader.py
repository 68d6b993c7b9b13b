"""SQuAD open-domain reader benchmark: retriever results -> `densekit reader train` -> `densekit reader predict`.

Stages (each can be run alone)::

    python benchmarks/bench_squad_reader.py retrieve --out /tmp/qa13_reader      # only if no results JSON is given
    python benchmarks/bench_squad_reader.py train --out /tmp/qa13_reader [--train_results R.json] [--questions N]
    python benchmarks/bench_squad_reader.py predict --out /tmp/qa13_reader [--dev_results R.json] [--questions N]

Why a ``retrieve`` stage: the reader needs DPR results JSON (``[{question, answers, ctxs}]``). When no fine-tuned
retriever's results are at hand, this stage ranks the whole collection with the base bundled MiniLM (densekit's
encode + exact search) and marks ``has_answer`` with DPR's token-sequence matcher (densekit.qa.answers).
``predict`` also runs the reader given only each question's own (gold) paragraph: its reading-comprehension
ceiling, apart from retrieval. Every densekit command runs under ``nice -n 10`` and prints its wall time.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

from densekit_runs import bundled_model, run_densekit

SQUAD = Path(os.environ.get("SQUAD_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "squad"))


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def read_qa(split: str) -> list[tuple[str, list[str]]]:
    with open(SQUAD / "qa" / f"{split}.csv", encoding="utf-8", newline="") as handle:
        return [(row[0], json.loads(row[1])) for row in csv.reader(handle, delimiter="\t")]


def split_queries(split: str) -> list[dict]:
    """queries.jsonl entries of one split, in qa/<split>.csv order (qrels/<split>.tsv lists their ids in order)."""
    with open(SQUAD / "qrels" / f"{split}.tsv", encoding="utf-8") as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle][1:]
    by_id = {q["_id"]: q for q in read_jsonl(SQUAD / "queries.jsonl")}
    return [{**by_id[qid], "gold": pid} for qid, pid, _ in rows]


def retrieve(out: Path, splits: list[str], depth: int, limit: int | None) -> None:
    """Results JSON per split with the base MiniLM: encode corpus and questions, exact top-``depth`` search."""
    import torch
    from transformers import AutoTokenizer

    from densekit.evaluation.encoding import encode_texts
    from densekit.modeling.retriever import BiEncoderRetriever
    from densekit.qa.answers import AnswerMatcher, prepare_text
    from densekit.search.topk import exact_search

    torch.set_num_threads(2)
    corpus = read_jsonl(SQUAD / "corpus.jsonl")
    retriever = BiEncoderRetriever.from_pretrained(bundled_model())
    tokenizer = AutoTokenizer.from_pretrained(bundled_model())
    started = time.time()
    prepared = [prepare_text(p["text"]) for p in corpus]  # DPR's passage-side tokenisation, once per passage
    passages = encode_texts(retriever, tokenizer, [retriever.format_passage(p["text"], title=p["title"])
                                                    for p in corpus], kind="passage", batch_size=64)
    for split in splits:
        qa = read_qa(split)
        queries = split_queries(split)
        assert [q["text"] for q in queries] == [q for q, _ in qa], f"{split}: queries.jsonl order differs from qa"
        if limit:
            qa, queries = qa[:limit], queries[:limit]
        embs = encode_texts(retriever, tokenizer, [retriever.format_query(q["text"]) for q in queries],
                            kind="query", batch_size=128)
        scores, indices = exact_search(embs, passages, depth)
        results, hits = [], {1: 0, 5: 0, 20: 0, 100: 0}
        for (question, answers), query, row_scores, row_indices in zip(qa, queries, scores, indices):
            ctxs, matcher = [], AnswerMatcher(answers)
            for score, index in zip(row_scores.tolist(), row_indices.tolist()):
                passage = corpus[index]
                ctxs.append({"id": passage["_id"], "title": passage["title"], "text": passage["text"],
                             "score": score, "has_answer": matcher.match_prepared(prepared[index])})
            for k in hits:
                hits[k] += any(c["has_answer"] for c in ctxs[:k])
            results.append({"question": question, "answers": answers, "gold_passage": query["gold"], "ctxs": ctxs})
        out.mkdir(parents=True, exist_ok=True)
        with open(out / f"{split}_results.json", "w", encoding="utf-8") as handle:
            json.dump(results, handle, ensure_ascii=False)
        accuracy = {f"top{k}": round(v / len(results), 4) for k, v in hits.items()}
        print(f"{split}: {len(results)} questions, answer-match accuracy {accuracy}, "
              f"{time.time() - started:.0f}s so far")


def subset(source: Path, target: Path, count: int | None, seed: int, depth: int) -> Path:
    """``count`` questions of a results file drawn at random (seeded), so a subset spans every article (the whole
    file, shuffled, when ``count`` is None), each with its first ``depth`` passages (a smaller file to cache)."""
    import random

    with open(source, encoding="utf-8") as handle:
        entries = json.load(handle)
    random.Random(seed).shuffle(entries)
    entries = [{**entry, "ctxs": entry["ctxs"][:depth]} for entry in (entries[:count] if count else entries)]
    with open(target, "w", encoding="utf-8") as handle:
        json.dump(entries, handle, ensure_ascii=False)
    return target


def gold_results(out: Path, dev_results: Path) -> Path:
    """The dev questions of ``dev_results`` with their gold paragraph as the only passage (the reader's ceiling)."""
    with open(SQUAD / "retriever" / "dev.json", encoding="utf-8") as handle:
        gold = {entry["question"]: entry["positive_ctxs"][0] for entry in json.load(handle)}
    with open(dev_results, encoding="utf-8") as handle:
        entries = json.load(handle)
    rows = []
    for entry in entries:
        ctx = gold[entry["question"]]
        rows.append({"question": entry["question"], "answers": entry["answers"],
                     "ctxs": [{"id": ctx["passage_id"], "title": ctx["title"], "text": ctx["text"], "score": 0.0,
                               "has_answer": True}]})
    path = out / f"gold_{dev_results.name}"
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(rows, handle, ensure_ascii=False)
    return path


def checkpoint_before(folder: Path, deadline: float) -> Path:
    """The newest complete ``checkpoint-N`` of ``folder`` written before ``deadline`` (a time.time() value)."""
    done = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file()
            and (p / "trainer_state.json").stat().st_mtime <= deadline]
    if not done:
        raise SystemExit(f"no checkpoint in {folder} was written within the time limit")
    return max(done, key=lambda p: int(p.name.split("-")[1]))


def stage_train(out: Path, rest: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench_squad_reader.py train")
    parser.add_argument("--train_results", default=None, help="default: /tmp/qa13/train_results.json if present, "
                                                              "else <out>/train_results.json (retrieve stage)")
    parser.add_argument("--questions", type=int, default=None, help="random subset of the train questions")
    parser.add_argument("--sequence_length", type=int, default=256)
    parser.add_argument("--passages_per_question", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--max_steps", type=int, default=-1)
    parser.add_argument("--lr_scheduler_type", default="constant_with_warmup",
                        help="constant_with_warmup (DPR's static schedule, stopped on the clock) or linear (decays to "
                             "0 at --max_steps: set it to what fits the time limit)")
    parser.add_argument("--warmup_steps", type=float, default=10)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (2x faster on CPUs with AVX512-BF16/AMX)")
    parser.add_argument("--save_steps", type=int, default=25)
    parser.add_argument("--time_limit_minutes", type=float, default=45.0,
                        help="stop training then and keep the newest checkpoint (constant learning rate, as DPR)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(rest)
    source = Path(args.train_results) if args.train_results else (
        Path("/tmp/qa13/train_results.json") if Path("/tmp/qa13/train_results.json").is_file()
        else out / "train_results.json")
    train_file = subset(source, out / "train_subset.json", args.questions, args.seed, depth=30)
    started = time.time()
    ran = run_densekit([
        "reader", "train", "--model_name_or_path", bundled_model(), "--train_file", str(train_file),
        "--gold_passages", str(SQUAD / "retriever" / "train.json"), "--output_dir", str(out / "reader"),
        "--sequence_length", str(args.sequence_length), "--passages_per_question", str(args.passages_per_question),
        "--per_device_train_batch_size", str(args.batch_size), "--learning_rate", str(args.learning_rate),
        "--lr_scheduler_type", args.lr_scheduler_type, "--warmup_steps", str(args.warmup_steps),
        "--num_train_epochs", "1", *(["--bf16", "true"] if args.bf16 else []),
        "--max_steps", str(args.max_steps), "--logging_steps", "5", "--save_steps", str(args.save_steps),
        "--save_total_limit", "3", "--seed", str(args.seed), "--disable_tqdm", "true",
        "--dataloader_num_workers", "0"], log=out / "train.log", time_limit=args.time_limit_minutes * 60, nice=10)
    reader = out / "reader"
    if ran.stopped:
        reader = checkpoint_before(out / "reader", started + args.time_limit_minutes * 60)
    (out / "reader_path.txt").write_text(str(reader), encoding="utf-8")
    print(f"train: {source} ({args.questions or 'all'} questions), {ran.seconds / 60:.1f} min; reader: {reader}")


def stage_predict(out: Path, rest: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench_squad_reader.py predict")
    parser.add_argument("--dev_results", default=None, help="default: /tmp/qa13/dev_results.json if present, "
                                                            "else <out>/dev_results.json (retrieve stage)")
    parser.add_argument("--questions", type=int, default=None, help="random subset of the dev questions")
    parser.add_argument("--top_docs", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--reader", default=None, help="default: the reader the train stage left (reader_path.txt)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(rest)
    source = Path(args.dev_results) if args.dev_results else (
        Path("/tmp/qa13/dev_results.json") if Path("/tmp/qa13/dev_results.json").is_file()
        else out / "dev_results.json")
    reader = args.reader or (out / "reader_path.txt").read_text(encoding="utf-8").strip()
    dev_file = subset(source, out / "dev_subset.json", args.questions, args.seed, depth=max(args.top_docs))
    common = ["--model_name_or_path", reader, "--reader_cache_dir", str(out / "reader_cache"), "--dev_batch_size", "20"]
    gold_run = run_densekit(["reader", "predict", *common, "--dev_file", str(gold_results(out, dev_file)),
                             "--output_dir", str(out / "pred_gold"), "--eval_top_docs", "1",
                             "--passages_per_question_predict", "1"], log=out / "predict_gold.log", nice=10)
    retrieved_run = run_densekit(["reader", "predict", *common, "--dev_file", str(dev_file), "--output_dir",
                                  str(out / "pred_retrieved"), "--eval_top_docs", *map(str, args.top_docs),
                                  "--passages_per_question_predict", str(max(args.top_docs))],
                                 log=out / "predict.log", nice=10)
    gold = json.loads((out / "pred_gold" / "metrics.json").read_text())["aggregate"]
    retrieved = json.loads((out / "pred_retrieved" / "metrics.json").read_text())["aggregate"]
    with open(dev_file, encoding="utf-8") as handle:
        entries = json.load(handle)
    print(f"dev results: {source}; {len(entries)} questions")
    print("| passages given | answer in them (DPR match) | Exact Match | F1 |")
    print("| --- | ---: | ---: | ---: |")
    for k in sorted(args.top_docs):
        hit = sum(any(c["has_answer"] for c in e["ctxs"][:k]) for e in entries) / len(entries)
        print(f"| top-{k} retrieved | {hit:.4f} | {retrieved[f'EM@{k}']:.4f} | {retrieved[f'F1@{k}']:.4f} |")
    print(f"| gold paragraph | 1.0000 | {gold['EM@1']:.4f} | {gold['F1@1']:.4f} |")
    print(f"predict wall: retrieved {retrieved_run.seconds / 60:.1f} min, gold {gold_run.seconds / 60:.1f} min")



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["retrieve", "train", "predict"])
    parser.add_argument("--out", default="/tmp/qa13_reader", help="working folder")
    parser.add_argument("--splits", nargs="+", default=["train", "dev"], help="retrieve: splits to rank")
    parser.add_argument("--depth", type=int, default=100, help="retrieve: passages kept per question")
    parser.add_argument("--limit", type=int, default=None, help="retrieve: first N questions per split")
    args, rest = parser.parse_known_args()
    out = Path(args.out)
    if args.stage == "retrieve":
        retrieve(out, args.splits, args.depth, args.limit)
    else:
        {"train": stage_train, "predict": stage_predict}[args.stage](out, rest)


if __name__ == "__main__":
    main()
