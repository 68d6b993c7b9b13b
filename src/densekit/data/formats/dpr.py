"""DPR training JSON: one JSON list of questions with their contexts (the format of DPR's nq-train etc.).

    [{"question": "...", "answers": ["..."],
      "positive_ctxs": [{"title": "...", "text": "...", "passage_id": "123"}],
      "negative_ctxs": [...], "hard_negative_ctxs": [...]}]

Reading gives a :class:`~densekit.data.formats.collection.Collection`: positives are judged 1, negatives and
hard negatives 0. The passage id is ``passage_id``, else ``psg_id``, else ``id``; a passage without one gets
``dpr-`` + the first 16 hex digits of the SHA-1 of ``title + "\\t" + text``, so the same passage always gets
the same id (in any file, any run). A question gets its ``id``/``qid`` field when it has one, else
``q<position>`` (0-based position in the list). Answers are not judgments, so :func:`read_dpr` does not
keep them; :func:`iter_dpr_questions` reads each question with its ``answers`` and positive passages (what
answer-matching evaluation and answer-aware mining need), and :func:`write_dpr` writes the format back.
The list is decoded item by item so an error names the line where the bad item starts.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Union

from densekit.data.formats.collection import Collection
from densekit.data.formats.lines import require_file
from densekit.data.formats.tevatron import CollectionBuilder, check_id
from densekit.errors import InputError
from densekit.files import atomic_write

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


@dataclass
class DPRQuestion:
    """One item of a DPR retriever file as answer-aware code reads it.

    ``positive_ctxs`` are ``{"passage_id", "title", "text"}`` dicts with the id resolved as in :func:`read_dpr`;
    ``line`` is where the item starts (for error messages).
    """

    qid: str
    question: str
    answers: list[str]
    line: int
    positive_ctxs: list[dict[str, str]] = field(default_factory=list)


def check_answers(value: Any, path: PathLike, line: int, where: str = "") -> list[str]:
    """``answers`` as a list of strings, or an InputError naming file and line (shared with qa files)."""
    fix = 'answers are a list of strings, e.g. ["Denver Broncos", "Broncos"].'
    if not isinstance(value, list):
        raise InputError(f"answers{where} are not a list (got {type(value).__name__}: {str(value)[:60]!r}).",
                         path=path, line=line, fix=fix)
    for answer in value:
        if not isinstance(answer, str):
            raise InputError(f"answer {answer!r}{where} is not a string.", path=path, line=line, fix=fix)
    return list(value)


def iter_dpr_questions(path: PathLike, require_answers: bool = True) -> Iterator[DPRQuestion]:
    """Questions of a DPR retriever file with their answers and positives, in file order.

    Ids are those of :func:`read_dpr` (``id``/``qid`` field, else ``q<position>``). With ``require_answers``
    a question without a non-empty ``answers`` list is an InputError naming the line.
    """
    for index, (line, item) in enumerate(iter_json_list(path)):
        if not isinstance(item, dict):
            raise InputError(f"item {index} is a {type(item).__name__}, not an object.", path=path, line=line, fix=FIX)
        raw_qid = item.get("id", item.get("qid"))
        qid = check_id(raw_qid, "question id", path, line) if raw_qid is not None else f"q{index}"
        question = item.get("question")
        if not isinstance(question, str) or not question.strip():
            raise InputError(f'item {index} has no "question" text.', path=path, line=line, fix=FIX)
        if "answers" not in item and not require_answers:
            answers: list[str] = []
        else:
            answers = check_answers(item.get("answers"), path, line, where=f" of item {index}")
        if require_answers and not answers:
            raise InputError(f'item {index} has no answers (answer-matching needs at least one).', path=path,
                             line=line, fix='give every question a non-empty "answers" list.')
        positives = []
        for ctx in item.get("positive_ctxs") or []:
            if not isinstance(ctx, dict) or not isinstance(ctx.get("text"), str):
                raise InputError(f'a context in "positive_ctxs" of item {index} has no string "text".', path=path,
                                 line=line, fix=FIX)
            title = ctx.get("title") or ""
            raw = next((ctx[k] for k in PASSAGE_ID_KEYS if ctx.get(k) not in (None, "")), None)
            did = check_id(raw, "passage id", path, line) if raw is not None else passage_id(title, ctx["text"])
            positives.append({"passage_id": did, "title": title, "text": ctx["text"]})
        yield DPRQuestion(qid, question, answers, line, positives)


def write_dpr(path: PathLike, items: Iterable[Mapping[str, Any]]) -> int:
    """Write DPR retriever items (a JSON list, one item per line, as DPR's files) atomically; returns the count."""
    count = 0
    with atomic_write(path, "w") as handle:
        handle.write("[")
        for item in items:
            handle.write(("," if count else "") + "\n" + json.dumps(item, ensure_ascii=False))
            count += 1
        handle.write("\n]\n")
    return count
