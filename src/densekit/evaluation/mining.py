"""Hard-negative selection: which retrieved documents of a query become its negatives, and the files that say so.

Why a rule set and not "the top k": the documents a model ranks highest for a query are often relevant but
unjudged (false negatives), and training against them teaches the model to push relevant documents away.
The rules here are the usual remedies, applied to each query's ranked candidates from the exact search:

* a rank window: skip the top ``skip_top`` (r) ranks and look no deeper than ``max_rank`` (R);
* ``exclude_judged``: leave out every document judged for the query (``no_annot_in_mined_hn``);
* ``max_score``: drop a candidate scoring above an absolute value;
* ``relative_margin`` (NV-Retriever's TopK-PercPos, 0.95 there): drop a candidate scoring above
  ``relative_margin * reference``, where ``reference`` is a score of the query's judged positives;
* ``absolute_margin`` (TopK-MarginPos): drop a candidate scoring above ``reference - absolute_margin``;
* then keep the first ``num_negatives`` (k) survivors in rank order, or, with ``sample``, a seeded uniform
  sample of k of them (seeded per query, so the pool does not depend on query order or process count).

The reference of a query with several positives is, by default, the score of its *weakest* positive
(``positive_reference="min"``). Why: a training step pairs the query with any one of its positives, and a
negative must be less similar than the positive it is paired with; only the minimum guarantees that for every
pairing. It is also the cautious choice against false negatives: a candidate within 95% of the weakest known
relevant document is as close to the query as a document already judged relevant. ``mean`` and ``max`` drop
fewer candidates. With one positive all three agree (NV-Retriever's setting). A query without a positive
(only judged-0 documents) has no reference, and the margin rules do not apply to it. Positives are the
judgments with a label > 0, as trec_eval counts relevance. The relative margin assumes a positive reference
score (cosine or dot product of a relevant document); with a reference <= 0, ``margin * reference`` lies above
the reference and the rule drops what scores above about the reference itself.

Note on corpora whose queries have many broad judgments (NFCorpus: a median of 18 and up to 1363 positives
per training query), the weakest positive can score like a random document, so ``min`` empties many pools;
the audit shows it (queries without negative), and ``mean`` or an absolute ``max_score`` are the looser choices.

Every candidate ends with one status: ``kept``, ``unused`` (passed every rule, but not among the k taken), or
dropped by the FIRST rule in :data:`DROP_RULES` order that applies. :func:`select_negatives` is the pure
selection over one query's arrays (tests drive it with hand-made scores); :func:`mine_pool` runs it over a
search result; :func:`write_mined` writes ``mined_qrels.tsv`` (for training, read back by
``MaterializedQRelConfig``), ``mined_run.trec`` (each kept negative with its original rank and score) and
``mining.json`` (settings, counts per rule, fingerprint).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection, Mapping, Optional, Sequence

import numpy as np

from densekit.errors import ConfigError
from densekit.files import atomic_write

if TYPE_CHECKING:  # imported for annotations only: the evaluator imports this module
    from densekit.data.datasets import MultiLevelDataset
    from densekit.evaluation.output import SearchResult

#: Status of each candidate; ``PADDING`` marks a missing candidate (the corpus was shorter than the depth).
PADDING, KEPT, UNUSED, SKIP_TOP, MAX_RANK, JUDGED, MAX_SCORE, RELATIVE_MARGIN, ABSOLUTE_MARGIN = range(-1, 8)
STATUS_NAMES = {KEPT: "kept", UNUSED: "unused", SKIP_TOP: "skip_top", MAX_RANK: "max_rank", JUDGED: "judged",
                MAX_SCORE: "max_score", RELATIVE_MARGIN: "relative_margin", ABSOLUTE_MARGIN: "absolute_margin"}
#: The drop rules, in the order they are tried (a candidate is counted under the first that applies).
DROP_RULES = ("skip_top", "max_rank", "judged", "max_score", "relative_margin", "absolute_margin")
REFERENCES = ("min", "mean", "max")
MINED_QRELS, MINED_RUN, MINING_JSON = "mined_qrels.tsv", "mined_run.trec", "mining.json"


@dataclass(frozen=True)
class MiningSettings:
    """The selection rules of one mining run (see the module docstring); invalid values are a ConfigError.

    ``max_rank=None`` is the backward-compatible window: ranks up to ``skip_top + num_negatives``, plus the
    most documents judged for any query when ``exclude_judged`` (so excluding them does not shrink the pool).
    """

    num_negatives: int
    skip_top: int = 0
    max_rank: Optional[int] = None
    sample: bool = False
    seed: int = 0
    relative_margin: Optional[float] = None
    absolute_margin: Optional[float] = None
    max_score: Optional[float] = None
    positive_reference: str = "min"
    exclude_judged: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.num_negatives, bool) or self.num_negatives < 1:
            raise ConfigError(f"--mine_num_negatives (k) must be >= 1, got {self.num_negatives}.")
        if self.skip_top < 0:
            raise ConfigError(f"--mine_skip_top must be >= 0 (ranks skipped at the top), got {self.skip_top}.")
        if self.max_rank is not None and self.skip_top >= self.max_rank:
            raise ConfigError(f"--mine_skip_top {self.skip_top} >= the deepest rank {self.max_rank} leaves an empty "
                              "window: lower --mine_skip_top or raise --mine_max_rank (or --search_topk, the "
                              "depth when --mine_num_negatives is set).")
        if self.relative_margin is not None and not (0 < self.relative_margin <= 1):
            raise ConfigError(f"--mine_relative_margin must be in (0, 1] (0.95 drops candidates scoring above 95% "
                              f"of the positive's score), got {self.relative_margin}.")
        if self.absolute_margin is not None and not (math.isfinite(self.absolute_margin)
                                                     and self.absolute_margin >= 0):
            raise ConfigError(f"--mine_absolute_margin must be a finite number >= 0 (drop candidates scoring above "
                              f"the positive's score minus it), got {self.absolute_margin}.")
        if self.max_score is not None and not math.isfinite(self.max_score):
            raise ConfigError(f"--mine_max_score must be a finite number, got {self.max_score}.")
        if self.positive_reference not in REFERENCES:
            raise ConfigError(f"--mine_positive_reference must be one of {', '.join(REFERENCES)}, "
                              f"got {self.positive_reference!r}.")
        if self.sample and self.max_rank is None:
            raise ConfigError("--mine_sample true draws k negatives from a rank window deeper than k: set "
                              "--mine_max_rank, or --mine_num_negatives with a deeper --search_topk.")

    @classmethod
    def from_args(cls, args: Any) -> "MiningSettings":
        """Settings from :class:`~densekit.evaluation.evaluation_args.EvaluationArguments` mining fields.

        ``k`` is ``mine_num_negatives``, else ``search_topk`` (what mining kept before these options).
        ``R`` is ``mine_max_rank``; else ``search_topk`` when ``mine_num_negatives`` is set (search depth and
        k then differ); else the backward-compatible window (``max_rank=None``).
        """
        max_rank = args.mine_max_rank
        if max_rank is None and args.mine_num_negatives is not None:
            max_rank = args.search_topk
        k = args.mine_num_negatives if args.mine_num_negatives is not None else args.search_topk
        return cls(num_negatives=k, skip_top=args.mine_skip_top,
                   max_rank=max_rank, sample=args.mine_sample, seed=args.mine_seed,
                   relative_margin=args.mine_relative_margin, absolute_margin=args.mine_absolute_margin,
                   max_score=args.mine_max_score, positive_reference=args.mine_positive_reference,
                   exclude_judged=args.no_annot_in_mined_hn)

    def depth(self, max_judged: int = 0) -> int:
        """How many documents to retrieve per query: R, or the backward-compatible window's depth."""
        if self.max_rank is not None:
            return self.max_rank
        return self.skip_top + self.num_negatives + (max_judged if self.exclude_judged else 0)

    def reference(self, positive_scores: Sequence[float]) -> Optional[float]:
        """The reference positive score the margins are measured from (None without a positive)."""
        if len(positive_scores) == 0:
            return None
        values = np.asarray(positive_scores, dtype=np.float64)
        return float({"min": values.min, "mean": values.mean, "max": values.max}[self.positive_reference]())


