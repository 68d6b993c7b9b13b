"""RetrievalEvaluator: encode a corpus and its queries, search exactly, score the run, write the results.

The evaluator only wires the pieces together; each is usable alone: :mod:`densekit.evaluation.encoding`
(batched encoding), :mod:`densekit.evaluation.embeddings` (the shared cache),
:mod:`densekit.search` (streaming top-k), :mod:`densekit.evaluation.metrics` (trec_eval-exact measures)
and :mod:`densekit.evaluation.output` (run, metrics and summary files).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from densekit.cache import EmbeddingCache, fingerprint
from densekit.data.collator import RetrievalCollator
from densekit.data.data_args import DataArguments
from densekit.data.datasets import MultiLevelDataset
from densekit.data.formats import write_qrels
from densekit.errors import ConfigError
from densekit.evaluation.embeddings import Embedder, model_fingerprint, tokenizer_fingerprint, weights_fingerprint
from densekit.evaluation.encoding import encode_texts
from densekit.evaluation.evaluation_args import EvaluationArguments
from densekit.evaluation.metrics import MetricResults, compute_metrics
from densekit.evaluation.output import check_reporters, report_metrics, write_evaluation
from densekit import distributed
from densekit.search.topk import FastResultHeapq, add_corpus_block, merge_topk

logger = logging.getLogger(__name__)


@dataclass
class SearchOutput:
    """Top-k lists of a query set: rows follow ``query_ids``; ``indices`` point into ``doc_ids`` (-1 = none)."""

    query_ids: list[str]
    doc_ids: list[str]
    scores: np.ndarray
    indices: np.ndarray


class RetrievalEvaluator:
    """Evaluate a bi-encoder on a :class:`MultiLevelDataset` (all judged queries against its whole corpus).

    Args mirror ``transformers.Trainer``: ``args`` (:class:`EvaluationArguments`), ``model``
    (a :class:`densekit.BiEncoderRetriever`), ``tokenizer``, ``data_collator``
    (:class:`densekit.RetrievalCollator`, gives max lengths and eos handling) and ``eval_dataset``.
    """

    def __init__(
        self,
        args: EvaluationArguments,
        model: torch.nn.Module,
        tokenizer: Any = None,
        data_collator: Optional[RetrievalCollator] = None,
        eval_dataset: Optional[MultiLevelDataset] = None,
        processing_class: Any = None,
    ) -> None:
        self.args = args
        self.model = model
        self.tokenizer = tokenizer if tokenizer is not None else processing_class
        if self.tokenizer is None:
            raise ConfigError("RetrievalEvaluator needs the model's tokenizer (tokenizer=...).")
        if eval_dataset is not None and not isinstance(eval_dataset, MultiLevelDataset):
            raise ConfigError(
                f"eval_dataset must be a MultiLevelDataset, got {type(eval_dataset).__name__}: evaluation "
                "ranks the whole corpus for every judged query (a BinaryDataset only knows sampled groups)."
            )
        self.eval_dataset = eval_dataset
        self._collator = data_collator
        check_reporters(args.report_to)
        self.device = torch.device(args.device) if hasattr(args, "device") else torch.device("cpu")
        self._embedder: Optional[Embedder] = None

    @property
    def data_collator(self) -> RetrievalCollator:
        """The collator given, else one made from the dataset's DataArguments (lengths, eos)."""
        if self._collator is None:
            data_args = self.eval_dataset.data_args if self.eval_dataset is not None else DataArguments()
            self._collator = RetrievalCollator(data_args=data_args, tokenizer=self.tokenizer,
                                               append_eos=getattr(self.model, "append_eos_token", False))
        return self._collator

    # ----------------------------------------------------------------------------------- encoding
    def _max_len(self, kind: str) -> Optional[int]:
        """The token budget of queries or passages: DataArguments' value, else the model's own limit."""
        name = "query_max_len" if kind == "query" else "passage_max_len"
        explicit = getattr(self.data_collator.data_args, name, None)
        limit = getattr(self.model, "max_length", None)
        config = getattr(getattr(self.model, "encoder", None), "config", None)
        positions = getattr(config, "max_position_embeddings", None)
        if explicit and positions and explicit > positions:
            raise ConfigError(f"{name}={explicit} is longer than the model accepts ({positions} positions); "
                              f"use at most {positions}.")
        return explicit or limit

    def _encode(self, texts, kind: str) -> np.ndarray:
        return encode_texts(
            self.model, self.tokenizer, texts, kind=kind, batch_size=self.args.per_device_eval_batch_size,
            max_len=self._max_len(kind), append_eos=self.data_collator.append_eos, device=self.device,
            show_progress=not self.args.disable_tqdm, desc="encoding queries" if kind == "query" else "encoding passages",
        )

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self.model.to(self.device).eval()
            cache = None
            if self.args.encoding_cache_dir:
                cache = EmbeddingCache(self.args.encoding_cache_dir, block_size=self.args.encoding_block_size)
            weights = weights_fingerprint(self.model)
            append_eos = bool(self.data_collator.append_eos)
            tokens = tokenizer_fingerprint(self.tokenizer)
            keys = {kind: fingerprint(tokens, model_fingerprint(self.model, self._max_len(kind), append_eos,
                                                                weights=weights))
                    for kind in ("query", "passage")}
            self._embedder = Embedder(self._encode, keys, cache=cache, block_size=self.args.encoding_block_size)
        return self._embedder

    def _dataset(self, dataset: Optional[MultiLevelDataset]) -> MultiLevelDataset:
        dataset = dataset if dataset is not None else self.eval_dataset
        if dataset is None:
            raise ConfigError("No dataset: pass eval_dataset to RetrievalEvaluator or to this method.")
        if self.eval_dataset is None:
            self.eval_dataset = dataset  # its DataArguments give the default collator's lengths
        return dataset

    def _query_texts(self, dataset: MultiLevelDataset) -> list[str]:
        return [dataset.formatted_query(q) for q in dataset.query_ids]

    def _corpus_texts(self, dataset: MultiLevelDataset) -> list[str]:
        return [dataset.formatted_passage(i) for i in range(len(dataset.corpus))]

    def encode(self, eval_dataset: Optional[MultiLevelDataset] = None) -> dict[str, int]:
        """Encode the dataset's judged queries and its corpus into ``encoding_cache_dir`` and stop there."""
        if not self.args.encoding_cache_dir:
            raise ConfigError("encode() keeps embeddings in the cache: set EvaluationArguments.encoding_cache_dir.")
        dataset = self._dataset(eval_dataset)
        start = self.embedder.rows_encoded
        self.embedder.embed(dataset.query_ids, self._query_texts(dataset), "query", name=dataset.query_cache)
        self.embedder.embed(list(dataset.corpus.ids), self._corpus_texts(dataset), "passage",
                            name=dataset.corpus_cache)
        encoded = self.embedder.rows_encoded - start
        print(f"densekit encode: {len(dataset.query_ids)} queries, {len(dataset.corpus)} documents; "
              f"{encoded} texts encoded, the rest reused from {self.args.encoding_cache_dir}")
        return {"queries": len(dataset.query_ids), "documents": len(dataset.corpus), "encoded": encoded}

    # ------------------------------------------------------------------------------------- search
    def search(self, eval_dataset: Optional[MultiLevelDataset] = None, topk: Optional[int] = None) -> SearchOutput:
        """Exact top-k documents for every judged query of the dataset.

        Under ``torch.distributed`` (torchrun, accelerate, deepspeed launchers) each rank encodes its
        contiguous shard of the queries and of the corpus; the query vectors are all-gathered, each rank
        searches its corpus shard, and the partial top-k lists are merged exactly (ties to the lower
        corpus index, as in one process). With ``broadcast_output=False`` only rank 0 receives the result
        (other ranks get ``None``). Cache entries are per shard, so they are reused by runs with the same
        number of processes.
        """
        dataset = self._dataset(eval_dataset)
        topk = topk or self.args.search_topk
        world, me = distributed.world_size(), distributed.rank()
        query_ids, query_texts = list(dataset.query_ids), self._query_texts(dataset)
        doc_ids, corpus_texts = list(dataset.corpus.ids), self._corpus_texts(dataset)
        q_rows = distributed.shard_range(len(query_ids), me, world)
        c_rows = distributed.shard_range(len(doc_ids), me, world)
        shard_name = (lambda name: name and (name if world == 1 else f"{name}.rank{me}of{world}"))
        query_embs = None
        if len(q_rows):  # more ranks than queries leaves some ranks without a query shard
            query_embs = np.asarray(self.embedder.embed(
                query_ids[q_rows.start:q_rows.stop], query_texts[q_rows.start:q_rows.stop], "query",
                name=shard_name(dataset.query_cache)), dtype=np.float32)
        if world > 1:
            query_embs = np.concatenate([p for p in distributed.all_gather_objects(query_embs) if p is not None])
        queries = torch.tensor(query_embs, device=self.device)  # a copy: cache blocks are read-only
        heap = FastResultHeapq(topk=topk, device=self.device)
        chunk = self.args.per_device_matmul_batch_size

        def score_block(start: int, block: np.ndarray) -> None:
            add_corpus_block(heap, queries, block, c_rows.start + start, chunk)

        shard_ids, shard_texts = doc_ids[c_rows.start:c_rows.stop], corpus_texts[c_rows.start:c_rows.stop]
        name = shard_name(dataset.corpus_cache)
        if not shard_ids:
            scores = torch.full((len(query_ids), topk), float("-inf"))
            indices = torch.full((len(query_ids), topk), -1, dtype=torch.int64)
        else:
            if self.args.precompute_corpus_embs:
                score_block(0, self.embedder.embed(shard_ids, shard_texts, "passage", name=name))
            else:
                self.embedder.embed(shard_ids, shard_texts, "passage", name=name, on_block=score_block)
            scores, indices = heap.results()
        scores, indices = scores.cpu().numpy(), indices.cpu().numpy()
        if world > 1:
            parts = distributed.all_gather_objects((scores, indices), to_all=self.args.broadcast_output)
            if parts is None:
                return None
            scores, indices = merge_topk(parts, topk=topk)
        return SearchOutput(query_ids=query_ids, doc_ids=doc_ids, scores=scores, indices=indices)

    # --------------------------------------------------------------------------------- evaluation
    def evaluate(self, eval_dataset: Optional[MultiLevelDataset] = None) -> dict[str, float]:
        """Search, score with ``args.measures``, write run.trec / metrics.json / report.md; return the aggregate.

        In distributed runs rank 0 writes the files; other ranks return the metrics too, or ``{}`` when
        ``broadcast_output=False``.
        """
        began = time.perf_counter()
        dataset = self._dataset(eval_dataset)
        result = self.search(dataset)
        if result is None:
            distributed.barrier()
            return {}
        metrics: MetricResults = compute_metrics(
            dataset.qrels, result.query_ids, result.indices, result.scores, result.doc_ids,
            measures=self.args.measures,
        )
        if distributed.rank() == 0:
            write_evaluation(Path(self.args.output_dir), result, metrics, tag=self.args.run_tag,
                             seconds=time.perf_counter() - began,
                             settings={"search_topk": self.args.search_topk, "num_queries": len(result.query_ids),
                                       "num_documents": len(result.doc_ids),
                                       "processes": distributed.world_size()})
            report_metrics(self.args.report_to, metrics.aggregate)
        distributed.barrier()
        return dict(metrics.aggregate)

    # ------------------------------------------------------------------------------------- mining
    def mine_hard_negatives(self, eval_dataset: Optional[MultiLevelDataset] = None) -> dict[str, Path]:
        """Retrieve ``search_topk`` documents per query and write them as a qrel file of similarity scores.

        With ``no_annot_in_mined_hn`` every document the dataset annotates for a query (after the dataset's
        own filters, so ``min_score=1`` lets annotated negatives through) is left out, and the search goes
        deep enough that each query still gets ``search_topk`` documents when the corpus allows.
        Writes ``output_dir/mined_qrels.tsv`` (query-id, corpus-id, similarity) and, with
        ``merge_mined_qrels``, ``output_dir/merged_qrels.tsv``: every judgment of the dataset with its
        label, plus each mined document not judged for that query with label 0, ready for training.
        """
        began = time.perf_counter()
        dataset = self._dataset(eval_dataset)
        k = self.args.search_topk
        depth = k
        if self.args.no_annot_in_mined_hn:
            depth = k + max((len(dataset.qrels.get(q, {})) for q in dataset.query_ids), default=0)
        result = self.search(dataset, topk=min(depth, len(dataset.corpus)))
        output_dir = Path(self.args.output_dir)
        paths = {"mined": output_dir / "mined_qrels.tsv"}
        if self.args.merge_mined_qrels:
            paths["merged"] = output_dir / "merged_qrels.tsv"
        if result is None or distributed.rank() != 0:
            distributed.barrier()
            return paths
        mined: dict[str, dict[str, float]] = {}
        for row, qid in enumerate(result.query_ids):
            annotated = dataset.qrels.get(qid, {}) if self.args.no_annot_in_mined_hn else {}
            docs: dict[str, float] = {}
            for index, score in zip(result.indices[row], result.scores[row]):
                if index < 0 or len(docs) == k:
                    break
                doc_id = result.doc_ids[index]
                if doc_id not in annotated:
                    docs[doc_id] = float(score)
            mined[qid] = docs
        write_qrels(paths["mined"], mined)
        if self.args.merge_mined_qrels:
            merged = {qid: dict(docs) for qid, docs in dataset.qrels.items()}
            for qid, docs in mined.items():
                target = merged.setdefault(qid, {})
                for doc_id in docs:
                    target.setdefault(doc_id, 0)
            write_qrels(paths["merged"], merged)
        count = sum(len(d) for d in mined.values())
        print(f"densekit mine: {count} documents for {len(mined)} queries "
              f"({count / max(1, len(mined)):.1f} per query) -> {paths['mined']} "
              f"in {time.perf_counter() - began:.1f}s", flush=True)
        distributed.barrier()
        return paths
