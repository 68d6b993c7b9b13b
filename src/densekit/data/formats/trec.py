"""Relevance judgments (qrels) and ranked runs in the whitespace-separated layouts of TREC and BEIR.

Qrels: BEIR ``query-id<TAB>corpus-id<TAB>score`` with a header line, the same 3 columns without header, or
TREC ``qid 0 docid rel``; all may be gzip-compressed. Scores are relevance grades (integers) or real
numbers (similarities of mined negatives, teacher scores for distillation); integers stay ``int``. Several files
merge into one dict; the same (query, document) judged twice with *different* scores is an error naming
both places (it means two inconsistent sources), an identical repeat is accepted.

Runs: ``qid Q0 docid rank score tag``. :func:`write_run` builds the lines from search output arrays with
Arrow string kernels and writes the buffer as is, so 10 million lines take seconds, not minutes.
"""
from __future__ import annotations

import contextlib
import gzip
import math
import re
from pathlib import Path
from typing import IO, Iterable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from densekit.data.formats.lines import numbered_lines
from densekit.data.store import TextStore, check_id
from densekit.errors import ConfigError, InputError
from densekit.files import atomic_write

PathLike = Union[str, Path]
Qrels = dict[str, dict[str, Union[int, float]]]
Run = dict[str, dict[str, float]]
_HEADER_WORD = re.compile(r"^[A-Za-z_][A-Za-z_\-]*$")
_QREL_FIX = "use 'query-id<TAB>corpus-id<TAB>score' (BEIR) or 'qid 0 docid rel' (TREC), one judgment per line."


def parse_score(text: str) -> Union[int, float, None]:
    """An integer grade, else a finite real number, else None."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _qrel_lines(path: PathLike) -> Iterable[tuple[int, str, str, Union[int, float]]]:
    """``(line, qid, docid, score)`` for every judgment of one file."""
    ncols = None
    for lineno, line in numbered_lines(path, "qrels"):
        fields = line.split()
        tab_fields = line.split("\t")
        if len(tab_fields) in (3, 4) and len(fields) != len(tab_fields):  # an id with a space, in a TSV line
            for value, what in zip(tab_fields, ("query id", "document id") if len(tab_fields) == 3 else
                                   ("query id", "iteration", "document id")):
                check_id(value.strip(), path, lineno, what)
        if ncols is None:
            if len(fields) in (3, 4) and all(_HEADER_WORD.match(f) for f in fields):
                continue  # header such as "query-id corpus-id score" (ids have digits, names do not)
            if len(fields) not in (3, 4):
                raise InputError(f"{len(fields)} columns; a qrel line has 3 or 4.", path=path, line=lineno,
                                 fix=_QREL_FIX)
            ncols = len(fields)
        elif len(fields) != ncols:
            raise InputError(f"{len(fields)} columns, but the first judgment had {ncols}.", path=path,
                             line=lineno, fix=_QREL_FIX)
        qid, did, score = (fields[0], fields[1], fields[2]) if ncols == 3 else (fields[0], fields[2], fields[3])
        value = parse_score(score)
        if value is None:
            raise InputError(f"relevance score {score!r} is not a number.", path=path, line=lineno,
                             fix="qrel scores are grades (0, 1, 2, ...) or finite real numbers.")
        yield lineno, qid, did, value


def _first_place(paths: Sequence[PathLike], qid: str, did: str) -> tuple[PathLike, int]:
    for path in paths:
        for lineno, q, d, _ in _qrel_lines(path):
            if q == qid and d == did:
                return path, lineno
    raise AssertionError("unreachable: the judgment was read before")


def read_qrels(paths: Union[PathLike, Sequence[PathLike]]) -> Qrels:
    """Judgments ``{query_id: {doc_id: score}}`` from one or several files (merged, see module docs)."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    qrels: Qrels = {}
    for i, path in enumerate(paths):
        count = 0
        for lineno, qid, did, score in _qrel_lines(path):
            count += 1
            docs = qrels.setdefault(qid, {})
            previous = docs.get(did)
            if previous is not None and previous != score:
                first_path, first_line = _first_place(paths[: i + 1], qid, did)
                raise InputError(
                    f"query {qid!r} / document {did!r} is judged {score} here and {previous} at "
                    f"{first_path}:{first_line}.", path=path, line=lineno,
                    fix="keep one judgment per (query, document) pair.")
            docs[did] = score
        if count == 0:
            raise InputError("qrels file has no judgments.", path=path, fix="check that this is the right file.")
    return qrels


@contextlib.contextmanager
def _output(path: PathLike) -> Iterator[IO[bytes]]:
    """A binary handle that lands atomically at ``path``, gzip-compressed when the name ends in ``.gz``."""
    with atomic_write(path, "wb") as raw:
        if str(path).endswith(".gz"):
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as handle:
                yield handle
        else:
            yield raw


