"""Retrieval datasets: a query with a group of judged documents per example.

:class:`MultiLevelDataset` keeps graded labels (0, 1, 2, ...) beside the documents; it is the dataset
evaluation reads (all judged queries, the whole corpus) and the one that ranks annotated groups for IR
metrics during training. :class:`BinaryDataset` draws one positive and ``group_size - 1`` negatives per
query per step from two sets of configs (positives, negatives), fresh every epoch, for InfoNCE training.
"""
from __future__ import annotations

import dataclasses
import warnings
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
from densekit.errors import ConfigError, InputError

FormatQuery = Callable[..., str]
FormatPassage = Callable[..., str]


def _default_format_query(text: str, dataset: Optional[str] = None) -> str:
    return text


def _default_format_passage(text: str, title: Optional[str] = None, dataset: Optional[str] = None) -> str:
    return f"{title} {text}".strip() if title else text


def open_stores(dataset, parts, store_cache_dir) -> None:
    """Open the corpus and query stores that materialized configs name, and check every judged id.

    Sets ``corpus_paths``, ``query_paths``, ``corpus``, ``queries``, ``corpus_cache`` and ``query_cache``
    on ``dataset``; missing files and unknown ids fail here, before any encoding or training.
    """
    dataset.corpus_paths = unique_paths([m.corpus_paths for m in parts])
    dataset.query_paths = unique_paths([m.query_paths for m in parts])
    require_files(dataset.corpus_paths, "corpus")
    require_files(dataset.query_paths, "queries")
    dataset.corpus = load_store(dataset.corpus_paths, kind="corpus", cache_dir=store_cache_dir)
    dataset.queries = load_store(dataset.query_paths, kind="queries", cache_dir=store_cache_dir)
    for part in parts:
        check_qrels(part.qrels, dataset.queries, dataset.corpus,
                    path=part.qrel_paths[0] if part.qrel_paths else None)
    dataset.corpus_cache = next((m.corpus_cache for m in parts if m.corpus_cache), None)
    dataset.query_cache = next((m.query_cache for m in parts if m.query_cache), None)


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
        unknown = sorted(set(data_args_overrides or {}) - {f.name for f in dataclasses.fields(DataArguments)})
        if unknown:
            raise ConfigError(f"data_args_overrides names unknown DataArguments field(s) {unknown}; "
                              f"known: {', '.join(f.name for f in dataclasses.fields(DataArguments))}.")
        self.data_args = dataclasses.replace(data_args, **(data_args_overrides or {}))
        self.format_query = format_query or _default_format_query
        self.format_passage = format_passage or _default_format_passage
        self.configs = as_config_list(qrel_config)
        materialized = [materialize(c) for c in self.configs]
        self.corpus: TextStore
        self.queries: TextStore
        open_stores(self, materialized, store_cache_dir)
        self.qrels: dict[str, dict[str, float]] = merge_qrels([m.qrels for m in materialized])
        # Queries in query-file order, restricted to those with judgments: deterministic and reproducible.
        self.query_ids: list[str] = [qid for qid in self.queries.ids if qid in self.qrels]
        if not self.query_ids:
            files = [str(p) for m in materialized for p in m.qrel_paths]
            raise InputError(
                "no query has a judgment left after the configs' filters (min_score/max_score/filter_fn).",
                path=files[0] if files else None,
                fix="check qrel_path, the split, and the score filters of the MaterializedQRelConfig(s).")
        self.epoch = 0

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
            "passage_row": [int(i) for i in doc_indices],
        }


