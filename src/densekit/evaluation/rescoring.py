"""Teacher rescoring: score (query, candidate) pairs with a stronger model, to filter and to distill.

Why: a mined candidate that the retriever ranks high is often relevant but unjudged (a false negative).
A cross-encoder reads query and passage together and tells these apart far better than the bi-encoder
that mined them, so its scores (a) drop likely false negatives and (b) become soft targets for the
distillation losses (``kl``: softmax of the group's teacher scores; ``margin_mse``: the positive-minus-
negative margins). The scores are written as a qrels file with real-valued scores, which
``MaterializedQRelConfig`` reads like any qrels; a :class:`~densekit.data.datasets.MultiLevelDataset` built
on it yields groups whose labels are exactly these scores, highest first.

Teachers:

* ``cross-encoder``: any local ``AutoModelForSequenceClassification`` checkpoint. Input is the pair
  (query text, passage) with the passage as BEIR formats it (``title + " " + text``), truncated together
  (``longest_first``) to ``max_length`` tokens. The score is the logit with ``num_labels == 1``; with
  ``num_labels == 2`` it is the log-odds ``logit[1] - logit[0]`` of class 1 ("relevant", the convention of
  two-class BERT rerankers): it orders pairs exactly as the softmax probability of class 1 does, which the
  raw class-1 logit alone does not. Float32, ``torch.inference_mode``, pairs length-sorted per block.
* ``bi-encoder``: a densekit / Hugging Face / sentence-transformers folder loaded with
  ``BiEncoderRetriever.from_pretrained``; queries and passages are encoded through the evaluator's path
  (:class:`~densekit.evaluation.embeddings.Embedder` + :func:`~densekit.evaluation.encoding.encode_texts`,
  the same encoding specs and embedding cache) and a pair's score is the dot product, as the search scores.

``auto`` picks cross-encoder when the folder's ``config.json`` lists an architecture ending in
``ForSequenceClassification``, else bi-encoder.

Caching and resuming: cross-encoder scores go into an :class:`~densekit.cache.EmbeddingCache` entry (a
``[n, 1]`` float32 "embedding" per pair) whose key is the teacher's weights fingerprint, its tokenizer
fingerprint, ``max_length``, the score rule and the exact pairs (ids and texts). Blocks are written as they
finish, so an interrupted run resumes by blocks and a second identical run scores nothing; changed weights
give a new key. Under ``torchrun`` each rank scores its contiguous shard of the pairs (its own cache entry),
the scores are all-gathered in rank order, and rank 0 writes the files.

Filters (on the candidates that are not judged positives of the query; positives are label > 0, as mining
counts them), tried in this order, a negative counted under the first that applies:

* ``drop_above`` S: drop a negative whose teacher score is > S;
* ``drop_margin`` M: drop a negative whose teacher score is > ``reference - M``, where ``reference`` is the
  teacher score of the query's *lowest-scored* judged positive. M = 0 drops every negative the teacher
  prefers to some positive; M > 0 also drops those within M below it. The minimum, as in mining: a
  training step may pair the query with any positive, and a negative must lose to each. A query without a
  positive has no reference; the rule does not apply to it.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from densekit import distributed
from densekit.cache import EmbeddingCache, fingerprint, texts_fingerprint
from densekit.errors import ConfigError, InputError
from densekit.files import atomic_write

TEACHER_SCORES, FILTERED_NEGATIVES = "teacher_scores.tsv", "filtered_negatives.tsv"
FILTERED_TEACHER_SCORES, RESCORE_JSON, REPORT = "filtered_teacher_scores.tsv", "rescore.json", "report.md"
KINDS = ("auto", "cross-encoder", "bi-encoder")
KEPT, DROP_ABOVE, DROP_MARGIN = "kept", "drop_above", "drop_margin"
CACHE_NAME = "teacher_scores"


# ------------------------------------------------------------------------------------------ inputs
@dataclass
class Pairs:
    """The (query, document) pairs to score, in output order: per query its positives, then its candidates.

    ``candidate_score`` is the score the candidate file gave (NaN for positives not in it); ``positive``
    marks judged positives (label > 0). ``order`` keeps each query's candidates in file order.
    """

    query_ids: list[str] = field(default_factory=list)
    doc_ids: list[str] = field(default_factory=list)
    positive: list[bool] = field(default_factory=list)
    candidate_score: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.query_ids)

    def add(self, qid: str, did: str, positive: bool, score: float) -> None:
        self.query_ids.append(qid)
        self.doc_ids.append(did)
        self.positive.append(positive)
        self.candidate_score.append(score)


def read_candidates(paths: Sequence[str | Path], queries: Any, corpus: Any) -> dict[str, list[tuple[str, float]]]:
    """Each query's candidates ``[(doc id, score)]``, best first, from TREC runs or qrels files.

    A 6-column file is a run (``qid Q0 docid rank score tag``; ordered by rank), a 3-column file BEIR qrels
    (``query-id corpus-id score`` with or without header; file order, which ``mined_qrels.tsv`` writes best
    first), a 4-column file TREC qrels. An unknown query or document id, a malformed line or a pair listed
    twice is an InputError naming file and line, raised before any model is loaded.
    """
    from densekit.data.formats.lines import numbered_lines

    found: dict[str, dict[str, tuple[float, int]]] = {}
    lines: list[tuple[Path, int, str, str]] = []
    for path in map(Path, paths):
        ncols = None
        for lineno, line in numbered_lines(path, "candidates"):
            fields = line.split()
            if ncols is None and len(fields) == 3 and not any(c.isdigit() for c in "".join(fields)):
                continue  # BEIR header "query-id corpus-id score"
            if ncols is None:
                ncols = len(fields)
                if ncols not in (3, 4, 6):
                    raise InputError(f"{ncols} columns; a candidate line has 6 (run: qid Q0 docid rank score tag) "
                                     "or 3 (qrels: query-id corpus-id score).", path=path, line=lineno,
                                     fix="pass mined_run.trec or mined_qrels.tsv as written by densekit mine.")
            elif len(fields) != ncols:
                raise InputError(f"{len(fields)} columns, but the first line had {ncols}.", path=path, line=lineno,
                                 fix="one candidate per line, every line with the same columns.")
            qid, did = fields[0], fields[2] if ncols in (4, 6) else fields[1]
            try:
                score = float(fields[4] if ncols == 6 else fields[-1])
                order = int(fields[3]) if ncols == 6 else len(found.get(qid, {}))
            except ValueError:
                raise InputError(f"score or rank in {line!r} is not a number.", path=path, line=lineno,
                                 fix="runs: qid Q0 docid rank score tag; qrels: query-id corpus-id score.") from None
            docs = found.setdefault(qid, {})
            if did in docs:
                raise InputError(f"document {did!r} is listed twice for query {qid!r}.", path=path, line=lineno,
                                 fix="list each candidate once per query.")
            docs[did] = (score, order)
            lines.append((path, lineno, qid, did))
    if not lines:
        raise InputError("no candidate in the candidate file(s).", path=paths[0] if paths else None,
                         fix="pass the mined_run.trec or mined_qrels.tsv of a `densekit mine` run.")
    for column, store, what in ((2, queries, "query"), (3, corpus, "document")):
        ids = [entry[column] for entry in lines]
        unknown = np.flatnonzero(store.lookup(ids) < 0)
        if unknown.size:
            path, lineno, qid, did = lines[int(unknown[0])]
            raise InputError(f"{what} id {ids[int(unknown[0])]!r} is not in {store._source_label()} "
                             f"({unknown.size} candidate line(s) name unknown {what} ids).", path=path, line=lineno,
                             fix=f"rescore candidates against the dataset they were mined from (--dataset/--split, "
                                 f"or --{'query' if what == 'query' else 'corpus'}_path).")
    return {qid: [(d, s) for d, (s, _) in sorted(docs.items(), key=lambda kv: kv[1][1])]
            for qid, docs in found.items()}


def build_pairs(candidates: dict[str, list[tuple[str, float]]], qrels: dict[str, dict[str, float]],
                include_positives: bool) -> Pairs:
    """Pairs of every candidate query: its judged positives first (when asked), then its candidates.

    A candidate that is a judged positive of its query is scored once, as a positive (it is no negative).
    """
    pairs = Pairs()
    for qid, docs in candidates.items():
        positives = [d for d, label in qrels.get(qid, {}).items() if label > 0]
        listed = dict(docs)
        if include_positives:
            for did in positives:
                pairs.add(qid, did, True, listed.get(did, math.nan))
        positive_set = set(positives)
        for did, score in docs:
            if did in positive_set:
                if not include_positives:
                    pairs.add(qid, did, True, score)
                continue
            pairs.add(qid, did, False, score)
    return pairs


def teacher_kind(path: str | Path, kind: str = "auto") -> str:
    """``cross-encoder`` or ``bi-encoder`` for the teacher folder (see module docs); ConfigError without config."""
    if kind not in KINDS:
        raise ConfigError(f"--teacher_kind {kind!r} is unknown; use one of {', '.join(KINDS)}.")
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(f"teacher folder {str(path)!r} does not exist; --teacher must be a local checkpoint folder.")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"teacher folder {str(path)!r} has no config.json; --teacher needs a Hugging Face "
                          "checkpoint folder (config.json, weights, tokenizer files at its top level).")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{config_file}: not valid JSON ({err}); the teacher's config.json is damaged.") from err
    if kind != "auto":
        return kind
    architectures = config.get("architectures") or [] if isinstance(config, dict) else []
    is_cross = any(str(a).endswith("ForSequenceClassification") for a in architectures)
    return "cross-encoder" if is_cross else "bi-encoder"


# ------------------------------------------------------------------------------------ cross-encoder
class CrossEncoderTeacher:
    """A sequence-classification checkpoint scoring (query, passage) pairs; see the module docs."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", max_length: Optional[int] = None) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from densekit.modeling.encoding_spec import tokenizer_limit

        self.path = str(path)
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModelForSequenceClassification.from_pretrained(self.path).float().to(self.device).eval()
        num_labels = int(self.model.config.num_labels)
        if num_labels not in (1, 2):
            raise ConfigError(f"teacher {self.path!r} has num_labels={num_labels}; a relevance teacher has 1 "
                              "(one logit) or 2 (not relevant, relevant).")
        self.num_labels = num_labels
        positions = getattr(self.model.config, "max_position_embeddings", None)
        positions = positions if isinstance(positions, int) and positions > 0 else None
        if max_length is not None and positions is not None and max_length > positions:
            raise ConfigError(f"--max_length {max_length} is longer than the teacher accepts ({positions} positions).")
        limits = [v for v in (tokenizer_limit(self.tokenizer), positions) if v]
        self.max_length = int(max_length or (min(limits) if limits else 512))
        self._described: Optional[dict[str, Any]] = None

    def describe(self) -> dict[str, Any]:
        """What the scores depend on besides the pairs: weights, tokenizer, length, score rule.

        Hashed once per load (the weights are not changed here), since hashing a large teacher takes seconds.
        """
        from densekit.modeling.encoding_spec import tokenizer_fingerprint, weights_fingerprint

        if self._described is None:
            self._described = {"kind": "cross-encoder", "weights": weights_fingerprint(self.model),
                               "tokenizer": tokenizer_fingerprint(self.tokenizer), "max_length": self.max_length,
                               "score": "logit" if self.num_labels == 1 else "logit[1] - logit[0]"}
        return dict(self._described)

    def score(self, queries: Sequence[str], passages: Sequence[str], batch_size: int = 32,
              bar: Optional[Any] = None) -> np.ndarray:
        """Float32 scores of ``(queries[i], passages[i])``, batched longest-first, in input order."""
        from densekit.data.collator import pad_token_lists

        encoded = self.tokenizer(list(queries), list(passages), truncation=True, max_length=self.max_length,
                                 padding=False, return_attention_mask=True)
        features = {key: list(value) for key, value in encoded.items()}
        lengths = np.fromiter((len(ids) for ids in features["input_ids"]), dtype=np.int64, count=len(queries))
        order = np.argsort(-lengths, kind="stable")
        out = np.empty(len(queries), dtype=np.float32)
        with torch.inference_mode():
            for lo in range(0, len(order), batch_size):
                rows = order[lo:lo + batch_size]
                batch = pad_token_lists(self.tokenizer, features, rows.tolist()).to(self.device)
                logits = self.model(**batch).logits.float()
                values = logits[:, 0] if self.num_labels == 1 else logits[:, 1] - logits[:, 0]
                out[rows] = values.cpu().numpy()
                if bar is not None:
                    bar.update(len(rows))
        return out