def query_rng(seed: int, key: str) -> np.random.Generator:
    """A generator private to one query: the same sample whatever the query order or process count."""
    digest = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng([int(seed), digest])


def select_negatives(candidates: Sequence[Any], scores: Sequence[float], ranks: Sequence[int],
                     positive_scores: Sequence[float], judged: Collection[Any], settings: MiningSettings,
                     key: str = "") -> np.ndarray:
    """The status (:data:`STATUS_NAMES` codes) of each of one query's candidates.

    Args:
        candidates: document ids (or corpus rows) retrieved for the query.
        scores, ranks: their scores and 1-based ranks in the search's ranking (same length).
        positive_scores: the scores of the query's judged positives under the same model.
        judged: every id judged for the query; left out when ``settings.exclude_judged``.
        key: the query id, which seeds ``sample``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    ranks = np.asarray(ranks, dtype=np.int64)
    if not (len(candidates) == scores.shape[0] == ranks.shape[0]):
        raise ConfigError(f"{len(candidates)} candidates, {scores.shape[0]} scores and {ranks.shape[0]} ranks: "
                          "give one score and one rank per candidate.")
    status = np.full(scores.shape[0], UNUSED, dtype=np.int8)

    def drop(code: int, mask: np.ndarray) -> None:
        status[mask & (status == UNUSED)] = code

    drop(SKIP_TOP, ranks <= settings.skip_top)
    if settings.max_rank is not None:
        drop(MAX_RANK, ranks > settings.max_rank)
    if settings.exclude_judged and len(judged):
        drop(JUDGED, np.isin(np.asarray(candidates), np.asarray(list(judged))))
    if settings.max_score is not None:
        drop(MAX_SCORE, scores > settings.max_score)
    reference = settings.reference(positive_scores)
    if reference is not None and settings.relative_margin is not None:
        drop(RELATIVE_MARGIN, scores > settings.relative_margin * reference)
    if reference is not None and settings.absolute_margin is not None:
        drop(ABSOLUTE_MARGIN, scores > reference - settings.absolute_margin)
    survivors = np.flatnonzero(status == UNUSED)
    survivors = survivors[np.argsort(ranks[survivors], kind="stable")]
    k = settings.num_negatives
    if settings.sample and survivors.size > k:
        chosen = survivors[np.sort(query_rng(settings.seed, key).choice(survivors.size, size=k, replace=False))]
    else:
        chosen = survivors[:k]
    status[chosen] = KEPT
    return status


@dataclass
class Pool:
    """A mined pool: the search's candidates of each query with their status, and the positives' scores.

    Rows follow ``query_ids``; ``indices`` point into ``doc_ids`` (-1 = padding), ``scores`` are the search's,
    a candidate's rank is its column + 1. ``positives[qid]`` maps each judged positive to its score and its rank
    in the search (None when it lies deeper than the search went).
    """

    query_ids: list[str]
    doc_ids: Sequence[str]
    indices: np.ndarray
    scores: np.ndarray
    status: np.ndarray
    positives: dict[str, dict[str, tuple[float, Optional[int]]]]
    settings: MiningSettings
    judged: dict[str, dict[str, float]] = field(default_factory=dict)

    def ranks(self) -> np.ndarray:
        return np.broadcast_to(np.arange(1, self.indices.shape[1] + 1), self.indices.shape)

    def kept(self) -> dict[str, list[tuple[str, int, float]]]:
        """Each query's kept negatives as (doc id, rank, score), best first; every query has an entry."""
        out: dict[str, list[tuple[str, int, float]]] = {}
        for row, qid in enumerate(self.query_ids):
            cols = np.flatnonzero(self.status[row] == KEPT)
            out[qid] = [(self.doc_ids[int(self.indices[row, c])], int(c) + 1, float(self.scores[row, c]))
                        for c in cols]
        return out

    def counts(self) -> dict[str, int]:
        """Candidates, kept, unused and dropped per rule; queries short of k, without a negative or positive."""
        valid = self.status != PADDING
        kept_per_query = (self.status == KEPT).sum(axis=1)
        positives = [p for p in self.positives.values()]
        out = {"queries": len(self.query_ids), "candidates": int(valid.sum()),
               "kept": int(kept_per_query.sum()), "unused": int((self.status == UNUSED).sum())}
        out["dropped"] = out["candidates"] - out["kept"] - out["unused"]
        for code, name in STATUS_NAMES.items():
            if name in DROP_RULES:
                out[f"dropped_{name}"] = int((self.status == code).sum())
        out["queries_with_fewer_than_k"] = int((kept_per_query < self.settings.num_negatives).sum())
        out["queries_without_negative"] = int((kept_per_query == 0).sum())
        out["queries_without_positive"] = sum(1 for p in positives if not p)
        out["positives"] = sum(len(p) for p in positives)
        out["positives_retrieved"] = sum(1 for p in positives for _, rank in p.values() if rank is not None)
        return out


