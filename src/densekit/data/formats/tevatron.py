"""Tevatron training JSON lines: one query per line with its positive and negative passages inline.

    {"query_id": "q1", "query": "...", "positive_passages": [{"docid": "d1", "title": "...", "text": "..."}],
     "negative_passages": [{"docid": "d9", "title": "...", "text": "..."}]}

Reading gives a :class:`~densekit.data.formats.collection.Collection`: every passage becomes a corpus record
(a docid seen again must carry the same title and text), every query a query record, positives judgments of
score 1 and negatives of score 0. A passage may carry a ``"score"`` (densekit writes one for judged
documents, so graded labels survive BEIR -> Tevatron -> BEIR); Tevatron itself ignores the extra key.
The same query on several lines (files joined with ``cat``) merges its passages.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Union

from tqdm import tqdm

from densekit.data.formats.collection import Collection
from densekit.data.formats.lines import numbered_lines
from densekit.data.store import TextStore
from densekit.data.store import check_id as store_check_id  # tevatron's check_id adds the type check
from densekit.errors import InputError
from densekit.files import atomic_write

PathLike = Union[str, Path]
EXAMPLE = ('{"query_id": "q1", "query": "...", "positive_passages": [{"docid": "d1", "title": "", "text": "..."}], '
           '"negative_passages": []}')


def iter_json_lines(path: PathLike, what: str = "tevatron") -> Iterator[tuple[int, Any]]:
    """``(line, parsed JSON)`` of every non-blank line; malformed JSON is an InputError naming the line."""
    for lineno, line in numbered_lines(path, what):
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"malformed JSON ({err.msg} at column {err.colno}).", path=path, line=lineno,
                             fix=f"each line must be one JSON object such as {EXAMPLE}.") from None


def check_id(value: Any, what: str, path, lineno) -> str:
    """The id as a string; not a string or number, empty, or with whitespace is an InputError (see store.check_id)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise InputError(f"{what} must be a non-empty string, got {value!r}.", path=path, line=lineno,
                         fix=f"give every query and passage an id, e.g. {EXAMPLE}.")
    return store_check_id(str(value), path, lineno, what)


def _score(value: Any, default: float, path, lineno) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"passage score {value!r} is not a number.", path=path, line=lineno,
                         fix='"score" must be a number (or absent).')
    return int(value) if float(value).is_integer() else float(value)


class CollectionBuilder:
    """Collects queries, passages and judgments record by record, checking consistency as it goes."""

    def __init__(self, source: Optional[PathLike]) -> None:
        self.source = source
        self.docs: dict[str, tuple[str, str, int]] = {}
        self.queries: dict[str, tuple[str, int]] = {}
        self.qrels: dict[str, dict[str, float]] = {}

    def add_query(self, qid: str, text: Any, lineno: int) -> None:
        if not isinstance(text, str):
            raise InputError(f"query {qid!r} has no string text (got {type(text).__name__}).", path=self.source,
                             line=lineno, fix=f"every record needs a query text, e.g. {EXAMPLE}.")
        if not text.strip():
            raise InputError(f"query {qid!r} has empty text.", path=self.source, line=lineno,
                             fix="give every query a text or remove the line.")
        seen = self.queries.get(qid)
        if seen is not None and seen[0] != text:
            raise InputError(f"query {qid!r} has a different text than at line {seen[1]}.", path=self.source,
                             line=lineno, fix="query ids must be unique, or repeat the same text.")
        self.queries.setdefault(qid, (text, lineno))

    def add_doc(self, did: str, title: Any, text: Any, lineno: int) -> None:
        title = "" if title is None else title
        if not isinstance(text, str) or not isinstance(title, str):
            raise InputError(f"passage {did!r} needs a string text (and title).", path=self.source, line=lineno,
                             fix=f'each passage is {{"docid", "title", "text"}}, e.g. {EXAMPLE}.')
        seen = self.docs.get(did)
        if seen is not None and (seen[0], seen[1]) != (title, text):
            raise InputError(f"passage {did!r} has a different title/text than at line {seen[2]}.",
                             path=self.source, line=lineno, fix="one docid must always name the same passage.")
        self.docs.setdefault(did, (title, text, lineno))

    def judge(self, qid: str, did: str, score: float, lineno: int) -> None:
        docs = self.qrels.setdefault(qid, {})
        if did in docs and docs[did] != score:
            raise InputError(f"passage {did!r} is judged both {docs[did]} and {score} for query {qid!r}.",
                             path=self.source, line=lineno, fix="list a passage once per query.")
        docs[did] = score

    def build(self) -> Collection:
        corpus = TextStore.from_rows(((d, t, x, n) for d, (t, x, n) in self.docs.items()), source=self.source)
        queries = TextStore.from_rows(((q, "", x, n) for q, (x, n) in self.queries.items()), source=self.source,
                                      kind="queries")
        return Collection(corpus, queries, self.qrels)


