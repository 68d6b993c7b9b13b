"""Numbered, decoded lines of a plain or gzip-compressed text file, with every read failure turned into an InputError.

All line-oriented readers (jsonl, tsv, qrels, runs) go through :func:`numbered_lines` so that a missing file,
bytes that are not UTF-8, or a truncated ``.gz`` are reported the same way: file, line, and what to do.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Iterator

from densekit.errors import InputError


def is_gzip(path: str | Path) -> bool:
    return str(path).endswith(".gz")


def base_name(path: str | Path) -> str:
    """The file name without a trailing ``.gz``, lower-cased (used to pick a format by suffix)."""
    name = Path(path).name.lower()
    return name[:-3] if name.endswith(".gz") else name


def require_file(path: str | Path, what: str = "input") -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file not found.", path=path,
                         fix="check the path (relative paths are resolved from the current directory).")
    return path


def numbered_lines(path: str | Path, what: str = "input") -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` with the end-of-line removed; blank lines are skipped.

    Lines are decoded one by one, so the error for a non-UTF-8 byte names its line.
    """
    path = require_file(path, what)
    opener = gzip.open if is_gzip(path) else open
    lineno = 0
    try:
        with opener(path, "rb") as handle:
            for lineno, raw in enumerate(handle, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise InputError(
                        f"bytes that are not UTF-8 at column {err.start + 1}.", path=path, line=lineno,
                        fix="re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`).",
                    ) from None
                if lineno == 1 and line.startswith("\ufeff"):
                    line = line[1:]
                line = line.rstrip("\r\n")
                if line.strip():
                    yield lineno, line
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise InputError(
            f"compressed file is truncated or corrupt after line {lineno} ({err}).", path=path, line=lineno + 1,
            fix="download or copy the file again (`gzip -t FILE` checks it).",
        ) from None
