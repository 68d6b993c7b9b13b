"""Readers and writers of the files densekit consumes and produces: corpora, queries, qrels, runs.

Corpus and query files are read by the first format in :data:`TEXT_FORMATS` that says it can read them
(judging by the file name without ``.gz`` and by the first line): BEIR JSON lines, then tab-separated
text. A new format is one small module with ``can_read(path, first_line)`` and a row iterator, added with
:func:`register_text_format`; nothing else changes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from densekit.data.formats import beir, tsv
from densekit.data.formats.lines import numbered_lines
from densekit.data.formats.trec import check_qrels, read_qrels, read_run, write_qrels, write_run
from densekit.data.formats.tsv import read_tsv_texts
from densekit.data.store import Kind, Row, TextStore
from densekit.errors import InputError

__all__ = [
    "TextFormat", "TEXT_FORMATS", "register_text_format", "read_texts", "read_corpus", "read_queries",
    "read_tsv_texts", "read_qrels", "write_qrels", "check_qrels", "read_run", "write_run",
]


@dataclass(frozen=True)
class TextFormat:
    """A corpus/query file format: ``can_read(path, first_line)`` and ``rows(path, kind)`` -> (id, title, text, line)."""

    name: str
    can_read: Callable[[Path, str], bool]
    rows: Callable[[Path, str], Iterator[Row]]


TEXT_FORMATS: list[TextFormat] = [
    TextFormat("beir-jsonl", beir.can_read, beir.iter_jsonl_rows),
    TextFormat("tsv", tsv.can_read, lambda path, kind: tsv.iter_tsv_rows(path, what=kind)),
]


def register_text_format(text_format: TextFormat) -> TextFormat:
    """Ask ``text_format`` before the built-in formats (user formats win)."""
    TEXT_FORMATS.insert(0, text_format)
    return text_format


def read_texts(path: str | Path, kind: Kind = "corpus") -> TextStore:
    """Read a corpus or query file in whichever supported format it is in."""
    path = Path(path)
    first = next(numbered_lines(path, kind), None)
    if first is None:
        raise InputError(f"{kind} file is empty.", path=path, fix="check that this is the right file.")
    text_format = next((f for f in TEXT_FORMATS if f.can_read(path, first[1])), None)
    if text_format is None:
        raise InputError(f"cannot tell the format of this {kind} file.", path=path,
                         fix="use BEIR jsonl ({\"_id\", \"title\", \"text\"} per line) or TSV (id<TAB>text).")
    store = TextStore.from_rows(text_format.rows(path, kind), source=path, kind=kind)
    if len(store) == 0:
        raise InputError(f"{kind} file has no records.", path=path, fix="check that this is the right file.")
    return store


def read_corpus(path: str | Path) -> TextStore:
    """Documents ``_id -> (title, text)`` from a BEIR jsonl or TSV file (``.gz`` too)."""
    return read_texts(path, "corpus")


def read_queries(path: str | Path) -> TextStore:
    """Queries ``_id -> text`` from a BEIR jsonl or TSV file (``.gz`` too); an empty query is an error."""
    return read_texts(path, "queries")
