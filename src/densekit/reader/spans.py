"""Best-span decoding: the highest ``start + end`` logit pair inside the passage text, then back to characters.

Why the constraints: the model scores every position of ``[CLS] question [SEP] title [SEP] text`` and padding,
and its best pair may lie in the question or title, run backwards or be a whole paragraph long. DPR's reader
(``_get_best_spans``) only considers ``start <= end < start + max_answer_length`` and, in our sequences, only
passage-text tokens; the chosen span is widened to whole words (DPR's ``_extend_span_to_full_words``; here
with the fast tokenizer's word ids) and cut out of the original passage text with its character offsets, so
the prediction keeps the passage's casing, accents and punctuation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from densekit.errors import ConfigError


@dataclass
class Span:
    """A span of passage text tokens (inclusive, counted from the passage's first text token)."""

    start: int
    end: int
    score: float


def best_span(start_logits: torch.Tensor, end_logits: torch.Tensor, text_start: int, text_count: int,
              max_answer_length: int) -> Optional[Span]:
    """The best span among sequence positions ``[text_start, text_start + text_count)`` with
    ``start <= end`` and ``end - start + 1 <= max_answer_length``; None when the passage has no text tokens.

    ``start_logits``/``end_logits`` are one sequence's logits (1-D). Returned positions are relative to
    ``text_start``. Ties go to the earliest start, then the shortest span.
    """
    if max_answer_length < 1:
        raise ConfigError(f"max_answer_length must be at least 1, got {max_answer_length}.")
    if text_count <= 0:
        return None
    start = start_logits[text_start:text_start + text_count].float()
    end = end_logits[text_start:text_start + text_count].float()
    n = start.shape[0]
    scores = start[:, None] + end[None, :]
    offsets = torch.arange(n)[None, :] - torch.arange(n)[:, None]  # end - start
    allowed = (offsets >= 0) & (offsets < max_answer_length)
    scores = scores.masked_fill(~allowed, float("-inf"))
    flat = int(torch.argmax(scores))  # first maximum in row-major order: earliest start, then shortest
    s, e = divmod(flat, n)
    return Span(start=s, end=e, score=float(scores[s, e]))


def extend_to_words(start: int, end: int, words: Sequence[int]) -> tuple[int, int]:
    """Widen a token span so it neither starts nor ends inside a word (``##`` pieces of BERT, etc.)."""
    while start > 0 and words[start] >= 0 and words[start - 1] == words[start]:
        start -= 1
    while end + 1 < len(words) and words[end] >= 0 and words[end + 1] == words[end]:
        end += 1
    return start, end


def span_text(text: str, offsets: Sequence[Sequence[int]], words: Sequence[int], start: int, end: int) -> str:
    """The passage text of text tokens ``start..end`` (inclusive), widened to whole words."""
    start, end = extend_to_words(start, end, words)
    return text[offsets[start][0]:offsets[end][1]]