class BinaryDataset(torch.utils.data.Dataset):
    """One positive and ``group_size - 1`` negatives per query, drawn afresh every epoch (for InfoNCE).

    Args:
        data_args: group_size, sampling_seed, short_negatives, dataset_name.
        positive_configs / negative_configs: one :class:`MaterializedQRelConfig` or a list each; every
            config is filtered its own way, then the lists merge (a document judged by several configs keeps
            its highest score). Negatives may come from anything that materializes to judgments, e.g. mined
            documents with ``score_transform=0`` and ``max_per_query=30``. ``negative_configs=None``
            draws the negatives uniformly from the whole corpus instead (never one of the query's
            positives): what a BEIR train split, which judges positives only, needs.
        format_query / format_passage: the model's formatting (``model.format_query``...).
        store_cache_dir: where Arrow copies of corpus/query files are kept between runs (optional).
        num_positives: positives per group (default ``data_args.num_positives`` if that exists, else 1),
            for multi-positive InfoNCE on collections with many judged positives per query. A query with
            fewer positives uses all of them and fills its group with more negatives.

    Items have the same layout as :class:`MultiLevelDataset`'s: ``{"query_id", "query", "passage":
    [group_size str], "label": [1.0, 0.0, ...]}``, the positive(s) first, plus ``"passage_row"`` (the
    passages' corpus rows) and ``"positive_rows"`` (every judged positive row of the query), which the
    collator passes on so that the loss can leave in-batch false negatives out.

    Sampling: example ``index`` of epoch ``e`` draws with ``example_rng(sampling_seed, e, index)``: the
    positive uniformly among the query's positives (``num_positives`` of them without replacement), the
    negatives without replacement among its negatives, so the same (seed, epoch, index) always gives the
    same group, in any worker or process.

    Queries are those of the query file(s), in file order, that have at least one positive. Counted
    warnings report what is left out or filled: queries with negatives but no positive (skipped), queries
    with no negative at all while group_size > 1 (skipped), and queries with fewer than group_size - 1
    negatives: with ``short_negatives="sample_with_replacement"`` (default) such a query uses each of its
    negatives once and draws the rest with replacement; with ``"skip"`` it is left out. These counts and
    ``short_negatives`` concern judged negatives only: random corpus negatives (``negative_configs=None``)
    are never short nor repeated, so every query with a positive is kept. A document that is both positive
    and negative for a query counts as a positive only.

    Judgments are held as int64 row numbers into the memory-mapped corpus (offsets per query), not as
    dictionaries of strings, so 500,000 judgments cost a few megabytes once the dataset is built.
    """

    def __init__(
        self,
        data_args: DataArguments,
        positive_configs: MaterializedQRelConfig | Sequence[MaterializedQRelConfig],
        negative_configs: MaterializedQRelConfig | Sequence[MaterializedQRelConfig] | None,
        format_query: Optional[FormatQuery] = None,
        format_passage: Optional[FormatPassage] = None,
        store_cache_dir: Optional[str | Path] = None,
        num_positives: Optional[int] = None,
    ) -> None:
        self.data_args = data_args
        self.num_positives = _check_num_positives(
            num_positives if num_positives is not None else getattr(data_args, "num_positives", 1),
            data_args.group_size)
        self.format_query = format_query or _default_format_query
        self.format_passage = format_passage or _default_format_passage
        self.positive_configs = as_config_list(positive_configs)
        self.random_negatives = negative_configs is None
        self.negative_configs = [] if self.random_negatives else as_config_list(negative_configs)
        pos_parts = [materialize(c) for c in self.positive_configs]
        neg_parts = [materialize(c) for c in self.negative_configs]
        parts = pos_parts + neg_parts
        self.corpus: TextStore
        self.queries: TextStore
        open_stores(self, parts, store_cache_dir)
        positives = merge_qrels([m.qrels for m in pos_parts])
        negatives = merge_qrels([m.qrels for m in neg_parts])
        del pos_parts, neg_parts, parts
        self._build_index(positives, negatives)
        self.epoch = 0

    def _build_index(self, positives: dict[str, dict[str, float]], negatives: dict[str, dict[str, float]]) -> None:
        """Keep the usable queries and their documents as row numbers; warn (counted) about the rest."""
        group_size = self.data_args.group_size
        skip_short = self.data_args.short_negatives == "skip"
        # check_qrels has already made sure every judged query is in the query file(s)
        self.skipped = {"no_positive": sum(1 for q in negatives if not positives.get(q)),
                        "no_negative": 0, "short_negatives": 0}
        self.num_filled_with_replacement = 0
        query_ids: list[str] = []
        pos_ids: list[str] = []
        neg_ids: list[str] = []
        pos_counts: list[int] = []
        neg_counts: list[int] = []
        for qid in self.queries.ids:  # query-file order: deterministic whatever the qrel files' order
            pos = positives.get(qid)
            if not pos:
                continue
            neg = sorted(d for d in negatives.get(qid, {}) if d not in pos)
            wanted = group_size - min(self.num_positives, len(pos))
            if self.random_negatives:
                pass  # drawn from the corpus in group_rows, all distinct: never short, short_negatives moot
            elif wanted > 0 and not neg:
                self.skipped["no_negative"] += 1
                continue
            elif len(neg) < wanted:
                if skip_short:
                    self.skipped["short_negatives"] += 1
                    continue
                self.num_filled_with_replacement += 1
            query_ids.append(qid)
            pos_ids.extend(sorted(pos))
            neg_ids.extend(neg)
            pos_counts.append(len(pos))
            neg_counts.append(len(neg))
        self.query_ids = query_ids
        self._query_rows = self.queries.indices_of(query_ids) if query_ids else np.zeros(0, np.int64)
        self._pos_offsets = np.concatenate([[0], np.cumsum(pos_counts, dtype=np.int64)]).astype(np.int64)
        self._neg_offsets = np.concatenate([[0], np.cumsum(neg_counts, dtype=np.int64)]).astype(np.int64)
        self._pos_rows = self.corpus.indices_of(pos_ids) if pos_ids else np.zeros(0, np.int64)
        self._neg_rows = self.corpus.indices_of(neg_ids) if neg_ids else np.zeros(0, np.int64)
        wanted = group_size - 1
        self._warn_counts(wanted)
        most_positives = max(pos_counts, default=0)
        if self.random_negatives and len(self.corpus) - most_positives < wanted:
            raise ConfigError(f"the corpus has {len(self.corpus)} documents; a query with {most_positives} "
                              f"positives leaves fewer than group_size - 1 = {wanted} negatives to draw. "
                              "Fix: lower group_size.")
        if not query_ids:
            raise ConfigError(
                f"no query has a positive and the negatives group_size={self.data_args.group_size} needs "
                f"(queries without negatives: {self.skipped['no_negative']}, with too few: "
                f"{self.skipped['short_negatives']}, without positives: {self.skipped['no_positive']}). "
                "Fix: give negative_configs judgments below the positives' scores (for example mined "
                "negatives with score_transform=0), lower group_size, or use short_negatives="
                "'sample_with_replacement'.")

    def _warn_counts(self, wanted: int) -> None:
        notes = []
        if self.skipped["no_positive"]:
            notes.append(f"{self.skipped['no_positive']} query(ies) with negatives but no positive were skipped")
        if self.skipped["no_negative"]:
            notes.append(f"{self.skipped['no_negative']} query(ies) with a positive but no negative were skipped")
        if self.skipped["short_negatives"]:
            notes.append(f"{self.skipped['short_negatives']} query(ies) with fewer than {wanted} negatives were "
                         "skipped (short_negatives='skip')")
        if self.num_filled_with_replacement:
            notes.append(f"{self.num_filled_with_replacement} query(ies) have fewer than {wanted} negatives and "
                         "draw the rest with replacement (short_negatives='sample_with_replacement')")
        if notes:
            warnings.warn(f"BinaryDataset: {'; '.join(notes)}; {len(self.query_ids)} queries kept.", stacklevel=4)

    def set_epoch(self, epoch: int) -> None:
        """Change the epoch so that every example draws a new positive and new negatives (called by the trainer)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.query_ids)

    def positive_rows(self, index: int) -> np.ndarray:
        """Corpus rows of every judged positive of example ``index`` (what false-negative masking reads)."""
        return self._pos_rows[self._pos_offsets[index]:self._pos_offsets[index + 1]]

    def group_rows(self, index: int, epoch: Optional[int] = None) -> np.ndarray:
        """Corpus row numbers of example ``index`` in ``epoch`` (default: the current one): the positives,
        then the negatives. Rows only, no text: cheap enough for a batch sampler to read for every example."""
        if not 0 <= index < len(self.query_ids):
            raise IndexError(f"example {index} out of range 0..{len(self.query_ids) - 1}")
        rng = example_rng(self.data_args.sampling_seed, self.epoch if epoch is None else epoch, index)
        pos = self.positive_rows(index)
        neg = self._neg_rows[self._neg_offsets[index]:self._neg_offsets[index + 1]]
        if self.num_positives == 1:  # the single-positive draw, kept as it was so seeded groups stay the same
            positives = pos[[rng.integers(len(pos))]]
        else:
            positives = pos[np.sort(rng.choice(len(pos), size=min(self.num_positives, len(pos)), replace=False))]
        wanted = self.data_args.group_size - len(positives)
        if self.random_negatives:  # uniform over the corpus, never a positive, never twice
            excluded, drawn = set(pos.tolist()), []
            while len(drawn) < wanted:  # terminates: __init__ checked the corpus has enough documents
                row = int(rng.integers(len(self.corpus)))
                if row not in excluded:
                    drawn.append(row)
                    excluded.add(row)
            chosen = np.asarray(drawn, np.int64)
        elif wanted == 0:
            chosen = neg[:0]
        elif len(neg) >= wanted:
            chosen = neg[rng.choice(len(neg), size=wanted, replace=False)]
        else:  # every negative once, then the rest drawn with replacement
            chosen = np.concatenate([rng.permutation(neg), neg[rng.integers(0, len(neg), size=wanted - len(neg))]])
        return np.concatenate([positives, chosen]).astype(np.int64)

    def group_labels(self, index: int, epoch: Optional[int] = None) -> list[float]:
        """Labels of :meth:`group_rows`: 1.0 for each positive, then 0.0."""
        count = min(self.num_positives, int(self._pos_offsets[index + 1] - self._pos_offsets[index]))
        return [1.0] * count + [0.0] * (self.data_args.group_size - count)

    def select_group(self, index: int) -> list[tuple[str, float]]:
        """The (doc id, label) pairs of example ``index`` in this epoch (positives first)."""
        rows = self.group_rows(index)
        return [(self.corpus.id_at(int(r)), label) for r, label in zip(rows, self.group_labels(index))]

    def __getitem__(self, index: int) -> dict[str, Any]:
        qid = self.query_ids[index]
        rows = self.group_rows(index)
        name = self.data_args.dataset_name
        query = self.format_query(self.queries.text_at(int(self._query_rows[index])), dataset=name)
        passages = [self.format_passage(text, title=title or None, dataset=name)
                    for title, text in zip(self.corpus.titles(rows), self.corpus.texts(rows))]
        return {"query_id": qid, "query": query, "passage": passages, "label": self.group_labels(index),
                "passage_row": [int(r) for r in rows], "positive_rows": self.positive_rows(index).tolist()}


def _check_num_positives(value: Any, group_size: int) -> int:
    """``num_positives`` must leave a place in the group for each positive: 1 <= value <= group_size."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= group_size:
        raise ConfigError(f"num_positives must be an integer from 1 to group_size ({group_size}), got {value!r}.")
    return int(value)