def cross_encoder_scores(teacher: CrossEncoderTeacher, pair_ids: Sequence[str], queries: Sequence[str],
                         passages: Sequence[str], *, batch_size: int = 32, cache_dir: Optional[str] = None,
                         block_size: int = 4096, progress: bool = True) -> tuple[np.ndarray, int]:
    """All pairs' scores (rank order restored under torchrun) and how many this rank had to compute.

    Each rank scores its :func:`~densekit.distributed.shard_range` of the pairs, through a cache entry keyed
    by the teacher's :meth:`~CrossEncoderTeacher.describe` and the exact pairs when ``cache_dir`` is set.
    """
    world, me = distributed.world_size(), distributed.rank()
    rows = distributed.shard_range(len(pair_ids), me, world)
    ids = list(pair_ids[rows.start:rows.stop])
    q_texts, p_texts = queries[rows.start:rows.stop], passages[rows.start:rows.stop]
    scored = 0
    with tqdm(total=len(ids), desc="teacher scoring", unit="pair", disable=not progress or me != 0) as bar:
        def score_rows(a: int, b: int) -> np.ndarray:
            nonlocal scored
            scored += b - a
            return teacher.score(q_texts[a:b], p_texts[a:b], batch_size=batch_size, bar=bar)[:, None]

        if cache_dir and ids:
            pair_texts = [f"{q}\x1f{p}" for q, p in zip(q_texts, p_texts)]
            key = fingerprint("rescore", teacher.describe(), texts_fingerprint(ids, pair_texts))
            name = CACHE_NAME if world == 1 else f"{CACHE_NAME}.rank{me}of{world}"
            entry = EmbeddingCache(cache_dir, block_size=block_size).entry(key, name=name)
            if not entry.is_complete():
                entry.build(ids, score_rows, info={"teacher": teacher.path})
            local = np.asarray(entry.load()[1], dtype=np.float32)
            bar.update(len(ids) - bar.n)
        elif ids:
            local = np.concatenate([score_rows(a, min(a + block_size, len(ids)))
                                    for a in range(0, len(ids), block_size)])
        else:
            local = None
    gathered = distributed.all_gather_rows(local) if distributed.is_distributed() else local
    return np.asarray(gathered, dtype=np.float32).reshape(-1), scored


