"""``ir_datasets`` ids (``beir/nfcorpus/train``, ``msmarco-passage/train``...) read through the package's own API.

``ir_datasets.load(id)`` gives ``docs_iter()``, ``queries_iter()`` and ``qrels_iter()``; their namedtuples
become a :class:`~densekit.data.formats.collection.Collection`: a document's ``title`` (when it has one) and
``text`` (else its ``default_text()``), a query's ``text`` (or the field named by ``query_field``, e.g.
``title`` for TREC topics), and ``relevance`` grades. The package is imported only when used
(``pip install densekit[ir_datasets]``); it downloads on first use of a public id, which densekit never
triggers in tests: they register a local dataset built with ir_datasets' own classes.
"""
from __future__ import annotations

from typing import Any, Iterator, Optional

from tqdm import tqdm

from densekit.data.formats.collection import Collection
from densekit.data.store import Row, TextStore
from densekit.errors import ConfigError, InputError


def import_ir_datasets():
    """The ``ir_datasets`` module, or a ConfigError saying how to install it."""
    try:
        import ir_datasets
    except ImportError:
        raise ConfigError("reading ir_datasets ids needs the `ir_datasets` package: "
                          "pip install densekit[ir_datasets]") from None
    return ir_datasets


def load_dataset(dataset_id: str) -> Any:
    """``ir_datasets.load(dataset_id)`` with an unknown id turned into a ConfigError."""
    ir_datasets = import_ir_datasets()
    try:
        return ir_datasets.load(dataset_id)
    except KeyError:
        raise ConfigError(f"ir_datasets has no dataset {dataset_id!r}; see https://ir-datasets.com for ids.") from None


def _count(dataset: Any, what: str) -> Optional[int]:
    try:
        return getattr(dataset, f"{what}_count")()
    except Exception:  # counts are optional metadata; some datasets cannot tell without reading
        return None


def doc_rows(dataset: Any, label: str) -> Iterator[Row]:
    """``(doc_id, title, text, position)`` of every document."""
    for n, doc in enumerate(tqdm(dataset.docs_iter(), total=_count(dataset, "docs"), desc="reading docs",
                                 unit="doc", mininterval=2), 1):
        text = getattr(doc, "text", None)
        if not isinstance(text, str):
            text = doc.default_text() if hasattr(doc, "default_text") else None
        if not isinstance(text, str):
            raise InputError(f"document {doc.doc_id!r} ({type(doc).__name__}) has no text field.", path=label,
                             line=n, fix="use a dataset whose documents have `text` or default_text().")
        title = getattr(doc, "title", "") or ""
        yield str(doc.doc_id), title if isinstance(title, str) else str(title), text, n


def query_rows(dataset: Any, label: str, query_field: str = "text") -> Iterator[Row]:
    """``(query_id, "", text, position)`` of every query, the text taken from ``query_field``."""
    for n, query in enumerate(dataset.queries_iter(), 1):
        if not hasattr(query, query_field):
            raise ConfigError(f"{label}: queries ({type(query).__name__}) have no field {query_field!r}; "
                              f"fields: {', '.join(query._fields)}.")
        yield str(query.query_id), "", str(getattr(query, query_field)), n


def read_qrels(dataset: Any) -> dict[str, dict[str, int]]:
    """Judgments ``{query_id: {doc_id: relevance}}``."""
    qrels: dict[str, dict[str, int]] = {}
    for qrel in dataset.qrels_iter():
        qrels.setdefault(str(qrel.query_id), {})[str(qrel.doc_id)] = int(qrel.relevance)
    return qrels


def read_ir_dataset(dataset_id: str, query_field: str = "text") -> Collection:
    """Documents, queries and qrels of an ir_datasets id (qrels empty when the dataset has none)."""
    from densekit.data.formats import check_qrels

    dataset = load_dataset(dataset_id)
    label = f"ir_datasets:{dataset_id}"
    for part in ("docs", "queries"):
        if not getattr(dataset, f"has_{part}")():
            raise ConfigError(f"{label} provides no {part}; pick an id that has docs and queries "
                              "(for example beir/nfcorpus/train).")
    corpus = TextStore.from_rows(doc_rows(dataset, label), source=label, kind="corpus")
    queries = TextStore.from_rows(query_rows(dataset, label, query_field), source=label, kind="queries")
    qrels = read_qrels(dataset) if dataset.has_qrels() else {}
    check_qrels(qrels, queries, corpus, path=label)
    return Collection(corpus, queries, qrels)
