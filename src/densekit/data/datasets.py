"""Retrieval datasets: a query with a group of judged documents per example.

:class:`MultiLevelDataset` keeps graded labels (0, 1, 2, ...) beside the documents; it is the dataset
evaluation reads (all judged queries, the whole corpus) and the one that ranks annotated groups for IR
metrics during training.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from densekit.data.data_args import DataArguments
from densekit.data.qrels import (
    MaterializedQRelConfig,
    as_config_list,
    materialize,
    merge_qrels,
    require_files,
    unique_paths,
)
from densekit.data.sampling import example_rng, fill_to
from densekit.data.formats import check_qrels
from densekit.data.store import TextStore, load_store

FormatQuery = Callable[..., str]
FormatPassage = Callable[..., str]


def _default_format_query(text: str, dataset: Optional[str] = None) -> str:
    return text


def _default_format_passage(text: str, title: Optional[str] = None, dataset: Optional[str] = None) -> str:
    return f"{title} {text}".strip() if title else text


class MultiLevelDataset(torch.utils.data.Dataset):
    """Queries with groups of ``group_size`` judged documents and their (graded) labels.

    Args:
        data_args: group_size, passage_selection_strategy, seed, dataset_name.
        qrel_config: one :class:`MaterializedQRelConfig` or a list; each is filtered its own way, then
            merged (a document judged by several keeps its highest score).
        format_query / format_passage: the model's formatting (``model.format_query``...).
        data_args_overrides: attributes of ``data_args`` to replace for this dataset only (for example
            ``{"group_size": 100, "passage_selection_strategy": "most_relevant"}`` for an eval set).
        num_proc: accepted for API compatibility with Trove; reading here is single-pass and needs none.
        store_cache_dir: where Arrow copies of corpus/query files are kept between runs (optional).

    A query with more than ``group_size`` documents keeps the ``most_relevant`` ones (ties by doc id) or
    a ``random`` sample (seeded by seed, epoch and index); one with fewer repeats its documents in order
    until the group is full, as Trove does.
    """

    def __init__(
        self,
        data_args: DataArguments,
        qrel_config: MaterializedQRelConfig | Sequence[MaterializedQRelConfig],
        format_query: Optional[FormatQuery] = None,
        format_passage: Optional[FormatPassage] = None,
        data_args_overrides: Optional[dict[str, Any]] = None,
        num_proc: Optional[int] = None,
        store_cache_dir: Optional[str | Path] = None,
    ) -> None:
        self.data_args = dataclasses.replace(data_args, **(data_args_overrides or {}))
        self.format_query = format_query or _default_format_query
        self.format_passage = format_passage or _default_format_passage
        self.configs = as_config_list(qrel_config)
        materialized = [materialize(c) for c in self.configs]
        self.corpus_paths = unique_paths([m.corpus_paths for m in materialized])
        self.query_paths = unique_paths([m.query_paths for m in materialized])
        require_files(self.corpus_paths, "corpus")
        require_files(self.query_paths, "queries")
        self.corpus: TextStore = load_store(self.corpus_paths, kind="corpus", cache_dir=store_cache_dir)
        self.queries: TextStore = load_store(self.query_paths, kind="queries", cache_dir=store_cache_dir)
        self.qrels: dict[str, dict[str, float]] = merge_qrels([m.qrels for m in materialized])
        self.corpus_cache = next((m.corpus_cache for m in materialized if m.corpus_cache), None)
        self.query_cache = next((m.query_cache for m in materialized if m.query_cache), None)
        self._check_ids(materialized)
        # Queries in query-file order, restricted to those with judgments: deterministic and reproducible.
        self.query_ids: list[str] = [qid for qid in self.queries.ids if qid in self.qrels]
        self.epoch = 0

    def _check_ids(self, materialized) -> None:
        """Every judged query and document must exist; checked for all ids at once, before any encoding."""
        for part in materialized:
            check_qrels(part.qrels, self.queries, self.corpus, path=part.qrel_paths[0] if part.qrel_paths else None)

    def set_epoch(self, epoch: int) -> None:
        """Change the epoch so that ``random`` selection draws new groups (called by the trainer)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.query_ids)

    def formatted_query(self, qid: str) -> str:
        i = self.queries.index_of(qid)
        return self.format_query(self.queries.text_at(i), dataset=self.data_args.dataset_name)

    def formatted_passage(self, doc_index: int) -> str:
        title = self.corpus.title_at(doc_index) or None
        return self.format_passage(self.corpus.text_at(doc_index), title=title, dataset=self.data_args.dataset_name)

    def select_group(self, index: int) -> list[tuple[str, float]]:
        """The (doc id, label) pairs of example ``index``: selected, then repeated up to group_size."""
        qid = self.query_ids[index]
        ranked = sorted(self.qrels[qid].items(), key=lambda kv: (-kv[1], kv[0]))
        size = self.data_args.group_size
        if len(ranked) > size:
            if self.data_args.passage_selection_strategy == "random":
                rng = example_rng(self.data_args.sampling_seed, self.epoch, index)
                picks = np.sort(rng.choice(len(ranked), size=size, replace=False))
                ranked = [ranked[i] for i in picks]
            else:
                ranked = ranked[:size]
        return fill_to(ranked, size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        qid = self.query_ids[index]
        group = self.select_group(index)
        doc_indices = self.corpus.indices_of([d for d, _ in group])
        return {
            "query_id": qid,
            "query": self.formatted_query(qid),
            "passage": [self.formatted_passage(int(i)) for i in doc_indices],
            "label": [float(s) for _, s in group],
        }
