"""Integration: the bundled MiniLM on a slice of SciFact dev, densekit vs sentence-transformers + pytrec_eval."""
from __future__ import annotations

import json

import numpy as np
import pytest
import pytrec_eval

from densekit.cli.main import main

pytestmark = pytest.mark.integration


def write_slice(scifact, folder, extra_docs=150):
    """Dev qrels, their queries, the judged documents plus the first ``extra_docs`` others."""
    folder.mkdir()
    (folder / "qrels").mkdir()
    lines = (scifact / "qrels" / "dev.tsv").read_text(encoding="utf-8").splitlines()
    (folder / "qrels" / "dev.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    judged = {line.split("\t")[1] for line in lines[1:]}
    queries = {line.split("\t")[0] for line in lines[1:]}
    docs, extra = [], 0
    for line in (scifact / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
        doc = json.loads(line)
        if doc["_id"] in judged or extra < extra_docs:
            extra += doc["_id"] not in judged
            docs.append(doc)
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n", encoding="utf-8")
    kept = [line for line in (scifact / "queries.jsonl").read_text(encoding="utf-8").splitlines()
            if json.loads(line)["_id"] in queries]
    (folder / "queries.jsonl").write_text("\n".join(kept) + "\n", encoding="utf-8")
    return docs


def test_minilm_on_scifact_slice_matches_sentence_transformers(scifact_dir, minilm_dir, tmp_path):
    from sentence_transformers import SentenceTransformer, util

    docs = write_slice(scifact_dir, tmp_path / "slice")
    assert main(["evaluate", "--model_name_or_path", minilm_dir, "--dataset", str(tmp_path / "slice"),
                 "--split", "dev", "--output_dir", str(tmp_path / "out"), "--search_topk", "100",
                 "--measures", "ndcg_cut.10", "recall.100", "--disable_tqdm", "true"]) == 0
    ours = json.loads((tmp_path / "out" / "metrics.json").read_text())

    model = SentenceTransformer(minilm_dir, device="cpu")
    qrels: dict = {}
    for line in (tmp_path / "slice" / "qrels" / "dev.tsv").read_text().splitlines()[1:]:
        q, d, s = line.split("\t")
        qrels.setdefault(q, {})[d] = int(s)
    queries = {json.loads(x)["_id"]: json.loads(x)["text"] for x in
               (tmp_path / "slice" / "queries.jsonl").read_text().splitlines()}
    qids = [q for q in queries if q in qrels]
    q_emb = model.encode([queries[q] for q in qids], convert_to_tensor=True)
    d_emb = model.encode([(d["title"] + " " + d["text"]).strip() for d in docs], convert_to_tensor=True)
    hits = util.semantic_search(q_emb, d_emb, top_k=100)
    run = {q: {docs[h["corpus_id"]]["_id"]: float(h["score"]) for h in hs} for q, hs in zip(qids, hits)}
    theirs = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)

    assert ours["aggregate"]["nDCG@10"] == pytest.approx(np.mean([v["ndcg_cut_10"] for v in theirs.values()]), abs=2e-3)
    assert ours["aggregate"]["Recall@100"] == pytest.approx(np.mean([v["recall_100"] for v in theirs.values()]), abs=2e-3)
    assert ours["aggregate"]["nDCG@10"] > 0.5  # MiniLM is a real retriever on SciFact, not noise


def test_evaluate_then_mine_on_scifact_encodes_the_corpus_once(scifact_dir, minilm_dir, tmp_path):
    """Issue acceptance: the embedding cache is shared between evaluate and mine (same model, same files)."""
    from transformers import AutoTokenizer

    from densekit import (BiEncoderRetriever, DataArguments, EvaluationArguments, MaterializedQRelConfig,
                          ModelArguments, MultiLevelDataset, RetrievalEvaluator)

    model = BiEncoderRetriever.from_model_args(args=ModelArguments(model_name_or_path=minilm_dir))
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)

    def evaluator(split: str, out: str, **kw) -> RetrievalEvaluator:
        # 128-token passages (the model's own is 256): the test is about the shared cache, and shorter is faster
        dataset = MultiLevelDataset(DataArguments(passage_max_len=128), MaterializedQRelConfig(
            qrel_path=scifact_dir / "qrels" / f"{split}.tsv", corpus_path=scifact_dir / "corpus.jsonl",
            query_path=scifact_dir / "queries.jsonl", min_score=1), format_query=model.format_query,
            format_passage=model.format_passage)
        args = EvaluationArguments(output_dir=str(tmp_path / out), encoding_cache_dir=str(tmp_path / "cache"),
                                   disable_tqdm=True, **kw)
        return RetrievalEvaluator(args=args, model=model, tokenizer=tokenizer, eval_dataset=dataset)

    first = evaluator("dev", "eval", search_topk=100)
    metrics = first.evaluate()
    assert first.embedder.rows_encoded == 100 + 5183
    assert metrics["nDCG@10"] > 0.5
    second = evaluator("train", "mine", search_topk=20, no_annot_in_mined_hn=True)
    second.mine_hard_negatives()
    assert second.embedder.rows_encoded == 709  # the train queries; the corpus came from the cache
    mined = (tmp_path / "mine" / "mined_qrels.tsv").read_text().splitlines()
    assert len(mined) == 1 + 709 * 20