def add_tevatron_record(builder: CollectionBuilder, record: Any, lineno: int) -> None:
    """Add one Tevatron record (a parsed JSON line or a ``datasets`` row) to ``builder``."""
    path = builder.source
    if not isinstance(record, Mapping):
        raise InputError(f"expected a JSON object, got {type(record).__name__}.", path=path, line=lineno,
                         fix=f"each line must be one JSON object such as {EXAMPLE}.")
    if "query_id" not in record:
        raise InputError('record has no "query_id".', path=path, line=lineno, fix=f"e.g. {EXAMPLE}.")
    if "positive_passages" not in record and "negative_passages" not in record:
        raise InputError('record has neither "positive_passages" nor "negative_passages".', path=path,
                         line=lineno, fix=f"e.g. {EXAMPLE}.")
    qid = check_id(record["query_id"], '"query_id"', path, lineno)
    builder.add_query(qid, record.get("query"), lineno)
    for key, default in (("positive_passages", 1), ("negative_passages", 0)):
        passages = record.get(key) or []
        if not isinstance(passages, list):
            raise InputError(f'"{key}" must be a list of passages.', path=path, line=lineno, fix=f"e.g. {EXAMPLE}.")
        for passage in passages:
            if not isinstance(passage, Mapping) or "docid" not in passage:
                raise InputError(f'a passage in "{key}" has no "docid".', path=path, line=lineno,
                                 fix=f'each passage is {{"docid", "title", "text"}}, e.g. {EXAMPLE}.')
            did = check_id(passage["docid"], '"docid"', path, lineno)
            builder.add_doc(did, passage.get("title"), passage.get("text"), lineno)
            builder.judge(qid, did, _score(passage.get("score"), default, path, lineno), lineno)


def collection_from_records(records: Iterable[tuple[int, Any]], source: Optional[PathLike]) -> Collection:
    """A collection from ``(line, record)`` pairs of Tevatron records."""
    builder = CollectionBuilder(source)
    for lineno, record in records:
        add_tevatron_record(builder, record, lineno)
    if not builder.queries:
        raise InputError("no Tevatron records.", path=source, fix="check that this is the right file.")
    return builder.build()


def read_tevatron(path: PathLike) -> Collection:
    """Read a Tevatron training file (``.jsonl`` or ``.jsonl.gz``)."""
    return collection_from_records(iter_json_lines(path), path)


def write_tevatron(path: PathLike, collection: Collection, extra_negatives: Optional[Mapping[str, list[str]]] = None,
                   min_positive_score: float = 1, max_queries: Optional[int] = None,
                   progress: bool = True) -> dict[str, int]:
    """Write one line per query that has a positive (score >= ``min_positive_score``), atomically.

    Positives are ordered by score then docid; judged documents below ``min_positive_score`` come first
    among the negatives, then ``extra_negatives[qid]`` (random or run-based, written without a score).
    Returns counts: queries written, queries skipped for lack of a positive, positives, negatives.
    """
    corpus, qrels = collection.corpus, collection.qrels
    counts = {"queries": 0, "skipped_no_positive": 0, "positives": 0, "negatives": 0}
    ordered = [q for q in collection.queries.ids if q in qrels]
    with atomic_write(path, "w") as handle:
        for qid in tqdm(ordered, desc="writing tevatron", unit="query", disable=not progress):
            if max_queries is not None and counts["queries"] >= max_queries:
                break
            judged = sorted(qrels[qid].items(), key=lambda kv: (-kv[1], kv[0]))
            positives = [(d, s) for d, s in judged if s >= min_positive_score]
            if not positives:
                counts["skipped_no_positive"] += 1
                continue
            negatives = [(d, s) for d, s in judged if s < min_positive_score]
            negatives += [(d, None) for d in (extra_negatives or {}).get(qid, [])]
            ids = [d for d, _ in positives + negatives]
            rows = corpus.indices_of(ids)
            titles, texts = corpus.titles(rows), corpus.texts(rows)
            passages = []
            for (did, score), title, text in zip(positives + negatives, titles, texts):
                passage = {"docid": did, "title": title, "text": text}
                if score is not None:
                    passage["score"] = score
                passages.append(passage)
            record = {"query_id": qid, "query": collection.queries.text_at(collection.queries.index_of(qid)),
                      "positive_passages": passages[: len(positives)],
                      "negative_passages": passages[len(positives):]}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            counts["queries"] += 1
            counts["positives"] += len(positives)
            counts["negatives"] += len(negatives)
    return counts