# --------------------------------------------------------------------------------------- bi-encoder
def bi_encoder_scores(path: str | Path, pairs: Pairs, queries: Any, corpus: Any, *, batch_size: int = 32,
                      max_length: Optional[int] = None, cache_dir: Optional[str] = None, block_size: int = 4096,
                      device: str | torch.device = "cpu", progress: bool = True) -> tuple[np.ndarray, int, dict]:
    """Dot products of query and passage vectors of a bi-encoder teacher, encoded as the evaluator does.

    Unique queries and documents are encoded once each (each rank its shard, all-gathered), through the
    embedding cache when ``cache_dir`` is set. Returns (scores, texts encoded, teacher description).
    """
    from transformers import AutoTokenizer

    from densekit.evaluation.embeddings import Embedder
    from densekit.evaluation.encoding import encode_texts
    from densekit.modeling.encoding_spec import encoding_spec, model_key, weights_by_kind
    from densekit.modeling.retriever import BiEncoderRetriever

    model = BiEncoderRetriever.from_pretrained(path).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    world, me = distributed.world_size(), distributed.rank()

    def encode(texts: Sequence[str], spec: Any) -> np.ndarray:
        return encode_texts(model, tokenizer, texts, kind=spec.kind, batch_size=batch_size, max_len=spec.max_len,
                            append_eos=spec.append_eos, device=device, show_progress=progress and me == 0,
                            desc=f"teacher encoding {spec.kind}s")

    cache = EmbeddingCache(cache_dir, block_size=block_size) if cache_dir else None
    embedder = Embedder(encode, model, cache=cache, block_size=block_size)
    weights = weights_by_kind(model)
    qids = list(dict.fromkeys(pairs.query_ids))
    doc_rows = np.unique(corpus.indices_of(pairs.doc_ids))
    sides = {"query": ([queries.id_at(int(r)) for r in queries.indices_of(qids)],
                       lambda rows: [model.format_query(t) for t in queries.texts(rows)], queries.indices_of(qids)),
             "passage": ([corpus.id_at(int(r)) for r in doc_rows],
                         lambda rows: [model.format_passage(text, title=title or None)
                                       for title, text in zip(corpus.titles(rows), corpus.texts(rows))], doc_rows)}
    vectors, describe = {}, {"kind": "bi-encoder", "weights": weights}
    for kind, (ids, texts_of, store_rows) in sides.items():
        spec = encoding_spec(model, tokenizer, kind, max_len=max_length)
        describe[f"{kind}_model_key"] = model_key(spec, model, weights)
        shard = distributed.shard_range(len(ids), me, world)
        name = None if not cache else (f"rescore_{kind}" if world == 1 else f"rescore_{kind}.rank{me}of{world}")
        local = None
        if len(shard):
            local = np.asarray(embedder.embed(ids[shard.start:shard.stop], texts_of(store_rows[shard.start:shard.stop]),
                                              spec, name=name, weights=weights), dtype=np.float32)
        vectors[kind] = (distributed.all_gather_rows(local) if distributed.is_distributed() else local, ids)
    (q_vecs, q_ids), (d_vecs, d_ids) = vectors["query"], vectors["passage"]
    q_index = {q: i for i, q in enumerate(q_ids)}
    d_index = {d: i for i, d in enumerate(d_ids)}
    q_rows = np.fromiter((q_index[q] for q in pairs.query_ids), dtype=np.int64, count=len(pairs))
    d_rows = np.fromiter((d_index[d] for d in pairs.doc_ids), dtype=np.int64, count=len(pairs))
    scores = np.einsum("ij,ij->i", q_vecs[q_rows], d_vecs[d_rows]).astype(np.float32)
    return scores, embedder.rows_encoded, describe


