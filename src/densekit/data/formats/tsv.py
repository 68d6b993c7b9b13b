"""Tab-separated corpora and query sets: MS MARCO ``id<TAB>text``, OpenMatch ``id<TAB>title<TAB>text``, or named columns.

Fields are split on tabs only, with no quoting (MS MARCO texts contain quotes, never tabs). Without a header,
2 columns mean id/text and 3 columns id/title/text. A first line whose first field is a usual id column name
(``id``, ``_id``, ``docid``, ``qid``...) is taken as a header, and columns are then found by name: ``title``,
and ``text`` (or ``passage``, ``contents``, ``query``, ``body``), unless the caller names them.

One exception to "no quoting": DPR's passage files (``psgs_w100.tsv``, header ``id<TAB>text<TAB>title``) are
written by Python's csv module, which wraps a field holding a quote in quotes and doubles the quotes inside.
Under that exact header a field that starts and ends with a quote is unquoted, so the texts equal the
original passages (read as plain tabs, a third of SQuAD's passages kept stray quotes).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

from densekit.data.formats.lines import base_name, numbered_lines
from densekit.data.store import Kind, Row, TextStore
from densekit.errors import ConfigError, InputError

Column = Union[int, str]
ID_NAMES = ("_id", "id", "docid", "doc_id", "pid", "qid", "query_id", "query-id", "corpus-id")
TEXT_NAMES = ("text", "passage", "contents", "query", "body")


def can_read(path: str | Path, first_line: str) -> bool:
    """Anything with a tab on its first line, or a ``.tsv``/``.txt`` name."""
    return base_name(path).endswith((".tsv", ".txt")) or "\t" in first_line


def _resolve(column: Column, header: Optional[list[str]], path, what: str) -> int:
    if isinstance(column, int):
        return column
    if header is None:
        raise ConfigError(f"{path}: the {what} column is given by name ({column!r}) but the file has no header; "
                          "give it by position (0-based) instead.")
    if column not in header:
        raise InputError(f"no column named {column!r} in the header {header}.", path=path, line=1,
                         fix=f"pass the name of the {what} column as it appears in the header.")
    return header.index(column)


def iter_tsv_rows(path: str | Path, id_column: Optional[Column] = None,
                  text_columns: Optional[Union[Column, Sequence[Column]]] = None,
                  title_column: Optional[Column] = None, header: Optional[bool] = None,
                  what: str = "corpus") -> Iterator[Row]:
    """Rows ``(id, title, text, line)``; several text columns are joined with a space."""
    lines = numbered_lines(path, what)
    first = next(lines, None)
    if first is None:
        return
    first_no, first_line = first
    first_fields = first_line.split("\t")
    if header is None:
        header = first_fields[0].strip().lower() in ID_NAMES
    names = [f.strip() for f in first_fields] if header else None
    lower = [n.lower() for n in names] if names else None
    ncols = len(first_fields)

    if id_column is None:
        id_column = next((i for i, n in enumerate(lower) if n in ID_NAMES), 0) if lower else 0
    if title_column is None and text_columns is None:
        if lower:
            title_column = lower.index("title") if "title" in lower else None
            text_at = next((i for i, n in enumerate(lower) if n in TEXT_NAMES), None)
            if text_at is None:
                raise InputError(f"no text column in the header {names}.", path=path, line=first_no,
                                 fix=f"name one column {TEXT_NAMES[0]!r} or pass text_columns=.")
            text_columns = [text_at]
        elif ncols == 2:
            text_columns = [1]
        elif ncols == 3:
            title_column, text_columns = 1, [2]
        else:
            raise InputError(f"{ncols} tab-separated columns and no header; expected 2 (id, text) or 3 "
                             "(id, title, text).", path=path, line=first_no,
                             fix="add a header line naming the columns, or pass id_column/text_columns.")
    if isinstance(text_columns, (int, str)):
        text_columns = [text_columns]
    id_at = _resolve(id_column, names, path, "id")
    text_at = [_resolve(c, names, path, "text") for c in (text_columns or [])]
    title_at = _resolve(title_column, names, path, "title") if title_column is not None else None
    if not text_at:
        raise ConfigError("text_columns must name at least one column.")
    highest = max([id_at, *text_at] + ([title_at] if title_at is not None else []))
    if highest >= ncols:
        raise InputError(f"column {highest} requested but the first line has {ncols} columns.", path=path,
                         line=first_no, fix="check id_column / text_columns / title_column.")

    csv_quoted = lower == ["id", "text", "title"]  # DPR's psgs_w100.tsv, written by csv.writer

    def parse(lineno: int, line: str) -> Row:
        fields = line.split("\t")
        if csv_quoted:
            fields = [_csv_unquote(f) for f in fields]
        if len(fields) != ncols:
            raise InputError(f"{len(fields)} tab-separated columns, but line {first_no} has {ncols}.", path=path,
                             line=lineno, fix="every line needs the same columns; a text must not contain tabs.")
        doc_id = fields[id_at].strip()
        if not doc_id:
            raise InputError("empty id.", path=path, line=lineno, fix="give every record a unique id.")
        text = fields[text_at[0]] if len(text_at) == 1 else " ".join(fields[i] for i in text_at)
        return doc_id, fields[title_at] if title_at is not None else "", text, lineno

    if not header:
        yield parse(first_no, first_line)
    for lineno, line in lines:
        yield parse(lineno, line)


def _csv_unquote(field: str) -> str:
    """``"a ""b"" c"`` -> ``a "b" c``: a csv.writer field (quoted because it holds a quote), else unchanged."""
    if len(field) >= 2 and field[0] == '"' and field[-1] == '"':
        return field[1:-1].replace('""', '"')
    return field


def read_tsv_texts(path: str | Path, id_column: Optional[Column] = None,
                   text_columns: Optional[Union[Column, Sequence[Column]]] = None,
                   title_column: Optional[Column] = None, header: Optional[bool] = None,
                   kind: Kind = "corpus") -> TextStore:
    """A :class:`TextStore` from a TSV file; columns by 0-based position or, with a header, by name."""
    rows = iter_tsv_rows(path, id_column=id_column, text_columns=text_columns, title_column=title_column,
                         header=header, what=kind)
    store = TextStore.from_rows(rows, source=path, kind=kind)
    if len(store) == 0:
        raise InputError(f"{kind} file has no records.", path=path, fix="check that this is the right file.")
    return store
