"""Training groups for data with positives only: each query's positive plus random corpus negatives.

A BEIR train split judges positives only, so :class:`~densekit.data.datasets.BinaryDataset` (which draws
negatives from judged negatives) has nothing to draw from; ``densekit train`` uses this dataset then.
Every query with at least one judgment ``>= min_score`` is an example; its group is one positive
followed by ``group_size - 1`` negatives drawn at random from the corpus (never one of the query's
positives). All draws use :func:`densekit.data.sampling.example_rng` seeded by (seed, epoch, index), so a group is
reproducible and changes from epoch to epoch (the trainer calls :meth:`set_epoch`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import torch

from densekit.data.data_args import DataArguments
from densekit.data.formats import check_qrels
from densekit.data.qrels import MaterializedQRelConfig, materialize, require_files
from densekit.data.sampling import example_rng
from densekit.data.store import TextStore, load_store
from densekit.errors import InputError


class PositivesWithNegativesDataset(torch.utils.data.Dataset):
    """``{"query", "passage": [positive, negatives...], "label": [1, 0, ...]}`` per judged query.

    Args:
        data_args: ``group_size`` (1 positive + ``group_size - 1`` negatives), ``sampling_seed``.
        positive_config: where queries, corpus and positive judgments are (filter with ``min_score``).
        format_query / format_passage: the model's formatting (``model.format_query`` ...).
    """

    def __init__(self, data_args: DataArguments, positive_config: MaterializedQRelConfig,
                 format_query: Optional[Callable[..., str]] = None,
                 format_passage: Optional[Callable[..., str]] = None,
                 store_cache_dir: Optional[str | Path] = None) -> None:
        self.data_args = data_args
        self.format_query = format_query or (lambda text, dataset=None: text)
        self.format_passage = format_passage or (lambda text, title=None, dataset=None:
                                                 f"{title} {text}".strip() if title else text)
        positives = materialize(positive_config)
        require_files(positives.corpus_paths, "corpus")
        require_files(positives.query_paths, "queries")
        self.corpus: TextStore = load_store(positives.corpus_paths, kind="corpus", cache_dir=store_cache_dir)
        self.queries: TextStore = load_store(positives.query_paths, kind="queries", cache_dir=store_cache_dir)
        check_qrels(positives.qrels, self.queries, self.corpus,
                    path=positives.qrel_paths[0] if positives.qrel_paths else None)
        self.positives = {q: sorted(docs) for q, docs in positives.qrels.items() if docs}
        self.query_ids = [qid for qid in self.queries.ids if qid in self.positives]
        if not self.query_ids:
            raise InputError("no query has a positive judgment.", path=positives.qrel_paths[0] if
                             positives.qrel_paths else None, fix="check the qrel file and min_score.")
        most_positives = max(len(docs) for docs in self.positives.values())
        if len(self.corpus) - most_positives < data_args.group_size - 1:
            raise InputError(f"the corpus has {len(self.corpus)} documents; a query with {most_positives} positives "
                             f"leaves fewer than group_size - 1 = {data_args.group_size - 1} negatives.",
                             fix="lower --group_size.")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw new positives/negatives for the next epoch (called by RetrievalTrainer)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.query_ids)

    def group(self, index: int) -> list[str]:
        """Document ids of example ``index`` in this epoch: a positive, then ``group_size - 1`` random negatives."""
        qid = self.query_ids[index]
        rng = example_rng(self.data_args.sampling_seed, self.epoch, index)
        positives = self.positives[qid]
        excluded = set(positives)
        chosen = [positives[int(rng.integers(len(positives)))]]
        while len(chosen) < self.data_args.group_size:
            doc = self.corpus.id_at(int(rng.integers(len(self.corpus))))
            if doc not in excluded:  # never a positive, never twice (the size check makes this terminate)
                chosen.append(doc)
                excluded.add(doc)
        return chosen

    def __getitem__(self, index: int) -> dict[str, Any]:
        qid = self.query_ids[index]
        docs = self.group(index)
        indices = self.corpus.indices_of(docs)
        name = self.data_args.dataset_name
        query = self.format_query(self.queries.text_at(self.queries.index_of(qid)), dataset=name)
        passages = [self.format_passage(self.corpus.text_at(int(i)), title=self.corpus.title_at(int(i)) or None,
                                        dataset=name) for i in indices]
        return {"query_id": qid, "query": query, "passage": passages,
                "label": [1.0] + [0.0] * (len(passages) - 1)}


__all__ = ["PositivesWithNegativesDataset"]