def write_qrels(path: PathLike, qrels: Mapping[str, Mapping[str, float]], format: str = "beir") -> None:
    """Write judgments atomically: ``beir`` (TSV with header) or ``trec`` (``qid 0 docid rel``)."""
    if format not in ("beir", "trec"):
        raise ConfigError(f"qrels format must be 'beir' or 'trec', got {format!r}.")
    template = "{}\t{}\t{}\n" if format == "beir" else "{} 0 {} {}\n"
    lines = ["query-id\tcorpus-id\tscore\n"] if format == "beir" else []
    for qid, docs in qrels.items():
        for did, score in docs.items():
            if not math.isfinite(score):
                raise ConfigError(f"qrel score {score!r} for ({qid!r}, {did!r}) is not a finite number.")
            # Integral scores are written as grades; real scores with repr() so they read back exactly.
            lines.append(template.format(qid, did, int(score) if float(score).is_integer() else repr(float(score))))
    with _output(path) as handle:
        handle.write("".join(lines).encode("utf-8"))


def check_qrels(qrels: Mapping[str, Mapping[str, float]], queries: TextStore, corpus: TextStore,
                path: Optional[PathLike] = None) -> None:
    """Fail when a judgment names a query or document that is not in ``queries`` / ``corpus`` (vectorized)."""
    for what, ids, store in (("query", list(qrels), queries),
                             ("document", list({d: None for docs in qrels.values() for d in docs}), corpus)):
        unknown = np.flatnonzero(store.lookup(ids) < 0)
        if unknown.size:
            files = ", ".join(p for _, p in store.sources) or "the given store"
            raise InputError(
                f"{unknown.size} of {len(ids)} judged {what} id(s) are not in {files}; first {ids[unknown[0]]!r}.",
                path=path, fix=f"check that the qrels belong to this {'query file' if what == 'query' else 'corpus'}.")


def read_run(path: PathLike) -> Run:
    """A TREC run ``qid Q0 docid rank score tag`` as ``{qid: {docid: score}}``."""
    run: Run = {}
    for lineno, line in numbered_lines(path, "run"):
        fields = line.split()
        if len(fields) != 6:
            raise InputError(f"{len(fields)} columns; a run line has 6 (qid Q0 docid rank score tag).", path=path,
                             line=lineno, fix="write runs in TREC format.")
        try:
            score = float(fields[4])
        except ValueError:
            raise InputError(f"score {fields[4]!r} is not a number.", path=path, line=lineno,
                             fix="the fifth column of a run line is the score.") from None
        docs = run.setdefault(fields[0], {})
        if fields[2] in docs:
            raise InputError(f"document {fields[2]!r} is ranked twice for query {fields[0]!r}.", path=path,
                             line=lineno, fix="list each document once per query.")
        docs[fields[2]] = score
    if not run:
        raise InputError("run file has no lines.", path=path, fix="check that this is the right file.")
    return run


def _string_array(values) -> pa.Array:
    if isinstance(values, TextStore):
        return values.table.column("_id").combine_chunks()
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    if isinstance(values, pa.Array):
        return values
    return pa.array(list(values), pa.string())


def write_run(path: PathLike, query_ids: Sequence[str], doc_indices: np.ndarray, scores: np.ndarray,
              doc_ids, tag: str = "densekit", queries_per_chunk: int = 2048) -> int:
    """Write search output as a TREC run atomically; returns the number of lines written.

    ``doc_indices`` (int, ``[n_queries, k]``) index ``doc_ids`` (a sequence of str, an Arrow array or a
    :class:`TextStore`); ``-1`` marks padding and is skipped. Rows are written in the given order (already
    sorted by score by the search), ranked 1, 2, ... among the kept entries.
    """
    doc_indices = np.asarray(doc_indices)
    scores = np.asarray(scores)
    if doc_indices.ndim != 2 or scores.shape != doc_indices.shape:
        raise ConfigError(f"doc_indices and scores must be 2-D arrays of one shape, got {doc_indices.shape} "
                          f"and {scores.shape}.")
    if len(query_ids) != doc_indices.shape[0]:
        raise ConfigError(f"{len(query_ids)} query ids for {doc_indices.shape[0]} rows of results.")
    if not tag or any(c.isspace() for c in tag):
        raise ConfigError(f"run tag {tag!r} must be non-empty and contain no whitespace.")
    docs = _string_array(doc_ids)
    qids = _string_array(query_ids)
    if doc_indices.size and doc_indices.max() >= len(docs):
        raise ConfigError(f"doc index {int(doc_indices.max())} out of range for {len(docs)} document ids.")
    q0, end = pa.scalar("Q0"), pa.scalar(tag + "\n")
    written = 0
    with _output(path) as handle:
        for start in range(0, doc_indices.shape[0], queries_per_chunk):
            block = doc_indices[start:start + queries_per_chunk]
            keep = block >= 0
            rows, _ = np.nonzero(keep)
            if rows.size == 0:
                continue
            ranks = np.cumsum(keep, axis=1)[keep]
            lines = pc.binary_join_element_wise(
                qids.take(pa.array(rows + start)), q0, docs.take(pa.array(block[keep].astype(np.int64))),
                pc.cast(pa.array(ranks), pa.string()),
                pc.cast(pa.array(scores[start:start + queries_per_chunk][keep]), pa.string()), end, " ")
            _write_string_values(handle, lines)
            written += rows.size
    return written


def _write_string_values(handle, array: pa.Array) -> None:
    """Write the concatenated values of a null-free string array straight from its data buffer."""
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)[array.offset: array.offset + len(array) + 1]
    handle.write(memoryview(array.buffers()[2])[int(offsets[0]): int(offsets[-1])])
