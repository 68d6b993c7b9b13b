"""Question/answer files for answer-matching evaluation: DPR qa files, DPR retriever JSON, JSON lines.

- DPR qa file (``qa/dev.csv``, ``nq-test.csv``): no header, ``question<TAB>answers`` with the answers a
  list, written as JSON (``["a", "b"]``) or as a Python literal (``['a', 'b']``, which DPR reads with
  ``ast.literal_eval``); a field holding a double quote is csv-quoted (``csv.reader(delimiter="\\t")``).
  An optional third column is taken as the question id. Questions are ``q<position>`` otherwise (0-based,
  blank lines not counted), as DPR json questions without an id are named in :mod:`.dpr`.
- DPR retriever JSON (``retriever/dev.json``): ``question`` + ``answers`` (+ the gold ``positive_ctxs``,
  kept as :attr:`QAExample.gold`).
- JSON lines (Tevatron's ``wikipedia-nq`` style, or any ``{"query_id", "query", "answers"}`` lines;
  ``question``/``text`` and ``id``/``_id`` are accepted as well).

Every malformed line is an :class:`~densekit.errors.InputError` naming the file and line: a line without
answers, answers that are not a list (or not strings), an empty list, an empty question, an empty file.
"""
from __future__ import annotations

import ast
import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from densekit.data.formats.dpr import check_answers, iter_dpr_questions
from densekit.data.formats.lines import base_name, numbered_lines, require_file
from densekit.errors import InputError

PathLike = Union[str, Path]
QA_FIX = 'a qa line is question<TAB>["answer", ...] (answers a JSON or Python list of strings).'


@dataclass
class QAExample:
    """A question, its answers, and where it was read (``line``); ``gold`` are DPR ``positive_ctxs`` if given."""

    qid: str
    question: str
    answers: list[str]
    line: int = 0
    gold: list[dict[str, str]] = field(default_factory=list)


def _parse_answers(field_text: str, path: Path, line: int) -> list[str]:
    text = field_text.strip()
    if not text:
        raise InputError("the answers column is empty.", path=path, line=line, fix=QA_FIX)
    try:
        value: Any = json.loads(text)
    except json.JSONDecodeError:
        try:
            value = ast.literal_eval(text)  # DPR's own reader: single-quoted Python lists
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise InputError(f"the answers {text[:60]!r} are neither a JSON nor a Python list.", path=path,
                             line=line, fix=QA_FIX) from None
    answers = check_answers(value, path, line)
    if not answers:
        raise InputError("the answers list is empty.", path=path, line=line,
                         fix="give every question at least one answer, or remove the line.")
    return answers


def read_qa_csv(path: PathLike) -> list[QAExample]:
    """A DPR qa file (see module doc); lines are parsed one by one so errors name their line."""
    path = require_file(path, "qa")
    examples: list[QAExample] = []
    for lineno, line in numbered_lines(path, "qa"):
        fields = next(csv.reader([line], delimiter="\t"))
        if len(fields) < 2:
            raise InputError("a question without answers (no tab-separated answers column).", path=path,
                             line=lineno, fix=QA_FIX)
        if len(fields) > 3:
            raise InputError(f"{len(fields)} tab-separated columns; a qa line has 2 (question, answers) or 3 "
                             "(question, answers, id).", path=path, line=lineno,
                             fix="csv-quote a question that contains a tab, or remove the tab.")
        question = fields[0]
        if not question.strip():
            raise InputError("empty question.", path=path, line=lineno, fix=QA_FIX)
        answers = _parse_answers(fields[1], path, lineno)
        qid = fields[2].strip() if len(fields) == 3 and fields[2].strip() else f"q{len(examples)}"
        examples.append(QAExample(qid, question, answers, lineno))
    return examples


def read_qa_jsonl(path: PathLike) -> list[QAExample]:
    """JSON lines with a question (``query``/``question``/``text``), ``answers`` and an optional id."""
    from densekit.data.formats.tevatron import iter_json_lines

    examples: list[QAExample] = []
    for lineno, record in iter_json_lines(path, "qa"):
        if not isinstance(record, dict):
            raise InputError(f"expected a JSON object, got {type(record).__name__}.", path=path, line=lineno,
                             fix='each line is {"query_id", "query", "answers": [...]}.')
        question = next((record[k] for k in ("query", "question", "text") if isinstance(record.get(k), str)), None)
        if question is None or not question.strip():
            raise InputError('no question text ("query", "question" or "text").', path=path, line=lineno,
                             fix='each line is {"query_id", "query", "answers": [...]}.')
        if "answers" not in record:
            raise InputError('a question without "answers".', path=path, line=lineno,
                             fix='each line is {"query_id", "query", "answers": [...]}.')
        answers = check_answers(record["answers"], path, lineno)
        if not answers:
            raise InputError("the answers list is empty.", path=path, line=lineno,
                             fix="give every question at least one answer, or remove the line.")
        raw = next((record[k] for k in ("query_id", "id", "_id", "qid") if record.get(k) not in (None, "")), None)
        qid = str(raw) if raw is not None else f"q{len(examples)}"
        examples.append(QAExample(qid, question, answers, lineno))
    return examples


def read_qa(path: PathLike) -> list[QAExample]:
    """Questions with answers from any supported file, chosen by name: ``.json`` DPR retriever JSON,
    ``.jsonl`` JSON lines, anything else (``.csv``, ``.tsv``) a DPR qa file; ``.gz`` too."""
    path = require_file(path, "qa")
    name = base_name(path)
    if name.endswith(".json"):
        examples = [QAExample(q.qid, q.question, q.answers, q.line, q.positive_ctxs) for q in iter_dpr_questions(path)]
    elif name.endswith(".jsonl"):
        examples = read_qa_jsonl(path)
    else:
        examples = read_qa_csv(path)
    if not examples:
        raise InputError("the qa file has no questions.", path=path, fix="check that this is the right file.")
    seen: dict[str, int] = {}
    for example in examples:
        if example.qid in seen:
            raise InputError(f"question id {example.qid!r} is used twice (first at line {seen[example.qid]}).",
                             path=path, line=example.line, fix="give every question its own id.")
        seen[example.qid] = example.line
    return examples
