"""DPR training JSON: one JSON list of questions with their contexts (the format of DPR's nq-train etc.).

    [{"question": "...", "answers": ["..."],
      "positive_ctxs": [{"title": "...", "text": "...", "passage_id": "123"}],
      "negative_ctxs": [...], "hard_negative_ctxs": [...]}]

Reading gives a :class:`~densekit.data.formats.collection.Collection`: positives are judged 1, negatives and
hard negatives 0. The passage id is ``passage_id``, else ``psg_id``, else ``id``; a passage without one gets
``dpr-`` + the first 16 hex digits of the SHA-1 of ``title + "\\t" + text``, so the same passage always gets
the same id (in any file, any run). A question gets its ``id``/``qid`` field when it has one, else
``q<position>`` (0-based position in the list). Answers are not judgments and are not kept.
The list is decoded item by item so an error names the line where the bad item starts.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterator, Union

from densekit.data.formats.collection import Collection
from densekit.data.formats.lines import require_file
from densekit.data.formats.tevatron import CollectionBuilder, check_id
from densekit.errors import InputError

PathLike = Union[str, Path]
CONTEXT_KEYS = (("positive_ctxs", 1), ("negative_ctxs", 0), ("hard_negative_ctxs", 0))
PASSAGE_ID_KEYS = ("passage_id", "psg_id", "id")
FIX = 'the file must be a JSON list of {"question", "positive_ctxs": [{"title", "text", "passage_id"}], ...}.'


def passage_id(title: str, text: str) -> str:
    """The id given to a passage that has none: stable across files and runs."""
    return "dpr-" + hashlib.sha1(f"{title}\t{text}".encode("utf-8")).hexdigest()[:16]


def _read_text(path: Path) -> str:
    import gzip
    import zlib

    try:
        data = gzip.open(path, "rb").read() if str(path).endswith(".gz") else path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise InputError(f"compressed file is truncated or corrupt ({err}).", path=path,
                         fix="download or copy the file again (`gzip -t FILE` checks it).") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise InputError("bytes that are not UTF-8.", path=path, line=line,
                         fix="re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`).") from None


def iter_json_list(path: PathLike) -> Iterator[tuple[int, Any]]:
    """``(line where the item starts, item)`` for each item of a JSON list file."""
    path = require_file(path, "DPR")
    text = _read_text(path)
    decoder = json.JSONDecoder()
    pos = len(text) - len(text.lstrip())
    if not text[pos:pos + 1] == "[":
        raise InputError("expected a JSON list ('[' first).", path=path, line=text.count("\n", 0, pos) + 1, fix=FIX)
    pos += 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text):
            raise InputError("the JSON list is not closed (truncated file?).", path=path,
                             line=text.count("\n") + 1, fix=FIX)
        if text[pos] == "]":
            return
        line = text.count("\n", 0, pos) + 1
        try:
            item, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise InputError(f"malformed JSON ({err.msg}).", path=path, line=err.lineno, fix=FIX) from None
        yield line, item


def read_dpr(path: PathLike) -> Collection:
    """Read a DPR training/dev JSON file (``.json`` or ``.json.gz``)."""
    builder = CollectionBuilder(path)
    for index, (line, item) in enumerate(iter_json_list(path)):
        if not isinstance(item, dict):
            raise InputError(f"item {index} is a {type(item).__name__}, not an object.", path=path, line=line, fix=FIX)
        raw_qid = item.get("id", item.get("qid"))
        qid = check_id(raw_qid, "question id", path, line) if raw_qid is not None else f"q{index}"
        builder.add_query(qid, item.get("question"), line)
        for key, score in CONTEXT_KEYS:
            contexts = item.get(key) or []
            if not isinstance(contexts, list):
                raise InputError(f'"{key}" of item {index} is not a list.', path=path, line=line, fix=FIX)
            for ctx in contexts:
                if not isinstance(ctx, dict):
                    raise InputError(f'a context in "{key}" of item {index} is not an object.', path=path,
                                     line=line, fix=FIX)
                title, text = ctx.get("title") or "", ctx.get("text")
                if not isinstance(text, str) or not isinstance(title, str):
                    raise InputError(f'a context in "{key}" of item {index} has no string "text".', path=path,
                                     line=line, fix=FIX)
                raw = next((ctx[k] for k in PASSAGE_ID_KEYS if ctx.get(k) not in (None, "")), None)
                did = check_id(raw, "passage id", path, line) if raw is not None else passage_id(title, text)
                builder.add_doc(did, title, text, line)
                builder.judge(qid, did, score, line)
    if not builder.queries:
        raise InputError("no questions in this DPR file.", path=path, fix=FIX)
    return builder.build()
