"""OpenMatch-style text templates over named TSV columns: ``--doc_template "Title: <title> Text: <text>"``
with ``--doc_column_names id,title,text``.

Each ``<name>`` in the template is replaced by the value of the column of that name; the rendered string is
the record's text (its title is left empty, since the template already placed it). Naming a column the
template does not know is fine; a ``<name>`` with no such column is a ConfigError before any reading.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, Mapping, Sequence, Union

from densekit.data.formats.lines import numbered_lines
from densekit.data.store import Kind, Row, TextStore
from densekit.errors import ConfigError, InputError

PLACEHOLDER = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)>")


def parse_column_names(names: Union[str, Sequence[str]]) -> list[str]:
    """``"id,title,text"`` (or a list) -> ``["id", "title", "text"]``; names must be unique and non-empty."""
    columns = [n.strip() for n in names.split(",")] if isinstance(names, str) else [str(n).strip() for n in names]
    if not columns or any(not c for c in columns) or len(set(columns)) != len(columns):
        raise ConfigError(f"column names {names!r} must be unique, non-empty and comma-separated (id,title,text).")
    return columns


def check_template(template: str, columns: Sequence[str]) -> list[str]:
    """The placeholders of ``template``; ConfigError when one is not a column."""
    names = PLACEHOLDER.findall(template)
    unknown = sorted(set(names) - set(columns))
    if unknown:
        raise ConfigError(f"template {template!r} uses {', '.join(f'<{n}>' for n in unknown)} but the columns are "
                          f"{','.join(columns)}; name that column or change the template.")
    return names


def render_template(template: str, fields: Mapping[str, str]) -> str:
    """Replace every ``<name>`` with ``fields[name]`` (a single pass: values are never re-expanded)."""
    return PLACEHOLDER.sub(lambda m: fields[m.group(1)] if m.group(1) in fields else m.group(0), template)


def iter_templated_rows(path: Union[str, Path], column_names: Union[str, Sequence[str]], template: str,
                        id_column: str = "id", kind: Kind = "corpus") -> Iterator[Row]:
    """Rows ``(id, "", rendered template, line)`` of a header-less TSV with the given columns."""
    columns = parse_column_names(column_names)
    if id_column not in columns:
        raise ConfigError(f"the id column {id_column!r} is not among the column names {','.join(columns)}.")
    check_template(template, columns)
    id_at = columns.index(id_column)
    for lineno, line in numbered_lines(path, kind):
        fields = line.split("\t")
        if len(fields) != len(columns):
            raise InputError(f"{len(fields)} tab-separated fields, but {len(columns)} column names "
                             f"({','.join(columns)}).", path=path, line=lineno,
                             fix="give one name per column; a text must not contain tabs.")
        doc_id = fields[id_at].strip()
        if not doc_id:
            raise InputError("empty id.", path=path, line=lineno, fix="give every record a unique id.")
        yield doc_id, "", render_template(template, dict(zip(columns, fields))), lineno


def read_templated_tsv(path: Union[str, Path], column_names: Union[str, Sequence[str]], template: str,
                       id_column: str = "id", kind: Kind = "corpus") -> TextStore:
    """A :class:`TextStore` whose texts are ``template`` rendered with each line's columns."""
    store = TextStore.from_rows(iter_templated_rows(path, column_names, template, id_column, kind), source=path,
                                kind=kind)
    if len(store) == 0:
        raise InputError(f"{kind} file has no records.", path=path, fix="check that this is the right file.")
    return store
