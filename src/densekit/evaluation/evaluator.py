"""RetrievalEvaluator: encode a corpus and its queries, search exactly, score the run, write the results.

The evaluator only wires the pieces together; each is usable alone: :mod:`densekit.evaluation.encoding`
(batched encoding), :mod:`densekit.evaluation.embeddings` (the shared cache),
:mod:`densekit.search` (streaming top-k), :mod:`densekit.evaluation.metrics` (trec_eval-exact measures)
and :mod:`densekit.evaluation.output` (run, metrics and summary files).
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

from densekit import distributed
from densekit.cache import EmbeddingCache
from densekit.data.collator import RetrievalCollator
from densekit.data.data_args import DataArguments
from densekit.data.datasets import MultiLevelDataset
from densekit.errors import ConfigError
from densekit.evaluation.embeddings import Embedder
from densekit.evaluation.encoding import encode_texts
from densekit.evaluation.evaluation_args import EvaluationArguments
from densekit.evaluation.metrics import MetricResults, compute_metrics
from densekit.evaluation.output import SearchResult, check_reporters, report_metrics, write_evaluation
from densekit.modeling.encoding_spec import KINDS, EncodingSpec, encoding_spec, model_key, weights_by_kind
from densekit.search.topk import ExactSearcher

logger = logging.getLogger(__name__)

SearchOutput = SearchResult  # the name earlier versions returned from search()


@dataclass
class _Side:
    """One kind's share of a call on this rank: its spec, ids/texts (this rank's rows) and cache name."""

    spec: EncodingSpec
    ids: list[str]
    texts: list[str]
    rows: range
    name: Optional[str]


def data_fingerprints(dataset: MultiLevelDataset) -> dict[str, str]:
    """What a report names the data by: SHA-256 of each corpus and query file, and a hash of the judgments
    evaluated (after the dataset's own filters), so two reports are comparable at a glance."""
    from densekit.cache import fingerprint, sha256_file

    out = {f"corpus {Path(p).name}": sha256_file(p) for p in getattr(dataset, "corpus_paths", [])}
    out.update({f"queries {Path(p).name}": sha256_file(p) for p in getattr(dataset, "query_paths", [])})
    out["judgments"] = fingerprint(sorted((q, sorted(d.items())) for q, d in dataset.qrels.items()))
    return out


class RetrievalEvaluator:
    """Evaluate a bi-encoder on a :class:`MultiLevelDataset` (all judged queries against its whole corpus).

    Args mirror ``transformers.Trainer``: ``args`` (:class:`EvaluationArguments`), ``model``
    (a :class:`densekit.BiEncoderRetriever`), ``tokenizer``, ``data_collator``
    (:class:`densekit.RetrievalCollator`, gives max lengths and eos handling) and ``eval_dataset``.

    How texts become vectors is resolved per call (:meth:`encoding_specs`): the token budgets of the
    dataset being evaluated (its DataArguments, else the collator's, else the model's limit), the
    collator's eos handling, the model's formatting and pooling. Cache keys are made from that spec and the
    model's weights at the moment of use, so evaluating, training a step and evaluating again re-encodes.
    The model is put on the evaluation device in eval mode for each call and left as it was found.
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
        self._collator = data_collator.bind_model(model) if data_collator is not None else None
        check_reporters(args.report_to)
        self.device = torch.device(args.device) if hasattr(args, "device") else torch.device("cpu")
        cache = None
        if args.encoding_cache_dir:
            cache = EmbeddingCache(args.encoding_cache_dir, block_size=args.encoding_block_size)
        self.embedder = Embedder(self._encode, model, cache=cache, block_size=args.encoding_block_size)

    @property
    def data_collator(self) -> RetrievalCollator:
        """The collator given, else one made from the dataset's DataArguments (lengths, eos)."""
        if self._collator is None:
            data_args = self.eval_dataset.data_args if self.eval_dataset is not None else DataArguments()
            self._collator = RetrievalCollator(data_args=data_args, tokenizer=self.tokenizer,
                                               append_eos=getattr(self.model, "append_eos_token", False))
            self._collator.bind_model(self.model)
        return self._collator

    # ----------------------------------------------------------------------------------- encoding
    def encoding_specs(self, dataset: Optional[MultiLevelDataset] = None) -> dict[str, EncodingSpec]:
        """How queries and passages of ``dataset`` become vectors.

        Token budgets: the evaluator's own dataset uses the collator's DataArguments (the collator was
        made for it); another dataset passed to a method brings its own DataArguments. Either way an unset
        budget falls back to the other, then to the model's own limit. Eos handling is the collator's,
        formatting and pooling the model's.
        """
        collator = self.data_collator
        own = dataset is None or dataset is self.eval_dataset
        sources = [collator.data_args, getattr(dataset, "data_args", None)]
        if not own:
            sources.reverse()
        specs = {}
        for kind in KINDS:
            name = f"{kind}_max_len"
            explicit = next((getattr(s, name) for s in sources if getattr(s, name, None)), None)
            specs[kind] = encoding_spec(self.model, self.tokenizer, kind, max_len=explicit,
                                        append_eos=collator.append_eos)
        return specs

    def _encode(self, texts, spec: EncodingSpec) -> np.ndarray:
        return encode_texts(
            self.model, self.tokenizer, texts, kind=spec.kind, batch_size=self.args.per_device_eval_batch_size,
            max_len=spec.max_len, append_eos=spec.append_eos, device=self.device,
            show_progress=not self.args.disable_tqdm,
            desc="encoding queries" if spec.kind == "query" else "encoding passages",
        )

    @contextlib.contextmanager
    def _model_in_eval(self) -> Iterator[None]:
        """The model on the evaluation device in eval mode for one call; its device and mode come back."""
        model = self.model
        was_training = model.training
        before = next(iter(model.parameters()), None)
        before = before.device if before is not None else None
        if before is not None and before != self.device:
            model.to(self.device)
        model.eval()
        try:
            yield
        finally:
            model.train(was_training)
            if before is not None and before != self.device:
                model.to(before)

    def _dataset(self, dataset: Optional[MultiLevelDataset]) -> MultiLevelDataset:
        dataset = dataset if dataset is not None else self.eval_dataset
        if dataset is None:
            raise ConfigError("No dataset: pass eval_dataset to RetrievalEvaluator or to this method.")
        if self.eval_dataset is None:
            self.eval_dataset = dataset  # its DataArguments give the default collator's lengths
        return dataset

    def _sides(self, dataset: MultiLevelDataset) -> dict[str, _Side]:
        """This rank's contiguous shard of the queries and of the corpus, with specs and cache names.

        ``encode()`` and ``search()`` both use it, so under torchrun the entries ``encode()`` writes are
        the ones ``search()`` reads. Entry names carry the shard (``name.rank0of2``), keys the content.
        """
        world, me = distributed.world_size(), distributed.rank()
        specs = self.encoding_specs(dataset)
        sides = {}
        for kind, ids, name in (("query", list(dataset.query_ids), dataset.query_cache),
                                ("passage", list(dataset.corpus.ids), dataset.corpus_cache)):
            rows = distributed.shard_range(len(ids), me, world)
            if kind == "query":
                texts = [dataset.formatted_query(q) for q in ids[rows.start:rows.stop]]
            else:
                texts = [dataset.formatted_passage(i) for i in rows]
            shard_name = name if (not name or world == 1) else f"{name}.rank{me}of{world}"
            sides[kind] = _Side(specs[kind], ids[rows.start:rows.stop], texts, rows, shard_name)
        return sides

    def describe_encoding(self, dataset: Optional[MultiLevelDataset] = None) -> dict[str, Any]:
        """The resolved encoding as reports print it: budgets, eos, pooling, and the model keys now."""
        specs = self.encoding_specs(self._dataset(dataset))
        weights = self.embedder.weights()
        out: dict[str, Any] = {}
        for kind, spec in specs.items():
            for field_name, value in spec.describe().items():
                out[f"{kind}_{field_name}"] = value
            if weights is not None:
                out[f"{kind}_model_key"] = model_key(spec, self.model, weights)
        return out

    def encode(self, eval_dataset: Optional[MultiLevelDataset] = None) -> dict[str, int]:
        """Encode the dataset's judged queries and its corpus into ``encoding_cache_dir`` and stop there.

        Under ``torch.distributed`` each rank encodes its shard, into the entries :meth:`search` reuses.
        """
        if not self.args.encoding_cache_dir:
            raise ConfigError("encode() keeps embeddings in the cache: set EvaluationArguments.encoding_cache_dir.")
        dataset = self._dataset(eval_dataset)
        start = self.embedder.rows_encoded
        with self._model_in_eval():
            weights = self.embedder.weights()
            for side in self._sides(dataset).values():
                if side.ids:
                    self.embedder.embed(side.ids, side.texts, side.spec, name=side.name, weights=weights)
        encoded = self.embedder.rows_encoded - start
        print(f"densekit encode: {len(dataset.query_ids)} queries, {len(dataset.corpus)} documents; "
              f"{encoded} texts encoded, the rest reused from {self.args.encoding_cache_dir}")
        distributed.barrier()
        return {"queries": len(dataset.query_ids), "documents": len(dataset.corpus), "encoded": encoded}

    # ------------------------------------------------------------------------------------- search
    def search(self, eval_dataset: Optional[MultiLevelDataset] = None, topk: Optional[int] = None) -> SearchResult:
        """Exact top-k documents for every judged query of the dataset.

        One search path for everything (:class:`densekit.search.ExactSearcher`, the kernel the benchmarks
        measure): corpus blocks are scored as they are encoded or read from the cache, so memory stays
        bounded by a block. Under ``torch.distributed`` (torchrun, accelerate, deepspeed launchers) each
        rank encodes its contiguous shard of the queries and of the corpus; the query vectors are
        all-gathered as tensors, each rank searches its corpus shard, and the partial top-k lists are merged
        exactly (ties to the lower corpus index, as in one process). With ``broadcast_output=False`` only
        rank 0 receives the result (other ranks get ``None``). Cache entries are per shard, so they are
        reused by runs with the same number of processes.
        """
        dataset = self._dataset(eval_dataset)
        topk = topk or self.args.search_topk
        query_ids, doc_ids = list(dataset.query_ids), list(dataset.corpus.ids)
        with self._model_in_eval():
            weights = self.embedder.weights()
            sides = self._sides(dataset)
            queries, corpus = sides["query"], sides["passage"]
            query_embs = None
            if queries.ids:  # more ranks than queries leaves some ranks without a query shard
                query_embs = np.asarray(self.embedder.embed(queries.ids, queries.texts, queries.spec,
                                                            name=queries.name, weights=weights), dtype=np.float32)
            if distributed.is_distributed():
                query_embs = distributed.all_gather_rows(query_embs)
            if query_embs is None:
                raise ConfigError("the dataset has no judged query to search for.")
            with ExactSearcher(query_embs, topk, device=self.device) as searcher:
                if corpus.ids:
                    def add(start: int, block: np.ndarray) -> None:
                        searcher.add(corpus.rows.start + start, block)

                    if self.args.precompute_corpus_embs:
                        add(0, self.embedder.embed(corpus.ids, corpus.texts, corpus.spec, name=corpus.name,
                                                   weights=weights))
                    else:
                        self.embedder.embed(corpus.ids, corpus.texts, corpus.spec, name=corpus.name,
                                            on_block=add, weights=weights)
                scores, indices = searcher.results()
        if distributed.is_distributed():
            merged = distributed.merge_topk_across_ranks(scores, indices, topk, to_all=self.args.broadcast_output)
            if merged is None:
                return None
            scores, indices = merged
        return SearchResult(query_ids=query_ids, doc_ids=doc_ids, scores=scores, indices=indices)

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
                                       "processes": distributed.world_size(),
                                       **self.describe_encoding(dataset)},
                             qrels=dataset.qrels, fingerprints=data_fingerprints(dataset))
            report_metrics(self.args.report_to, metrics.aggregate)
        distributed.barrier()
        return dict(metrics.aggregate)

    # ------------------------------------------------------------------------------------- mining
    def mine_hard_negatives(self, eval_dataset: Optional[MultiLevelDataset] = None) -> dict[str, Path]:
        """Mine hard negatives for every judged query with the selection rules of ``args`` and write them.

        The rules (:mod:`densekit.evaluation.mining`): a rank window (``mine_skip_top`` r, ``mine_max_rank``
        R), ``no_annot_in_mined_hn`` (every document the dataset annotates for a query, after the dataset's own
        filters, is left out), ``mine_max_score``, and margins to the query's judged positives
        (``mine_relative_margin``, ``mine_absolute_margin``, measured from the ``mine_positive_reference``
        score of its positives, computed exactly even when they rank deeper than the search); then the first
        k (``mine_num_negatives``, default ``search_topk``) survivors, or a seeded sample of k
        (``mine_sample``). Without these options mining keeps the ``search_topk`` best documents as before.

        Writes into ``output_dir``: ``mined_qrels.tsv`` (query-id, corpus-id, similarity, best first; what
        training reads), ``mined_run.trec`` (the same negatives with their rank in the search and score),
        ``mining.json`` (settings, counts per rule, fingerprint of model, data and settings), with
        ``merge_mined_qrels`` ``merged_qrels.tsv`` (every judgment with its label plus each mined document not
        judged for that query as 0), and with ``mine_audit`` the audit ``audit.md`` + ``audit.png``.
        Returns the paths by role (``mined``, ``run``, ``info``, ``merged``, ``report``, ``plot``).
        """
        from densekit.data.formats import read_qrels
        from densekit.evaluation.audit import write_audit
        from densekit.evaluation.mining import (MiningSettings, mine_pool, pool_fingerprint, score_positives,
                                                settings_record, write_mined)

        began = time.perf_counter()
        dataset = self._dataset(eval_dataset)
        settings = MiningSettings.from_args(self.args)
        audit_qrels = {str(p): read_qrels(p) for p in self.args.audit_qrels or []}  # read now: errors come early
        max_judged = max((len(dataset.qrels.get(q, {})) for q in dataset.query_ids), default=0)
        depth = min(settings.depth(max_judged), len(dataset.corpus))
        result = self.search(dataset, topk=depth)
        output_dir = Path(self.args.output_dir)
        if result is None or distributed.rank() != 0:
            distributed.barrier()
            return {"mined": output_dir / "mined_qrels.tsv",
                    **({"merged": output_dir / "merged_qrels.tsv"} if self.args.merge_mined_qrels else {})}
        progress = not self.args.disable_tqdm
        pool = mine_pool(result, dataset, score_positives(self, dataset, result), settings, progress=progress)
        specs = self.encoding_specs(dataset)
        weights = self.embedder.weights() or weights_by_kind(self.model)
        keys = {kind: model_key(spec, self.model, weights) for kind, spec in specs.items()}
        record = settings_record(settings, depth)
        fingerprint, parts = pool_fingerprint(keys, dataset, record)
        info = {"fingerprint": fingerprint, "fingerprint_parts": parts, "settings": record,
                "audit_qrels": [str(p) for p in self.args.audit_qrels or []],
                "encoding": self.describe_encoding(dataset)}
        paths = write_mined(output_dir, pool, tag=self.args.run_tag, merge_qrels=self.args.merge_mined_qrels,
                            info=info)
        if self.args.mine_audit:
            paths.update(write_audit(output_dir, pool, dataset, info, audit_qrels=audit_qrels,
                                     sample=self.args.mine_audit_sample, seed=settings.seed))
        counts = pool.counts()
        dropped = ", ".join(f"{k.removeprefix('dropped_')} {v}" for k, v in counts.items()
                            if k.startswith("dropped_") and v)
        print(f"densekit mine: {counts['kept']} negatives for {counts['queries']} queries "
              f"({counts['kept'] / max(1, counts['queries']):.1f} per query, {counts['queries_with_fewer_than_k']} "
              f"with fewer than {settings.num_negatives}) from {counts['candidates']} candidates"
              f"{'; dropped: ' + dropped if dropped else ''} -> {paths['mined']} "
              f"in {time.perf_counter() - began:.1f}s", flush=True)
        distributed.barrier()
        return paths
