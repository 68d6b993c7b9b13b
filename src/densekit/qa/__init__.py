"""Open-domain QA support: DPR's answer matching, qa files and answer-aware retrieval evaluation.

The reader (``densekit.reader``) imports :mod:`densekit.qa.answers` for Exact Match so that retrieval
accuracy and reader EM are judged by one implementation.
"""
from densekit.qa.answers import (
    MATCH_MODES,
    AnswerMatcher,
    answer_tokens,
    exact_match,
    f1_score,
    has_answer,
    normalize_answer,
    prepare_text,
    regex_match,
)

__all__ = [
    "MATCH_MODES",
    "AnswerMatcher",
    "answer_tokens",
    "exact_match",
    "f1_score",
    "has_answer",
    "normalize_answer",
    "prepare_text",
    "regex_match",
]