def positive_ids(qrels: Mapping[str, Mapping[str, float]]) -> dict[str, list[str]]:
    """Each query's judged positives (label > 0, as trec_eval counts relevance)."""
    return {qid: [d for d, s in docs.items() if s > 0] for qid, docs in qrels.items()}


def mine_pool(result: "SearchResult", dataset: "MultiLevelDataset",
              positive_scores: Mapping[str, Mapping[str, float]], settings: MiningSettings,
              progress: bool = False) -> Pool:
    """Run :func:`select_negatives` over every query of a search result (corpus rows stand in for ids)."""
    from tqdm.auto import tqdm

    indices = np.asarray(result.indices)
    scores = np.asarray(result.scores)
    status = np.full(indices.shape, PADDING, dtype=np.int8)
    ranks = np.arange(1, indices.shape[1] + 1)
    positives: dict[str, dict[str, tuple[float, Optional[int]]]] = {}
    for row, qid in enumerate(tqdm(result.query_ids, desc="selecting negatives", disable=not progress)):
        valid = indices[row] >= 0
        judged = dataset.corpus.indices_of(list(dataset.qrels.get(qid, {}))) if settings.exclude_judged else []
        pos = positive_scores.get(qid, {})
        status[row, valid] = select_negatives(indices[row, valid], scores[row, valid], ranks[valid],
                                              list(pos.values()), judged, settings, key=qid)
        pos_rows = dataset.corpus.indices_of(list(pos)) if pos else np.empty(0, dtype=np.int64)
        found = {int(indices[row, c]): int(c) + 1 for c in np.flatnonzero(np.isin(indices[row], pos_rows))}
        positives[qid] = {d: (float(s), found.get(int(r))) for (d, s), r in zip(pos.items(), pos_rows)}
    return Pool(query_ids=list(result.query_ids), doc_ids=result.doc_ids, indices=indices, scores=scores,
                status=status, positives=positives, settings=settings, judged=dataset.qrels)