class MultiSourceDataset(torch.utils.data.Dataset):
    """Several training datasets one after another, for batches drawn from one dataset at a time.

    Why: in-batch negatives from another collection are easy negatives (a medical query against a
    finance passage), and the corpus rows that false-negative masking compares mean nothing across
    corpora. So each batch must come from one source; :class:`~densekit.data.sampling.GroupBatchSampler`
    reads :attr:`sources` and makes such batches (``sampling``: ``"proportional"`` or ``"round_robin"``),
    and :class:`~densekit.RetrievalTrainer` uses it for this dataset.

    Index ``i`` is example ``i - start`` of the source whose index range holds it. ``set_epoch`` and
    ``group_rows`` are passed on to the sources. All sources must have the same ``group_size``.
    """

    SAMPLINGS = ("proportional", "round_robin")

    def __init__(self, datasets: Sequence[torch.utils.data.Dataset], sampling: str = "proportional") -> None:
        if not datasets:
            raise ConfigError("MultiSourceDataset needs at least one dataset.")
        if sampling not in self.SAMPLINGS:
            raise ConfigError(f"multi-dataset sampling {sampling!r} is unknown; "
                              f"use one of {', '.join(self.SAMPLINGS)}.")
        sizes = {getattr(getattr(d, "data_args", None), "group_size", None) for d in datasets}
        if len(sizes) != 1:
            raise ConfigError(f"the datasets have different group sizes {sorted(map(str, sizes))}; a batch "
                              "needs one group size. Build them with the same DataArguments.group_size.")
        self.datasets = list(datasets)
        self.sampling = sampling
        self.data_args = getattr(self.datasets[0], "data_args", None)
        self.starts = np.concatenate([[0], np.cumsum([len(d) for d in self.datasets])]).astype(np.int64)
        self.epoch = 0

    @property
    def sources(self) -> list[range]:
        """The index range of every source, in order."""
        return [range(int(a), int(b)) for a, b in zip(self.starts[:-1], self.starts[1:])]

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """``(source, index in that source)`` of global ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"example {index} out of range 0..{len(self) - 1}")
        source = int(np.searchsorted(self.starts, index, side="right")) - 1
        return source, int(index - self.starts[source])

    def set_epoch(self, epoch: int) -> None:
        """Tell every source the epoch (new seeded groups each epoch)."""
        self.epoch = int(epoch)
        for dataset in self.datasets:
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)

    def group_rows(self, index: int, epoch: Optional[int] = None) -> np.ndarray:
        """The corpus rows of example ``index``'s group (rows of its own source's corpus)."""
        source, local = self.locate(index)
        dataset = self.datasets[source]
        if hasattr(dataset, "group_rows"):
            return dataset.group_rows(local, epoch)
        return np.asarray(dataset[local]["passage_row"], dtype=np.int64)

    def __getitem__(self, index: int) -> dict[str, Any]:
        source, local = self.locate(index)
        return self.datasets[source][local]
