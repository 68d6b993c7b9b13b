"""Reader preprocessing: results JSON checks, answer-span location, positive/negative choice, and the cache."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from densekit.errors import InputError
from densekit.reader.preprocess import (PreprocessSettings, build_sequence, find_answer_spans, prepare, preprocess)
from densekit.reader.results import read_results

FACTS = [("Who designed the Eiffel Tower?", "Gustave Eiffel",
          "The Eiffel Tower was designed by Gustave Eiffel's company. Gustave Eiffel also built bridges."),
         ("When did the General Strike begin?", "1926", "The General Strike began in May 1926 across Britain."),
         ("What colour is the sky?", "blue", "On a clear day the sky is blue because of Rayleigh scattering."),
         ("Which river flows through Paris?", "Seine", "The Seine flows through Paris towards the English Channel.")]
FILLER = ["Bread is baked from flour, water and yeast.", "Chess is a board game for two players.",
          "Rain falls from clouds in the sky.", "Cats are small domesticated felines."]


def results_entries(count: int = 4) -> list[dict]:
    """Hand-made DPR results: per question its passage (has_answer) and the other questions' + filler ones."""
    entries = []
    for i in range(count):
        question, answer, text = FACTS[i % len(FACTS)]
        ctxs = [{"id": f"p{i % len(FACTS)}", "title": f"Title {i % len(FACTS)}", "text": text, "score": 10.0,
                 "has_answer": True}]
        ctxs += [{"id": f"f{j}", "title": "Filler", "text": t, "score": 5.0 - j, "has_answer": False}
                 for j, t in enumerate(FILLER)]
        entries.append({"question": question, "answers": [answer], "ctxs": ctxs})
    return entries


def write_results(path: Path, entries: list | None = None) -> Path:
    path.write_text(json.dumps(entries if entries is not None else results_entries()), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


# ------------------------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize("entry, message", [
    ({"question": "q?", "ctxs": []}, "entry 1: question 'q?' has no answers"),
    ({"question": "q?", "answers": "Paris", "ctxs": []}, "entry 1: answers is str 'Paris', not a list"),
    ({"question": "q?", "answers": ["a"], "ctxs": [{"id": "x", "title": "t"}]}, "entry 1: ctxs[0] has no text"),
    ({"question": "q?", "answers": ["a"]}, "entry 1: has no ctxs list"),
    ({"answers": ["a"], "ctxs": []}, "entry 1: has no question"),
])
def test_bad_results_entries_name_file_and_entry(tmp_path, entry, message):
    path = write_results(tmp_path / "results.json", [results_entries(1)[0], entry])
    with pytest.raises(InputError) as error:
        read_results(path)
    assert error.value.path == str(path)
    assert message in str(error.value)
    assert str(path) in str(error.value)


def test_results_file_not_a_list_or_not_json(tmp_path):
    (tmp_path / "a.json").write_text('{"question": 1}', encoding="utf-8")
    with pytest.raises(InputError, match="expected a JSON list"):
        read_results(tmp_path / "a.json")
    (tmp_path / "b.json").write_text('[{"question": "q",\n oops]', encoding="utf-8")
    with pytest.raises(InputError) as error:
        read_results(tmp_path / "b.json")
    assert error.value.line == 2


# ------------------------------------------------------------------------------------------ answer spans
def test_answer_spans_on_token_boundaries_all_occurrences(tokenizer, tmp_path):
    entries = results_entries(2)
    entries[1]["answers"] = ["1926", "Ge"]  # "Ge" only occurs inside "General": not a span
    data = prepare(read_results(write_results(tmp_path / "r.json", entries)), tokenizer,
                   PreprocessSettings(sequence_length=128, is_train=True))
    eiffel, strike = data.questions
    passage = data.passages[eiffel.positives[0].passage]
    texts = [passage.text[passage.offsets[s][0]:passage.offsets[e][1]] for s, e in eiffel.positives[0].spans]
    assert texts == ["Gustave Eiffel", "Gustave Eiffel"]  # both occurrences, for the marginal span loss
    passage = data.passages[strike.positives[0].passage]
    assert [passage.text[passage.offsets[s][0]:passage.offsets[e][1]] for s, e in strike.positives[0].spans] == ["1926"]


def test_spans_cut_by_truncation_are_dropped_and_question_without_positive_is_left_out(tokenizer, tmp_path):
    entries = results_entries(1)
    entries[0]["answers"] = ["bridges"]  # the last word of the passage
    path = write_results(tmp_path / "r.json", entries)
    full = prepare(read_results(path), tokenizer, PreprocessSettings(sequence_length=128, is_train=True))
    assert len(full.questions) == 1 and full.questions[0].positives[0].spans
    short = prepare(read_results(path), tokenizer, PreprocessSettings(sequence_length=20, is_train=True))
    assert short.questions == [] and short.stats["questions_without_positive"] == 1


