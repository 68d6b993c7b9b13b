"""Answer matching for open-domain QA, as DPR (and GC-DPR) score retrieval and the reader.

DPR does not judge retrieval against qrels: a retrieved passage is a hit when it *contains an answer
string*. Two matchers are used across the DPR family and both are here:

- ``string`` (DPR's default): the passage and every answer are Unicode-NFD normalised and split into
  DPR ``SimpleTokenizer`` tokens (a run of letters, digits and combining marks, or one single character
  that is neither whitespace nor a control character); tokens are lower-cased, and an answer matches
  when its token sequence occurs as a contiguous sub-sequence of the passage's tokens. Spans that cut a
  token therefore do not match (``Ge`` is not in ``General``) while a hyphenated compound does
  (``14`` is in ``14-story``: ``14``, ``-``, ``story``).
- ``regex`` (DPR's ``--match regex``, used for CuratedTREC whose answers are patterns): every answer is
  a regular expression searched case-insensitively in the NFD-normalised passage.

The reader's Exact Match uses SQuAD's ``normalize_answer`` (lower-case, punctuation and the articles
a/an/the removed, whitespace collapsed), which is what DPR's reader uses as well.

Deliberate differences from DPR (both turn silent surprises into visible behaviour):
- an answer without any token (e.g. ``""`` or ``"   "``) matches nothing; DPR's loop would match every
  passage with it;
- an answer that is not a valid regular expression raises :class:`~densekit.errors.InputError`; DPR
  silently counts it as "no match", which hides a broken qa file behind a low accuracy.

Matching many questions against the same passages (1,743 questions x 100 passages on SQuAD dev) is
dominated by tokenisation, so :func:`prepare_text` does the passage side once and
:class:`AnswerMatcher` does the answer side once; :func:`has_answer` is the one-shot convenience.
"""
from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from typing import Iterable, Literal, Sequence

import regex

from densekit.errors import InputError

MatchMode = Literal["string", "regex"]
MATCH_MODES: tuple[str, ...] = ("string", "regex")

# DPR's SimpleTokenizer: ALPHA_NUM = [\p{L}\p{N}\p{M}]+ , NON_WS = [^\p{Z}\p{C}]
_TOKEN = regex.compile(r"[\p{L}\p{N}\p{M}]+|[^\p{Z}\p{C}]", flags=regex.UNICODE | regex.MULTILINE)
# Tokens never contain whitespace (letters, digits, marks, or a single non-separator, non-control
# character), so joining them with spaces and padding both ends turns "token sequence occurs in token
# sequence" into a plain substring test, which is much faster than comparing lists position by position.
_SEP = " "


def _nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def answer_tokens(text: str) -> list[str]:
    """DPR ``SimpleTokenizer`` tokens of ``text`` after NFD normalisation, lower-cased (``words(uncased=True)``)."""
    return [token.lower() for token in _TOKEN.findall(_nfd(text))]


def _check_mode(mode: str) -> None:
    if mode not in MATCH_MODES:
        raise ValueError(f"match mode must be one of {', '.join(MATCH_MODES)}, not {mode!r}")


def prepare_text(text: str, mode: MatchMode = "string") -> str:
    """The passage side of a match, computed once per passage and reused for every question.

    ``string`` mode: the lower-cased tokens joined by single spaces with a space at both ends;
    ``regex`` mode: the NFD-normalised text (what DPR searches the patterns in).
    """
    _check_mode(mode)
    if mode == "regex":
        return _nfd(text)
    return _SEP + _SEP.join(answer_tokens(text)) + _SEP


def _check_answers(answers: Sequence[str] | Iterable[str]) -> list[str]:
    if isinstance(answers, (str, bytes)):
        raise TypeError("answers must be a list of strings, not one string (wrap it: [answer])")
    answers = list(answers)
    for answer in answers:
        if not isinstance(answer, str):
            raise TypeError(f"every answer must be a string, got {type(answer).__name__}: {answer!r}")
    return answers


def compile_answer_pattern(pattern: str) -> re.Pattern[str]:
    """Compile one regex-mode answer the way DPR's ``regex_match`` does (case-insensitive, multi-line).

    Raises :class:`InputError` naming the pattern when it is not a valid regular expression.
    """
    try:
        return re.compile(_nfd(pattern), flags=re.IGNORECASE | re.UNICODE | re.MULTILINE)
    except re.error as error:
        raise InputError(f"answer {pattern!r} is not a valid regular expression ({error}).",
                         fix="escape the pattern, or match answers as strings (--match string).") from None


class AnswerMatcher:
    """The answers of one question, prepared once, matched against many passages.

    ``matcher(text)`` tokenises ``text`` itself; ``matcher.match_prepared(prepare_text(text, mode))``
    reuses a passage prepared earlier (the fast path when many questions share passages).
    """

    def __init__(self, answers: Sequence[str], mode: MatchMode = "string") -> None:
        _check_mode(mode)
        self.mode = mode
        self.answers = _check_answers(answers)
        if mode == "string":
            needles = []
            for answer in self.answers:
                tokens = answer_tokens(answer)
                if tokens:  # an answer without tokens matches nothing (DPR: everything)
                    needles.append(_SEP + _SEP.join(tokens) + _SEP)
            self._needles: list[str] = needles
            self._patterns: list[re.Pattern[str]] = []
        else:
            self._needles = []
            self._patterns = [compile_answer_pattern(answer) for answer in self.answers]

    def match_prepared(self, prepared: str) -> bool:
        """Whether the passage prepared by :func:`prepare_text` (same mode) contains an answer."""
        if self.mode == "string":
            return any(needle in prepared for needle in self._needles)
        return any(pattern.search(prepared) is not None for pattern in self._patterns)

    def __call__(self, text: str) -> bool:
        return self.match_prepared(prepare_text(text, self.mode))


def has_answer(answers: Sequence[str], text: str, mode: MatchMode = "string") -> bool:
    """Whether ``text`` contains one of ``answers``, as DPR's ``has_answer`` decides it (see module doc)."""
    return AnswerMatcher(answers, mode)(text)


def regex_match(text: str, pattern: str) -> bool:
    """DPR's ``regex_match``: ``pattern`` found case-insensitively in ``text`` (invalid pattern: InputError)."""
    return compile_answer_pattern(pattern).search(_nfd(text)) is not None


# SQuAD v1.1 evaluation (also DPR's reader): lower-case, drop punctuation, drop articles, fix whitespace.
_ARTICLES = re.compile(r"\b(a|an|the)\b", flags=re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's ``normalize_answer``: lower-case, ASCII punctuation removed, a/an/the removed, spaces collapsed."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: Sequence[str]) -> bool:
    """SQuAD/DPR Exact Match: the normalised prediction equals some normalised answer."""
    answers = _check_answers(answers)
    normalized = normalize_answer(prediction)
    return any(normalized == normalize_answer(answer) for answer in answers)


def f1_score(prediction: str, answers: Sequence[str]) -> float:
    """SQuAD's token F1 (bag of normalised words), the best over ``answers``; 0.0 when there are none."""
    answers = _check_answers(answers)
    predicted = normalize_answer(prediction).split()
    best = 0.0
    for answer in answers:
        gold = normalize_answer(answer).split()
        common = Counter(predicted) & Counter(gold)
        overlap = sum(common.values())
        if overlap == 0:
            continue
        precision, recall = overlap / len(predicted), overlap / len(gold)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best