# ------------------------------------------------------------------------------------------ filters
@dataclass(frozen=True)
class FilterSettings:
    """The false-negative filters (module docs); None switches a rule off."""

    drop_above: Optional[float] = None
    drop_margin: Optional[float] = None

    def __post_init__(self) -> None:
        for name in ("drop_above", "drop_margin"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(float(value)):
                raise ConfigError(f"--{name} must be a finite number, got {value!r}.")


def filter_negatives(scores: Sequence[float], positive_scores: Sequence[float], settings: FilterSettings) -> list[str]:
    """Status of each negative of one query: ``kept``, or the first rule that drops it."""
    reference = min(positive_scores) if len(positive_scores) else None
    out = []
    for score in scores:
        if settings.drop_above is not None and score > settings.drop_above:
            out.append(DROP_ABOVE)
        elif settings.drop_margin is not None and reference is not None and score > reference - settings.drop_margin:
            out.append(DROP_MARGIN)
        else:
            out.append(KEPT)
    return out


def apply_filters(pairs: Pairs, scores: np.ndarray, settings: FilterSettings) -> list[Optional[str]]:
    """Status of every pair: None for positives, :func:`filter_negatives`' status for the negatives."""
    by_query: dict[str, list[int]] = {}
    for i, qid in enumerate(pairs.query_ids):
        by_query.setdefault(qid, []).append(i)
    status: list[Optional[str]] = [None] * len(pairs)
    for rows in by_query.values():
        positives = [float(scores[i]) for i in rows if pairs.positive[i]]
        negatives = [i for i in rows if not pairs.positive[i]]
        for i, value in zip(negatives, filter_negatives([float(scores[i]) for i in negatives], positives, settings)):
            status[i] = value
    return status


# ------------------------------------------------------------------------------------------- output
def _stats(values: Sequence[float]) -> dict[str, Optional[float]]:
    if not len(values):
        return {"count": 0, "mean": None, "min": None, "max": None}
    array = np.asarray(values, dtype=np.float64)
    return {"count": int(array.size), "mean": float(array.mean()), "min": float(array.min()), "max": float(array.max())}


def count_results(pairs: Pairs, scores: np.ndarray, status: Sequence[Optional[str]]) -> dict[str, Any]:
    """Counts for rescore.json and the report: pairs, positives, negatives kept/dropped per rule, queries."""
    queries = list(dict.fromkeys(pairs.query_ids))
    kept_per_query = {q: 0 for q in queries}
    positive_per_query = {q: 0 for q in queries}
    for qid, s, pos in zip(pairs.query_ids, status, pairs.positive):
        kept_per_query[qid] += s == KEPT
        positive_per_query[qid] += bool(pos)
    negatives = [s for s in status if s is not None]
    return {"queries": len(queries), "pairs": len(pairs), "positives": sum(map(bool, pairs.positive)),
            "negatives": len(negatives), "kept": negatives.count(KEPT),
            "dropped_drop_above": negatives.count(DROP_ABOVE), "dropped_drop_margin": negatives.count(DROP_MARGIN),
            "queries_without_positive": sum(1 for v in positive_per_query.values() if not v),
            "queries_without_negative": sum(1 for v in kept_per_query.values() if not v),
            "positive_scores": _stats([float(v) for v, p in zip(scores, pairs.positive) if p]),
            "negative_scores": _stats([float(v) for v, s in zip(scores, status) if s is not None])}


def write_outputs(output_dir: str | Path, pairs: Pairs, scores: np.ndarray, status: Sequence[Optional[str]],
                  info: dict[str, Any]) -> dict[str, Path]:
    """Write teacher_scores.tsv, filtered_negatives.tsv, filtered_teacher_scores.tsv, rescore.json, report.md.

    ``teacher_scores.tsv``: every scored pair with its teacher score (BEIR qrels layout, header, float
    scores written exactly). ``filtered_negatives.tsv``: the kept negatives with their candidate-file score,
    in candidate order (mined_qrels.tsv's layout: a drop-in ``--negative_qrel_path``).
    ``filtered_teacher_scores.tsv``: positives and kept negatives with teacher scores (distillation targets
    without the dropped likely false negatives).
    """
    from densekit.data.formats import write_qrels

    out = Path(output_dir)
    paths = {"teacher_scores": out / TEACHER_SCORES, "filtered_negatives": out / FILTERED_NEGATIVES,
             "filtered_teacher_scores": out / FILTERED_TEACHER_SCORES, "info": out / RESCORE_JSON,
             "report": out / REPORT}
    every: dict[str, dict[str, float]] = {}
    kept: dict[str, dict[str, float]] = {}
    kept_teacher: dict[str, dict[str, float]] = {}
    for qid, did, value, s, candidate in zip(pairs.query_ids, pairs.doc_ids, scores.tolist(), status,
                                             pairs.candidate_score):
        every.setdefault(qid, {})[did] = value
        if s is None or s == KEPT:
            kept_teacher.setdefault(qid, {})[did] = value
        if s == KEPT:
            kept.setdefault(qid, {})[did] = candidate
    write_qrels(paths["teacher_scores"], every)
    write_qrels(paths["filtered_negatives"], kept)
    write_qrels(paths["filtered_teacher_scores"], kept_teacher)
    payload = {**info, "files": {k: p.name for k, p in paths.items() if k != "info"}}
    with atomic_write(paths["info"]) as handle:
        json.dump(payload, handle, indent=1, default=str)
    with atomic_write(paths["report"]) as handle:
        handle.write(render_report(payload))
    return paths


def render_report(info: dict[str, Any]) -> str:
    """A short Markdown report: what was scored by which teacher, what the filters dropped, score ranges."""
    counts, settings = info["counts"], info["settings"]
    lines = ["# Teacher rescoring", "", f"Teacher `{settings['teacher']}` ({info['teacher']['kind']}), "
             f"candidates {', '.join(f'`{c}`' for c in settings['candidates'])}; weights fingerprint "
             f"`{info['teacher']['weights']}`, max length {info['teacher'].get('max_length', 'per encoding spec')}.", "",
             "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in settings.items() if k not in ("teacher", "candidates")]
    lines += ["", "| count | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in counts.items() if not isinstance(v, dict)]
    lines += ["", "| teacher scores | count | mean | min | max |", "|---|---|---|---|---|"]
    for name in ("positive_scores", "negative_scores"):
        s = counts[name]
        cells = [f"{s[k]:.4f}" if s[k] is not None else "-" for k in ("mean", "min", "max")]
        lines.append(f"| {name.split('_')[0]}s | {s['count']} | {' | '.join(cells)} |")
    lines += ["", "Train on the teacher scores (KL or margin-MSE): `MaterializedQRelConfig(qrel_path="
              f"'{FILTERED_TEACHER_SCORES}', ...)` in a `MultiLevelDataset`; groups carry these scores as labels.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- the run
@dataclass
class RescoreSettings:
    """Everything ``densekit rescore`` does, as one value (the CLI fills it from flags)."""

    teacher: str
    candidates: list[str]
    output_dir: str
    include_positives: bool = True
    teacher_kind: str = "auto"
    batch_size: int = 32
    max_length: Optional[int] = None
    drop_above: Optional[float] = None
    drop_margin: Optional[float] = None
    encoding_cache_dir: Optional[str] = None
    cache_block_size: int = 4096
    device: Optional[str] = None
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.candidates, (str, Path)):
            self.candidates = [str(self.candidates)]
        if not self.candidates:
            raise ConfigError("--candidates needs at least one file (mined_run.trec or mined_qrels.tsv).")
        if self.batch_size < 1 or self.cache_block_size < 1:
            raise ConfigError("--batch_size and --cache_block_size must be positive.")
        if self.drop_margin is not None and not self.include_positives:
            raise ConfigError("--drop_margin measures negatives against the positives' teacher scores; drop "
                              "--include_positives false (positives are scored when it is true).")
        FilterSettings(self.drop_above, self.drop_margin)

    def filters(self) -> FilterSettings:
        return FilterSettings(self.drop_above, self.drop_margin)


def rescore(settings: RescoreSettings, queries: Any, corpus: Any, qrels: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Read candidates, score every pair with the teacher, filter, write the files (rank 0); return the info.

    ``queries`` / ``corpus`` are :class:`~densekit.data.store.TextStore` s and ``qrels`` the judgments whose
    label > 0 are positives (a MultiLevelDataset's ``queries``, ``corpus`` and ``qrels``). Inputs are checked
    before the teacher is loaded. Other ranks return the same info without writing.
    """
    began = time.perf_counter()
    kind = teacher_kind(settings.teacher, settings.teacher_kind)
    candidates = read_candidates(settings.candidates, queries, corpus)
    pairs = build_pairs(candidates, qrels, settings.include_positives)
    device = settings.device or (f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu")
    if kind == "cross-encoder":
        teacher = CrossEncoderTeacher(settings.teacher, device=device, max_length=settings.max_length)
        q_rows = queries.indices_of(pairs.query_ids)
        d_rows = corpus.indices_of(pairs.doc_ids)
        q_texts = queries.texts(q_rows)
        p_texts = [f"{title} {text}".strip() if title else text
                   for title, text in zip(corpus.titles(d_rows), corpus.texts(d_rows))]
        ids = [f"{q}\t{d}" for q, d in zip(pairs.query_ids, pairs.doc_ids)]
        scores, computed = cross_encoder_scores(teacher, ids, q_texts, p_texts, batch_size=settings.batch_size,
                                                cache_dir=settings.encoding_cache_dir,
                                                block_size=settings.cache_block_size, progress=settings.progress)
        describe = teacher.describe()
        unit = "pairs scored"
    else:
        scores, computed, describe = bi_encoder_scores(
            settings.teacher, pairs, queries, corpus, batch_size=settings.batch_size, max_length=settings.max_length,
            cache_dir=settings.encoding_cache_dir, block_size=settings.cache_block_size, device=device,
            progress=settings.progress)
        unit = "texts encoded"
    computed = sum(distributed.all_gather_objects(computed))  # every rank's share
    status = apply_filters(pairs, scores, settings.filters())
    counts = count_results(pairs, scores, status)
    record = {k: v for k, v in asdict(settings).items() if k != "progress"}
    info = {"settings": record, "teacher": {**describe, "resolved_kind": kind},
            "counts": {**counts, "computed": computed, "processes": distributed.world_size()},
            "seconds": round(time.perf_counter() - began, 3)}
    if distributed.rank() == 0:
        write_outputs(settings.output_dir, pairs, scores, status, info)
        dropped = ", ".join(f"{rule} {counts[f'dropped_{rule}']}" for rule in (DROP_ABOVE, DROP_MARGIN)
                            if counts[f"dropped_{rule}"])
        print(f"densekit rescore: {counts['pairs']} pairs ({counts['positives']} positives) of {counts['queries']} "
              f"queries scored by {kind} {settings.teacher} ({computed} {unit}, cache "
              f"{settings.encoding_cache_dir or 'off'}); kept "
              f"{counts['kept']} of {counts['negatives']} negatives{'; dropped: ' + dropped if dropped else ''} "
              f"-> {settings.output_dir} in {time.perf_counter() - began:.1f}s", flush=True)
    distributed.barrier()
    return info
