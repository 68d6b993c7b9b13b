"""TextStore: id -> (title, text) for corpora and query sets, backed by an Arrow table that can be memory-mapped.

Why Arrow: a corpus read once is written as an Arrow IPC file and later runs map it into memory without
parsing or copying, so a multi-gigabyte corpus costs neither start-up time nor RAM until texts are read.
Why a sorted id column: id lookups binary-search a sorted copy of the ids (``pyarrow.compute.search_sorted``)
stored in the same file, so opening a store with millions of ids is instant (no Python dict to build).

Rows keep their order in the source file; ``_line`` remembers each row's line so that later checks can
still name the line of a bad record. Readers of the file formats live in :mod:`densekit.data.formats`; every
one of them builds its stores with :meth:`TextStore.from_rows`, which is where ids are checked (:func:`check_id`).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from glob import escape as glob_escape
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Mapping, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from densekit.errors import ConfigError, InputError
from densekit.files import atomic_write

FORMAT_VERSION = 1
BATCH_ROWS = 65_536
# large_string: one chunk may exceed 2 GB, so a store is written as a single record batch and every column
# maps as one contiguous array (Arrow's take on many-chunk columns concatenates them first, which is slow).
ROW_SCHEMA = pa.schema([("_id", pa.string()), ("title", pa.large_string()), ("text", pa.large_string()),
                       ("_line", pa.int64())])
INDEX_COLUMNS = ("_sorted_id", "_sorted_pos")
Kind = Literal["corpus", "queries"]
Row = tuple[str, str, str, int]  # (id, title, text, line number in the source file)
PathLike = Union[str, Path]


def _rows_to_batch(rows: list[Row]) -> pa.RecordBatch:
    ids, titles, texts, lines = zip(*rows)
    return pa.record_batch([pa.array(ids, pa.string()), pa.array(titles, pa.large_string()),
                            pa.array(texts, pa.large_string()), pa.array(lines, pa.int64())], schema=ROW_SCHEMA)


_WHITESPACE = re.compile(r"\s")  # the characters str.split() splits on (Unicode whitespace)


def check_id(value: str, path: Optional[PathLike], line: Optional[int], what: str = "id") -> str:
    """``value`` if it can be an id, else an InputError naming file, line and the id.

    Why no whitespace: ids are written as columns of TREC runs and qrels, which are split on whitespace, so an
    id such as "doc 19" would make files that densekit (and trec_eval) cannot read back. Refused when read,
    before any encoding starts, rather than when the run is written.
    """
    if not value:
        raise InputError(f"empty {what}.", path=path, line=line, fix="give every record a non-empty id.")
    found = _WHITESPACE.search(value)
    if found:
        raise InputError(f"{what} {value!r} contains whitespace ({found.group()!r}); ids become columns of "
                         "whitespace-separated run and qrels files.", path=path, line=line,
                         fix="rename the id or replace its whitespace (e.g. with '_') in the file, and in the "
                             "qrels that name it.")
    return value


def _check_kind(kind: str) -> None:
    if kind not in ("corpus", "queries"):
        raise ConfigError(f"kind must be 'corpus' or 'queries', got {kind!r}.")


class TextStore:
    """Rows ``(_id, title, text)`` in file order with fast id lookup; build it with the class methods.

    ``sources`` lists ``(first_row, path)`` for every file the rows came from, so :meth:`location` can name
    the file and line of any row (several files are concatenated by :func:`load_store`).
    """

    def __init__(self, table: pa.Table, sources: Optional[Sequence[tuple[int, str]]] = None) -> None:
        self._table = table
        self.sources: list[tuple[int, str]] = [(int(r), str(p)) for r, p in (sources or [])]
        self._ids_list: Optional[list[str]] = None
        self._sorted_np: Optional[np.ndarray] = None
        if INDEX_COLUMNS[0] in table.column_names:
            self._sorted_ids = _one_array(table.column(INDEX_COLUMNS[0]))
            self._sorted_pos = _one_array(table.column(INDEX_COLUMNS[1]))
        else:
            ids = _one_array(table.column("_id"))
            order = pc.sort_indices(ids)
            self._sorted_ids = ids.take(order)
            self._sorted_pos = order.cast(pa.int64())
        self._check_unique()

    # ----------------------------------------------------------------------------------------- building
    @classmethod
    def from_rows(cls, rows: Iterable[Row], source: Optional[PathLike] = None, kind: Kind = "corpus") -> "TextStore":
        """Collect reader rows into a store, checking ids (:func:`check_id`) and what ``kind`` needs (a query
        must have text)."""
        _check_kind(kind)
        what = "document id" if kind == "corpus" else "query id"
        batches: list[pa.RecordBatch] = []
        buffer: list[Row] = []
        empty_docs: list[int] = []
        for row in rows:
            check_id(row[0], source, row[3], what)
            if not row[2].strip():
                if kind == "queries":
                    raise InputError(f"query {row[0]!r} has empty text.", path=source, line=row[3],
                                     fix="give every query a text or remove the line.")
                if not row[1].strip():
                    empty_docs.append(row[3])
            buffer.append(row)
            if len(buffer) == BATCH_ROWS:
                batches.append(_rows_to_batch(buffer))
                buffer = []
        if buffer:
            batches.append(_rows_to_batch(buffer))
        if empty_docs:
            warnings.warn(f"{source or '<records>'}: {len(empty_docs)} document(s) have neither title nor text (first at line "
                          f"{empty_docs[0]}); they are kept and encode as empty strings.", stacklevel=2)
        table = pa.Table.from_batches(batches, schema=ROW_SCHEMA)
        return cls(table, [(0, str(source))] if source is not None else None)

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]], kind: Kind = "corpus") -> "TextStore":
        """A store from dicts with ``_id``, ``text`` and optional ``title`` (line = position, from 1)."""
        def rows() -> Iterator[Row]:
            for n, rec in enumerate(records, 1):
                yield str(rec["_id"]), str(rec.get("title") or ""), str(rec["text"]), n
        return cls.from_rows(rows(), kind=kind)

    @classmethod
    def build(cls, records: Union["TextStore", Iterable[Mapping[str, Any]]], path: PathLike) -> "TextStore":
        """Write records (dicts or a store) to an Arrow IPC file at ``path`` atomically and open it mapped."""
        store = records if isinstance(records, TextStore) else cls.from_records(records)
        store.write(path)
        return cls.open(path)

    def write(self, path: PathLike) -> None:
        """Write this store (rows and id index) as an Arrow IPC file, via a temporary file and rename."""
        table = self._table.select(list(ROW_SCHEMA.names))
        table = table.append_column(INDEX_COLUMNS[0], self._sorted_ids).append_column(INDEX_COLUMNS[1], self._sorted_pos)
        meta = {b"densekit_text_store": str(FORMAT_VERSION).encode(), b"sources": json.dumps(self.sources).encode()}
        table = table.replace_schema_metadata(meta).combine_chunks()
        with atomic_write(path, "wb") as handle:
            with pa.ipc.new_file(handle, table.schema) as writer:
                writer.write_table(table)  # one record batch: each column maps as one array

    @classmethod
    def open(cls, path: PathLike) -> "TextStore":
        """Memory-map a store written by :meth:`write`; texts are read from the page cache, not copied."""
        path = Path(path)
        if not path.is_file():
            raise InputError("text store file not found.", path=path, fix="build it with TextStore.build first.")
        try:
            table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
        except (pa.ArrowInvalid, OSError) as err:
            raise InputError(f"not a readable Arrow file ({err}).", path=path,
                             fix="delete it; it is rebuilt from the source file.") from None
        meta = table.schema.metadata or {}
        if meta.get(b"densekit_text_store") != str(FORMAT_VERSION).encode():
            raise InputError("not a densekit text store of this version.", path=path,
                             fix="delete it; it is rebuilt from the source file.")
        return cls(table, json.loads(meta.get(b"sources", b"[]")))

    @classmethod
    def from_file(cls, path: PathLike, kind: Kind = "corpus", cache_dir: Optional[PathLike] = None) -> "TextStore":
        """Read a corpus or query file in any supported format (see :mod:`densekit.data.formats`).

        With ``cache_dir`` the parsed store is kept as an Arrow file keyed by the source's content and
        absolute path (see :func:`cache_path`): later runs map it instead of parsing.
        """
        from densekit.data.formats import read_texts

        _check_kind(kind)
        if cache_dir is None:
            return read_texts(path, kind)
        cache_file = cache_path(path, kind, cache_dir)
        if cache_file.is_file():
            try:
                return cls.open(cache_file)
            except InputError:
                pass  # unreadable or older format: rebuild below
        store = read_texts(path, kind)
        store.write(cache_file)
        prefix = cache_file.name.rsplit("-", 1)[0]
        for stale in cache_file.parent.glob(f"{glob_escape(prefix)}-*.arrow"):
            if stale != cache_file:  # an earlier content of the same file; a run that maps it keeps its mapping
                stale.unlink(missing_ok=True)
        return cls.open(cache_file)

    @classmethod
    def concat(cls, stores: Sequence["TextStore"]) -> "TextStore":
        """Rows of several stores one after the other; an id present in two of them is an InputError."""
        if len(stores) == 1:
            return stores[0]
        tables, sources, offset = [], [], 0
        for store in stores:
            tables.append(store._table.select(list(ROW_SCHEMA.names)).replace_schema_metadata(None))
            sources.extend((offset + first, path) for first, path in store.sources)
            offset += len(store)
        return cls(pa.concat_tables(tables), sources)

    # ------------------------------------------------------------------------------------------ lookup
    def _check_unique(self) -> None:
        n = len(self)
        if n < 2:
            return
        same = pc.equal(self._sorted_ids.slice(0, n - 1), self._sorted_ids.slice(1)).to_numpy(zero_copy_only=False)
        hits = np.flatnonzero(same)
        if hits.size == 0:
            return
        k = int(hits[0])
        rows = sorted((int(self._sorted_pos[k].as_py()), int(self._sorted_pos[k + 1].as_py())))
        (path_a, line_a), (path_b, line_b) = self.location(rows[0]), self.location(rows[1])
        dup = self._sorted_ids[k].as_py()
        where = f"line {line_a} and line {line_b}" if path_a == path_b else f"{path_a}:{line_a} and {path_b}:{line_b}"
        raise InputError(f"duplicate id {dup!r} at {where} ({hits.size} duplicate(s) in all).", path=path_b,
                         line=line_b, fix="ids must be unique; remove or rename the repeated records.")

    def location(self, i: int) -> tuple[Optional[str], int]:
        """``(source path or None, line)`` of row ``i``."""
        path = None
        for first, source in self.sources:
            if first <= i:
                path = source
        return path, int(self._table.column("_line")[i].as_py())

    def lookup(self, ids: Iterable[str]) -> np.ndarray:
        """Row index of every id, -1 where the id is unknown (vectorized binary search)."""
        needles = _as_string_array(ids)
        n = len(self)
        if n == 0 or len(needles) == 0:
            return np.full(len(needles), -1, dtype=np.int64)
        if hasattr(pc, "search_sorted"):  # pyarrow >= 22
            pos = pc.search_sorted(self._sorted_ids, needles).to_numpy().astype(np.int64)
        else:  # UTF-8 byte order equals code point order, so Python's string order agrees with Arrow's
            if self._sorted_np is None:
                self._sorted_np = np.asarray(self._sorted_ids.to_pylist(), dtype=object)
            pos = np.searchsorted(self._sorted_np, np.asarray(needles.to_pylist(), dtype=object)).astype(np.int64)
        np.minimum(pos, n - 1, out=pos)
        if len(needles) <= 32:  # a string take has a fixed cost of ~100 us; a few scalar reads are cheaper
            found = np.array([self._sorted_ids[int(p)].as_py() == s for p, s in zip(pos, needles.to_pylist())])
        else:
            found = pc.equal(self._sorted_ids.take(pos), needles).to_numpy(zero_copy_only=False)
        rows = self._sorted_pos.to_numpy()[pos]  # zero-copy view of the int64 column
        return np.where(found, rows, -1).astype(np.int64)

    def indices_of(self, ids: Iterable[str]) -> np.ndarray:
        """Row indices of ``ids`` (int64); the first unknown id is an InputError."""
        ids = ids if isinstance(ids, (list, tuple, np.ndarray, pa.Array, pa.ChunkedArray)) else list(ids)
        rows = self.lookup(ids)
        missing = np.flatnonzero(rows < 0)
        if missing.size:
            first = ids[int(missing[0])]
            first = first.as_py() if isinstance(first, pa.Scalar) else first
            raise InputError(f"{missing.size} id(s) not found, first {first!r}.", path=self._source_label(),
                             fix="check that the ids belong to this corpus/query file.")
        return rows

    def index_of(self, doc_id: str) -> int:
        """Row index of one id; KeyError when unknown."""
        row = int(self.lookup([doc_id])[0]) if isinstance(doc_id, str) else -1
        if row < 0:
            raise KeyError(doc_id)
        return row

    def __contains__(self, doc_id: object) -> bool:
        return isinstance(doc_id, str) and int(self.lookup([doc_id])[0]) >= 0

    # ------------------------------------------------------------------------------------------ access
    def __len__(self) -> int:
        return self._table.num_rows

    def __repr__(self) -> str:
        return f"TextStore({len(self)} rows from {self._source_label()})"

    def _source_label(self) -> str:
        return ", ".join(p for _, p in self.sources) or "<memory>"

    @property
    def table(self) -> pa.Table:
        """The rows as an Arrow table (``_id``, ``title``, ``text``, ``_line``)."""
        return self._table.select(list(ROW_SCHEMA.names))

    @property
    def ids(self) -> list[str]:
        """All ids in file order (a Python list, built once on first use)."""
        if self._ids_list is None:
            self._ids_list = self._table.column("_id").to_pylist()
        return self._ids_list

    def title_at(self, i: int) -> str:
        return self._table.column("title")[int(i)].as_py()

    def text_at(self, i: int) -> str:
        return self._table.column("text")[int(i)].as_py()

    def id_at(self, i: int) -> str:
        return self._table.column("_id")[int(i)].as_py()

    def get(self, doc_id: str) -> dict[str, str]:
        """``{"_id", "title", "text"}`` of one id; KeyError when unknown."""
        i = self.index_of(doc_id)
        return {"_id": doc_id, "title": self.title_at(i), "text": self.text_at(i)}

    def _take(self, column: str, indices: Iterable[int]) -> list[str]:
        idx = np.asarray(indices if not isinstance(indices, range) else list(indices), dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"row index out of range 0..{len(self) - 1}")
        return _take(self._table.column(column), idx)

    def texts(self, indices: Iterable[int]) -> list[str]:
        """Texts of many rows at once (one Arrow take)."""
        return self._take("text", indices)

    def titles(self, indices: Iterable[int]) -> list[str]:
        return self._take("title", indices)


def _one_array(column: pa.ChunkedArray) -> pa.Array:
    """The column as one array, without copying when it already is one chunk (a mapped store)."""
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _take(column: pa.ChunkedArray, idx: np.ndarray) -> list:
    """Values at ``idx``, taking from each chunk separately (ChunkedArray.take would concatenate chunks)."""
    if column.num_chunks == 1:
        return column.chunk(0).take(pa.array(idx)).to_pylist()
    starts = np.cumsum([0] + [len(c) for c in column.chunks])
    which = np.searchsorted(starts, idx, side="right") - 1
    out: list = [None] * len(idx)
    for c in np.unique(which):
        picks = np.flatnonzero(which == c)
        for j, value in zip(picks, column.chunk(int(c)).take(pa.array(idx[picks] - starts[c])).to_pylist()):
            out[j] = value
    return out


def _as_string_array(ids: Iterable[Any]) -> pa.Array:
    if isinstance(ids, (pa.Array, pa.ChunkedArray)) and pa.types.is_string(ids.type):
        return ids
    values = ids if isinstance(ids, (list, tuple, np.ndarray)) else list(ids)
    try:
        return pa.array(values, pa.string())
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        return pa.array([str(v) for v in values], pa.string())


def cache_path(path: PathLike, kind: Kind, cache_dir: PathLike) -> Path:
    """Where :meth:`TextStore.from_file` keeps the Arrow copy of ``path``: keyed by content, path and version.

    Why the content and not size + mtime: ``cp -p``, ``rsync -t`` and ``tar`` restore the mtime, so an edit
    that keeps the size would be served stale. SHA-256 over the bytes costs about 4 ms for SciFact's 8 MB
    corpus (parsing it takes ~300 ms). The path stays in the key so the store names the right file in errors.
    """
    source = Path(path)
    if not source.is_file():
        raise InputError(f"{kind} file not found.", path=source,
                         fix="check the path (relative paths are resolved from the current directory).")
    where = hashlib.sha256(f"{FORMAT_VERSION}|{kind}|{source.resolve()}".encode()).hexdigest()[:12]
    content = hashlib.sha256()
    with open(source, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            content.update(chunk)
    return Path(cache_dir) / f"{source.name}.{kind}.{where}-{content.hexdigest()[:20]}.arrow"


def load_store(paths: Union[PathLike, Sequence[PathLike]], kind: Kind = "corpus",
               cache_dir: Optional[PathLike] = None) -> TextStore:
    """One store from one or several files (rows concatenated in order; ids must be unique across files)."""
    paths = [paths] if isinstance(paths, (str, Path, os.PathLike)) else list(paths)
    if not paths:
        raise ConfigError(f"no {kind} file given.")
    return TextStore.concat([TextStore.from_file(p, kind=kind, cache_dir=cache_dir) for p in paths])
