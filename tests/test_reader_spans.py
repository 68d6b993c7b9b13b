"""Span decoding on hand-made logits: inside the passage text only, start <= end, length limit, whole words;
and Exact Match per top-k setting on a hand-made prediction set."""
from __future__ import annotations

import pytest
import torch

from densekit.errors import ConfigError
from densekit.reader.predict import PassageReading, choose, score_predictions
from densekit.reader.preprocess import PassageRef, PreparedQuestion, PreprocessSettings, ReaderData
from densekit.reader.spans import best_span, extend_to_words, span_text


def logits(length: int, peaks: dict[int, float]) -> torch.Tensor:
    values = torch.zeros(length)
    for position, value in peaks.items():
        values[position] = value
    return values


def test_best_span_never_leaves_the_passage_text():
    # sequence: 0 [CLS], 1-3 question, 4 [SEP], 5 title, 6 [SEP], 7-11 text, 12-15 padding
    start = logits(16, {0: 50.0, 2: 40.0, 5: 30.0, 13: 60.0, 8: 3.0})
    end = logits(16, {0: 50.0, 3: 40.0, 6: 30.0, 15: 60.0, 9: 2.0})
    span = best_span(start, end, text_start=7, text_count=5, max_answer_length=10)
    assert (span.start, span.end, span.score) == (1, 2, 5.0)  # positions 8-9, relative to the text start


def test_best_span_start_before_end_and_length_limit():
    # the best start (6) lies after the best end (2): the pair 6 -> 2 is never taken
    start = logits(10, {6: 5.0, 1: 4.0})
    end = logits(10, {2: 5.0})
    span = best_span(start, end, text_start=0, text_count=10, max_answer_length=10)
    assert (span.start, span.end, span.score) == (1, 2, 9.0)
    # 6 -> 9 (4 tokens, 9.5) beats 1 -> 2 (2 tokens, 2.0) when allowed; a limit of 3 tokens refuses it
    start = logits(10, {6: 5.0, 1: 1.0})
    end = logits(10, {9: 4.5, 2: 1.0})
    span = best_span(start, end, 0, 10, max_answer_length=10)
    assert (span.start, span.end) == (6, 9)
    short = best_span(start, end, 0, 10, max_answer_length=3)
    assert short.start <= short.end and short.end - short.start + 1 <= 3
    assert (short.start, short.end) == (6, 6)  # 5 + 0 beats 1 + 1
    one = best_span(start, end, 0, 10, max_answer_length=1)
    assert one.start == one.end


def test_best_span_edge_cases():
    assert best_span(torch.zeros(5), torch.zeros(5), 5, 0, 10) is None  # no text tokens (truncated away)
    tie = best_span(torch.zeros(6), torch.zeros(6), 2, 4, 10)
    assert (tie.start, tie.end) == (0, 0)  # ties: earliest start, shortest span
    with pytest.raises(ConfigError):
        best_span(torch.zeros(5), torch.zeros(5), 0, 5, 0)


def test_span_widened_to_whole_words_and_cut_from_original_text():
    text = "Built by Gustave Eiffel's firm in 1889."
    # tokens: Built | by | Gus | ##tave | Eiff | ##el | ' | s | firm | in | 1889 | .
    offsets = [[0, 5], [6, 8], [9, 12], [12, 16], [17, 21], [21, 23], [23, 24], [24, 25], [26, 30], [31, 33],
               [34, 38], [38, 39]]
    words = [0, 1, 2, 2, 3, 3, 4, 5, 6, 7, 8, 9]
    assert extend_to_words(3, 4, words) == (2, 5)
    assert span_text(text, offsets, words, 3, 4) == "Gustave Eiffel"
    assert span_text(text, offsets, words, 10, 10) == "1889"


def _question(text: str, answers: list[str]) -> PreparedQuestion:
    return PreparedQuestion(question=text, answers=answers, question_ids=[], passages=[PassageRef(0)])


def test_exact_match_per_top_docs_on_hand_made_predictions():
    data = ReaderData(passages=[], settings=PreprocessSettings(sequence_length=32, is_train=False), questions=[
        _question("q1", ["Gustave Eiffel"]), _question("q2", ["1926"]), _question("q3", ["the Seine", "Seine river"]),
        _question("q4", ["blue"])])

    def reading(rank, relevance, text):
        return PassageReading(rank=rank, passage_id=f"p{rank}", relevance=relevance, span_score=0.0, text=text)

    readings = [
        [reading(0, 1.0, "Gustave Eiffel."), reading(1, 0.5, "bridges")],  # right at k=1 and k=2 (punctuation)
        [reading(0, 0.1, "May"), reading(1, 2.0, "1926")],  # wrong at k=1, right at k=2
        [reading(0, 3.0, "Seine"), reading(1, 1.0, "Paris")],  # "the Seine" normalises to "seine": right
        [reading(0, 1.0, "red"), reading(1, 5.0, "a blue sky")],  # wrong at both
    ]
    predictions, metrics = score_predictions(data, readings, [2, 1])
    assert metrics["EM@1"] == 0.5 and metrics["EM@2"] == 0.75
    assert metrics["questions"] == 4 and metrics["questions_scored"] == 4
    assert predictions[1]["predictions"]["2"] == {"prediction": "1926", "passage_id": "p1", "passage_rank": 1,
                                                  "relevance": 2.0, "span_score": 0.0, "exact_match": True}
    assert predictions[3]["predictions"]["2"]["exact_match"] is False
    assert choose(readings[1], 1).text == "May" and choose([], 5) is None
    with pytest.raises(ConfigError):
        score_predictions(data, readings, [0])