def test_sequence_layout_is_dpr_readers(tokenizer, tmp_path):
    """[CLS] question [SEP] title [SEP] text, truncated, no closing [SEP]: transformers.DPRReaderTokenizer's layout."""
    from transformers import DPRReaderTokenizerFast

    data = prepare(read_results(write_results(tmp_path / "r.json")), tokenizer,
                   PreprocessSettings(sequence_length=30, is_train=False))
    question = data.questions[0]
    passage = data.passages[question.passages[0].passage]
    ids, text_start, count = build_sequence(tokenizer, question.question_ids, passage, 30)
    dpr = DPRReaderTokenizerFast.from_pretrained(str(tokenizer.name_or_path))
    expected = dpr(questions=question.question, titles=passage.title, texts=passage.text, truncation=True,
                   max_length=30, padding=False)["input_ids"][0]
    assert ids == expected
    assert ids[text_start:text_start + count] == passage.text_ids[:count]
    assert ids[text_start - 1] == tokenizer.sep_token_id and len(ids) == 30


def test_gold_passages_replace_retrieved_positives(tokenizer, tmp_path):
    entries = results_entries(2)
    entries[0]["ctxs"][0]["has_answer"] = False  # gold not marked: still the positive with --gold_passages
    entries[1]["ctxs"] = entries[1]["ctxs"][1:]  # gold not retrieved at all: inserted
    gold = [{"question": e["question"], "answers": e["answers"],
             "positive_ctxs": [{"title": f"Title {i}", "text": FACTS[i][2], "passage_id": f"p{i}"}]}
            for i, e in enumerate(entries)]
    gold_path = tmp_path / "gold.json"
    gold_path.write_text(json.dumps(gold), encoding="utf-8")
    data, _ = preprocess(write_results(tmp_path / "r.json", entries), tokenizer,
                         PreprocessSettings(sequence_length=128, is_train=True), gold_path=gold_path)
    assert [data.passages[q.positives[0].passage].id for q in data.questions] == ["p0", "p1"]
    assert all(len(q.positives) == 1 and len(q.negatives) == 4 for q in data.questions)
    assert all(data.passages[n.passage].id.startswith("f") for q in data.questions for n in q.negatives)


# ------------------------------------------------------------------------------------------------ cache
def test_cache_reused_when_valid_rebuilt_when_anything_changes(tokenizer, tmp_path, minilm_dir):
    results = write_results(tmp_path / "r.json")
    cache = tmp_path / "cache"
    settings = PreprocessSettings(sequence_length=64, is_train=True)
    first, reused = preprocess(results, tokenizer, settings, cache_dir=cache)
    assert not reused and len(list(cache.iterdir())) == 1
    again, reused = preprocess(results, tokenizer, settings, cache_dir=cache)
    assert reused and again.to_json() == first.to_json()

    _, reused = preprocess(results, tokenizer, PreprocessSettings(sequence_length=48, is_train=True), cache_dir=cache)
    assert not reused  # another sequence_length
    cased = AutoTokenizer.from_pretrained(minilm_dir, do_lower_case=False)
    _, reused = preprocess(results, cased, settings, cache_dir=cache)
    assert not reused  # another tokenizer (same vocabulary, other normalisation)
    write_results(results, results_entries(3))
    changed, reused = preprocess(results, tokenizer, settings, cache_dir=cache)
    assert not reused and len(changed.questions) == 3  # the input changed: the old entry is never read
    assert len(list(cache.iterdir())) == 4

    # a damaged entry fails its checksum and is rebuilt, not read
    entry = next(p for p in cache.iterdir() if json.loads((p / "manifest.json").read_text())["stats"]["questions_in"] == 3)
    raw = (entry / "data.json").read_text(encoding="utf-8")
    (entry / "data.json").write_text(raw.replace("Eiffel", "Eiffal"), encoding="utf-8")
    rebuilt, reused = preprocess(results, tokenizer, settings, cache_dir=cache)
    assert not reused and rebuilt.to_json() == changed.to_json()
    assert "Eiffel" in (entry / "data.json").read_text(encoding="utf-8")


def test_cache_is_json_not_pickle(tokenizer, tmp_path):
    preprocess(write_results(tmp_path / "r.json"), tokenizer, PreprocessSettings(sequence_length=64, is_train=False),
               cache_dir=tmp_path / "cache")
    files = sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert files == ["data.json", "manifest.json"]
    for name in files:
        json.loads(next((tmp_path / "cache").rglob(name)).read_text(encoding="utf-8"))
