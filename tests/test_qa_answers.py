"""DPR answer matching (densekit.qa.answers) on a table of cases, and SQuAD's EM normalisation.

``_dpr_reference`` restates DPR's ``has_answer`` loop literally (tokens compared position by position)
so the fast substring implementation is checked against the definition, not only against expectations.
"""
from __future__ import annotations

import unicodedata

import pytest
import regex

from densekit.errors import InputError
from densekit.qa import AnswerMatcher, answer_tokens, exact_match, f1_score, has_answer, normalize_answer
from densekit.qa.answers import prepare_text, regex_match

_DPR_TOKEN = regex.compile(r"([\p{L}\p{N}\p{M}]+)|([^\p{Z}\p{C}])", flags=regex.IGNORECASE | regex.UNICODE | regex.MULTILINE)


def _dpr_reference(answers, text):
    """DPR has_answer, string mode, as its loop is written (for non-empty answers)."""
    words = [m.group().lower() for m in _DPR_TOKEN.finditer(unicodedata.normalize("NFD", text))]
    for answer in answers:
        needle = [m.group().lower() for m in _DPR_TOKEN.finditer(unicodedata.normalize("NFD", answer))]
        for i in range(0, len(words) - len(needle) + 1):
            if needle == words[i:i + len(needle)]:
                return True
    return False


STRING_CASES = [
    # (answers, text, expected, what it shows)
    (["Paris"], "The capital is paris.", True, "uncased"),
    (["PARIS"], "the capital is Paris", True, "uncased answer"),
    (["Notre Dame"], "University of Notre  Dame,\nIndiana", True, "whitespace between tokens is free"),
    (["Ge"], "General Electric", False, "a prefix of a token is not a match"),
    (["eneral"], "General Electric", False, "a suffix of a token is not a match"),
    (["14"], "a 14-story building", True, "hyphen is its own token"),
    (["14-story"], "a 14 - story building", True, "symbols are single tokens"),
    (["14 story"], "a 14-story building", False, "the hyphen token must be in the answer too"),
    (["U.S."], "the u.s. army", True, "punctuation tokens match"),
    (["U.S."], "the US army", False, "punctuation is not removed"),
    (["the Beatles"], "Beatles music", False, "articles are not removed in string mode"),
    (["Beatles"], "the Beatles' music", True, "apostrophe splits"),
    (["Zoë"], "Zoe\u0308 sang", True, "NFC answer vs NFD text"),
    (["Zoe\u0308"], "Zoë sang", True, "NFD answer vs NFC text"),
    (["Zoe"], "Zoë sang", False, "combining marks stay in the token"),
    (["Café"], "CAFÉ Society", True, "uncased with accents"),
    (["1,000"], "about 1,000 people", True, "comma inside numbers"),
    (["1000"], "about 1,000 people", False, "comma is a token"),
    (["$5"], "costs $5 only", True, "currency symbol"),
    (["x", "Paris"], "Paris", True, "any answer"),
    ([], "Paris", False, "no answers"),
    (["Bell"], "Alexander Graham Bell", True, "last token"),
    (["Alexander"], "Alexander Graham Bell", True, "first token"),
    (["Graham Bell"], "Alexander Graham\tBell", True, "tab is whitespace"),
    (["東京"], "首都は東京です", False, "CJK runs are one token (as in DPR)"),
    (["snake_case"], "snake_case name", True, "underscore is a symbol token"),
]


@pytest.mark.parametrize("answers,text,expected,why", STRING_CASES, ids=[c[3] for c in STRING_CASES])
def test_string_mode_table(answers, text, expected, why):
    assert has_answer(answers, text) is expected
    assert has_answer(answers, text, mode="string") is expected
    assert _dpr_reference(answers, text) is expected  # the table is DPR's behaviour, not only ours


def test_tokens_are_dpr_simple_tokenizer_words():
    assert answer_tokens("A 14-story, U.S. building!") == ["a", "14", "-", "story", ",", "u", ".", "s", ".", "building", "!"]
    assert answer_tokens("Zoë") == ["zoe\u0308"]
    assert answer_tokens("   ") == []


def test_empty_answer_matches_nothing():
    # DPR's loop would match every passage with an answer of no tokens; densekit does not.
    assert has_answer([""], "anything") is False
    assert has_answer(["  ", "?"], "what?") is True


def test_prepared_passages_give_the_same_answers():
    matcher = AnswerMatcher(["Notre Dame", "14"])
    for text in ["University of Notre Dame", "14-story", "Dame Notre", "140 stories"]:
        assert matcher(text) == matcher.match_prepared(prepare_text(text)) == _dpr_reference(matcher.answers, text)


REGEX_CASES = [
    (["pa.is"], "Capital: PARIS", True, "case-insensitive search"),
    (["^Paris$"], "Rome\nParis\nBerlin", True, "multi-line anchors"),
    ([r"\bGe\b"], "General Electric", False, "word boundary"),
    (["Ge"], "General Electric", True, "regex search matches inside words"),
    ([r"1[0-9]{3}"], "in 1969 the", True, "character classes"),
    ([r"(?:Neil )?Armstrong"], "armstrong walked", True, "optional group"),
    (["Zoë"], "Zoe\u0308", True, "NFD on both sides"),
]


@pytest.mark.parametrize("answers,text,expected,why", REGEX_CASES, ids=[c[3] for c in REGEX_CASES])
def test_regex_mode_table(answers, text, expected, why):
    assert has_answer(answers, text, mode="regex") is expected
    assert regex_match(text, answers[0]) is expected


def test_invalid_regex_is_a_clear_error():
    with pytest.raises(InputError, match=r"'\(unclosed' is not a valid regular expression"):
        has_answer(["(unclosed"], "text", mode="regex")
    # string mode takes the same answer literally
    assert has_answer(["(unclosed"], "an (unclosed bracket") is True


def test_bad_arguments():
    with pytest.raises(TypeError, match="not one string"):
        has_answer("Paris", "Paris")
    with pytest.raises(TypeError, match="must be a string"):
        has_answer([3], "3")
    with pytest.raises(ValueError, match="match mode"):
        has_answer(["a"], "a", mode="exact")


@pytest.mark.parametrize("text,expected", [
    ("The Beatles", "beatles"),
    ("  an   Apple, a day! ", "apple day"),
    ("U.S.A.", "usa"),
    ("theatre", "theatre"),
    ("Anne's", "annes"),
    ("the the", ""),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_and_f1():
    assert exact_match("the Beatles!", ["Beatles", "Fab Four"])
    assert exact_match("Fab four", ["Beatles", "Fab Four"])
    assert not exact_match("Beatles band", ["Beatles"])
    assert not exact_match("Beatles", [])
    assert f1_score("Beatles band", ["the Beatles"]) == pytest.approx(2 / 3)
    assert f1_score("x", ["y"]) == 0.0
    assert f1_score("x", []) == 0.0
