"""DPR's retriever results JSON, read and checked before any tokenisation.

The file is what ``dense_retriever.py`` (and ``densekit evaluate --qa_file``) writes:
``[{"question", "answers": [...], "ctxs": [{"id", "title", "text", "score", "has_answer"}]}]`` with ``ctxs``
sorted by score. Why checked up front: a missing ``answers`` or a ``ctx`` without ``text`` would otherwise
surface as a KeyError deep in preprocessing, minutes into a run, without saying which entry was wrong.
Errors name the file and the entry (0-based index in the JSON list, as ``entry N``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from densekit.errors import InputError
from densekit.files import read_json

FIX = "each entry needs {\"question\": str, \"answers\": [str, ...], \"ctxs\": [{\"id\", \"title\", \"text\", " \
      "\"score\", \"has_answer\"}]} as written by DPR's dense_retriever.py or `densekit evaluate --qa_file`"


@dataclass
class Context:
    """One retrieved passage of a question."""

    id: str
    title: str
    text: str
    score: float = 0.0
    has_answer: bool = False


@dataclass
class ReaderQuestion:
    """One entry of a results file: the question, its answers and its retrieved passages (best first)."""

    question: str
    answers: list[str]
    ctxs: list[Context] = field(default_factory=list)


def _entry_error(path: Path, index: int, message: str) -> InputError:
    return InputError(f"entry {index}: {message}.", path=path, fix=FIX)


def parse_context(raw: Any, path: Path, index: int, position: int) -> Context:
    """One ``ctxs`` element; ``position`` is its index in the entry's list (for the error message)."""
    where = f"ctxs[{position}]"
    if not isinstance(raw, dict):
        raise _entry_error(path, index, f"{where} is {type(raw).__name__}, not an object")
    text = raw.get("text")
    if not isinstance(text, str):
        raise _entry_error(path, index, f"{where} has no text" if text is None else
                           f"{where} text is {type(text).__name__}, not a string")
    title = raw.get("title") or ""
    if not isinstance(title, str):
        raise _entry_error(path, index, f"{where} title is {type(title).__name__}, not a string")
    ctx_id = raw.get("id", raw.get("passage_id"))
    if ctx_id is None:
        raise _entry_error(path, index, f"{where} has no id")
    score = raw.get("score", 0.0)
    try:
        score = float(score)  # DPR writes scores as strings
    except (TypeError, ValueError):
        raise _entry_error(path, index, f"{where} score {score!r} is not a number") from None
    return Context(id=str(ctx_id), title=title, text=text, score=score, has_answer=bool(raw.get("has_answer", False)))


def parse_entry(raw: Any, path: Path, index: int, require_ctxs: bool = True) -> ReaderQuestion:
    """One element of the results list, checked."""
    if not isinstance(raw, dict):
        raise _entry_error(path, index, f"is {type(raw).__name__}, not an object")
    question = raw.get("question")
    if not isinstance(question, str) or not question.strip():
        raise _entry_error(path, index, "has no question")
    if "answers" not in raw:
        raise _entry_error(path, index, f"question {question[:60]!r} has no answers")
    answers = raw["answers"]
    if not isinstance(answers, list):
        raise _entry_error(path, index, f"answers is {type(answers).__name__} {str(answers)[:60]!r}, not a list")
    if not all(isinstance(a, str) for a in answers):
        raise _entry_error(path, index, "answers must all be strings")
    ctxs = raw.get("ctxs")
    if ctxs is None and not require_ctxs:
        ctxs = []
    if not isinstance(ctxs, list):
        raise _entry_error(path, index, "has no ctxs list" if ctxs is None else
                           f"ctxs is {type(ctxs).__name__}, not a list")
    return ReaderQuestion(question=question, answers=list(answers),
                          ctxs=[parse_context(c, path, index, i) for i, c in enumerate(ctxs)])


def read_results(path: str | Path, limit: Optional[int] = None) -> list[ReaderQuestion]:
    """Read and check a results JSON; ``limit`` keeps the first entries only (every entry is still checked)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("results file not found.", path=path, fix="give the JSON written by the retriever")
    data = read_json(path, fix=FIX)
    if not isinstance(data, list):
        raise InputError(f"expected a JSON list of questions, got {type(data).__name__}.", path=path, fix=FIX)
    questions = [parse_entry(raw, path, i) for i, raw in enumerate(data)]
    if not questions:
        raise InputError("no questions in the results file.", path=path, fix=FIX)
    return questions[:limit] if limit else questions


def read_gold_passages(path: str | Path) -> dict[str, Context]:
    """Question -> gold passage, from a DPR retriever JSON (``positive_ctxs``, first one) or a results JSON
    whose entries carry ``gold`` ctx objects. Used for ``--gold_passages``: DPR's reader then trains on the
    gold passage as the positive instead of any retrieved passage that happens to contain the answer string."""
    path = Path(path)
    if not path.is_file():
        raise InputError("gold passages file not found.", path=path)
    data = read_json(path, fix="a DPR retriever JSON with positive_ctxs")
    if not isinstance(data, list):
        raise InputError("expected a JSON list (DPR retriever format).", path=path)
    gold: dict[str, Context] = {}
    for index, raw in enumerate(data):
        if not isinstance(raw, dict) or not isinstance(raw.get("question"), str):
            raise InputError(f"entry {index}: has no question.", path=path)
        positives = raw.get("positive_ctxs")
        if not isinstance(positives, list) or not positives:
            raise InputError(f"entry {index}: has no positive_ctxs list.", path=path,
                             fix="every entry of a --gold_passages file needs its gold passage in positive_ctxs")
        gold.setdefault(raw["question"], parse_context(positives[0], path, index, 0))
    return gold