def score_positives(evaluator: Any, dataset: "MultiLevelDataset", result: "SearchResult") -> dict[str, dict[str, float]]:
    """Each query's judged positives with their scores under the evaluator's model and specs.

    A positive the search retrieved keeps the search's score; the others (deeper than the search went) are
    scored exactly: query vector . passage vector, as the search scores. With an embedding cache and one
    process the vectors are read back from the entries the search just used (the same vectors); otherwise
    the mined queries and the missing positives are encoded (not cached) under the same specs.
    """
    from densekit import distributed
    from densekit.evaluation.embeddings import Embedder

    wanted = positive_ids({q: dataset.qrels.get(q, {}) for q in result.query_ids})
    out: dict[str, dict[str, float]] = {}
    missing: list[tuple[int, str, int]] = []  # (result row, doc id, corpus row)
    for row, qid in enumerate(result.query_ids):
        docs = wanted.get(qid, [])
        out[qid] = {}
        if not docs:
            continue
        rows = dataset.corpus.indices_of(docs)
        hits = np.flatnonzero(np.isin(result.indices[row], rows))  # only the positives the search retrieved
        retrieved = dict(zip(result.indices[row, hits].tolist(), result.scores[row, hits].tolist()))
        for doc, corpus_row in zip(docs, rows.tolist()):
            if corpus_row in retrieved:
                out[qid][doc] = float(retrieved[corpus_row])
            else:
                out[qid][doc] = math.nan
                missing.append((row, doc, corpus_row))
    if not missing:
        return out
    with evaluator._model_in_eval():
        specs = evaluator.encoding_specs(dataset)
        if evaluator.embedder.cache is not None and distributed.world_size() == 1:
            weights = evaluator.embedder.weights()
            sides = evaluator._sides(dataset)
            query_vecs, doc_vecs = (evaluator.embedder.embed(s.ids, s.texts, s.spec, name=s.name, weights=weights)
                                    for s in (sides["query"], sides["passage"]))
            query_rows = {q: i for i, q in enumerate(sides["query"].ids)}
            doc_rows = {r: r for _, _, r in missing}
        else:
            plain = Embedder(evaluator._encode, evaluator.model)
            rows_needed = sorted({r for r, _, _ in missing})
            qids = [result.query_ids[r] for r in rows_needed]
            query_vecs = plain.embed(qids, [dataset.formatted_query(q) for q in qids], specs["query"])
            query_rows = {q: i for i, q in enumerate(qids)}
            corpus_rows = sorted({r for _, _, r in missing})
            doc_vecs = plain.embed([dataset.corpus.id_at(r) for r in corpus_rows],
                                   [dataset.formatted_passage(r) for r in corpus_rows], specs["passage"])
            doc_rows = {r: i for i, r in enumerate(corpus_rows)}
    q_index = np.array([query_rows[result.query_ids[r]] for r, _, _ in missing])
    d_index = np.array([doc_rows[c] for _, _, c in missing])
    q = np.asarray(query_vecs[np.sort(np.unique(q_index))], dtype=np.float32)  # only the rows needed from a mmap
    q_pos = np.searchsorted(np.sort(np.unique(q_index)), q_index)
    d_unique = np.sort(np.unique(d_index))
    d = np.asarray(doc_vecs[d_unique], dtype=np.float32)
    d_pos = np.searchsorted(d_unique, d_index)
    values = np.einsum("ij,ij->i", q[q_pos], d[d_pos])
    for (row, doc, _), value in zip(missing, values.tolist()):
        out[result.query_ids[row]][doc] = float(value)
    return out


def files_fingerprint(paths: Sequence[Path]) -> str:
    """A short hash of the bytes of some files, in order."""
    from densekit.cache import fingerprint, sha256_file

    return fingerprint(*[sha256_file(p) for p in paths])


def pool_fingerprint(model_keys: Mapping[str, str], dataset: "MultiLevelDataset", settings: Mapping[str, Any]
                     ) -> tuple[str, dict[str, Any]]:
    """The pool's fingerprint and its parts: model keys, corpus/query file contents, judgments, settings.

    Two pools with the same fingerprint were mined by the same weights and encoding specs from the same
    corpus, queries and judgments with the same rules, so they are the same pool; a model card records it.
    """
    from densekit.cache import fingerprint

    judgments = fingerprint(sorted((q, sorted(d.items())) for q, d in dataset.qrels.items()))
    parts = {"model": dict(model_keys), "corpus": files_fingerprint(dataset.corpus_paths),
             "queries": files_fingerprint(dataset.query_paths), "judgments": judgments,
             "settings": fingerprint(dict(settings))}
    return fingerprint(parts), parts


def write_mined(output_dir: Path, pool: Pool, *, tag: str = "densekit", merge_qrels: bool = False,
                info: Optional[Mapping[str, Any]] = None) -> dict[str, Path]:
    """Write ``mined_qrels.tsv``, ``mined_run.trec``, ``mining.json`` (and ``merged_qrels.tsv``); return paths.

    ``mined_qrels.tsv``: query-id, corpus-id, similarity for each kept negative, best first (training reads
    it). ``mined_run.trec``: the same negatives as run lines ``qid Q0 docid rank score tag`` with the rank
    they had in the search's ranking (gaps where candidates were dropped). ``merged_qrels.tsv``: every
    judgment of the dataset with its label, plus each kept negative not judged for that query as 0.
    ``mining.json``: ``info`` (settings, fingerprint...) and the counts of :meth:`Pool.counts`.
    """
    from densekit.data.formats import write_qrels

    if not tag or any(c.isspace() for c in tag):
        raise ConfigError(f"run tag {tag!r} must be non-empty and contain no whitespace.")
    output_dir = Path(output_dir)
    paths = {"mined": output_dir / MINED_QRELS, "run": output_dir / MINED_RUN, "info": output_dir / MINING_JSON}
    kept = pool.kept()
    mined = {qid: {doc: score for doc, _, score in docs} for qid, docs in kept.items()}
    write_qrels(paths["mined"], mined)
    with atomic_write(paths["run"]) as handle:
        for qid, docs in kept.items():
            handle.writelines(f"{qid} Q0 {doc} {rank} {score!r} {tag}\n" for doc, rank, score in docs)
    if merge_qrels:
        paths["merged"] = output_dir / "merged_qrels.tsv"
        merged = {qid: dict(docs) for qid, docs in pool.judged.items()}
        for qid, docs in mined.items():
            target = merged.setdefault(qid, {})
            for doc in docs:
                target.setdefault(doc, 0)
        write_qrels(paths["merged"], merged)
    payload = {**dict(info or {}), "counts": pool.counts(),
               "files": {name: path.name for name, path in paths.items() if name != "info"}}
    with atomic_write(paths["info"]) as handle:
        json.dump(payload, handle, indent=1, default=str)
    return paths


def settings_record(settings: MiningSettings, depth: int) -> dict[str, Any]:
    """What mining.json and the audit print as settings: the rules and the depth actually searched."""
    return {**asdict(settings), "search_depth": depth}
