"""Answer-aware mining: negatives without an answer, positives with one, in-article negatives, trainable files."""
from __future__ import annotations

import json

import pytest

from densekit.cli.main import main
from densekit.data.formats import read_corpus
from densekit.data.formats.dpr import read_dpr
from densekit.data.formats.tevatron import read_tevatron
from densekit.errors import ConfigError
from densekit.qa.mining import AnswerMiningSettings, ArticleIndex, mine_answer_negatives, mine_question
from densekit.qa.retrieval import QuestionResult, RetrievedPassage, write_results

# two "articles" of four paragraphs each, SQuAD-like
PASSAGES = [(f"{t}{i}", f"{t.upper()} paragraph {i}: " + text, title)
            for t, title, texts in (("a", "Alpha", ["the river Nile is long", "the Nile flows north",
                                                    "deserts surround it", "farming on the banks"]),
                                    ("b", "Beta", ["mountains are high", "Everest is the highest",
                                                   "climbers need oxygen", "snow all year"]))
            for i, text in enumerate(texts)]


def write_psgs(path):
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("id\ttext\ttitle\n")
        for pid, text, title in PASSAGES:
            handle.write(f"{pid}\t{text}\t{title}\n")
    return path


def ctx(pid, score, has_answer):
    text = next(t for p, t, _ in PASSAGES if p == pid)
    title = next(ti for p, _, ti in PASSAGES if p == pid)
    return RetrievedPassage(pid, title, text, score, has_answer)


def test_negatives_have_no_answer_positives_have_one_gold_first():
    result = QuestionResult("which river?", ["Nile"], [ctx("a1", 9, True), ctx("b0", 8, False), ctx("a0", 7, True),
                                                        ctx("b1", 6, False), ctx("a2", 5, False)], qid="q0")
    gold = [{"passage_id": "a0", "title": "Alpha", "text": "x"}]
    mined = mine_question(result, AnswerMiningSettings(num_hard_negatives=2, answer_positives=1), gold=gold)
    assert [p["passage_id"] for p in mined.positives] == ["a0", "a1"]   # gold, then best retrieved with an answer
    assert [n["passage_id"] for n in mined.hard_negatives] == ["b0", "b1"]
    assert mined.hard_negatives[0]["score"] == 8
    only_gold = mine_question(result, AnswerMiningSettings(num_hard_negatives=5, answer_positives=0, skip_top=2),
                              gold=gold)
    assert [p["passage_id"] for p in only_gold.positives] == ["a0"]
    assert [n["passage_id"] for n in only_gold.hard_negatives] == ["b1", "a2"]  # ranks 3+ without an answer
    no_gold = mine_question(result, AnswerMiningSettings(answer_positives=2))
    assert [p["passage_id"] for p in no_gold.positives] == ["a1", "a0"]


def test_a_gold_passage_without_the_answer_token_is_never_a_negative():
    result = QuestionResult("q", ["Nile"], [ctx("a3", 5, False), ctx("b0", 4, False)], qid="q0")
    gold = [{"passage_id": "a3", "title": "Alpha", "text": "farming"}]
    mined = mine_question(result, AnswerMiningSettings(answer_positives=0), gold=gold)
    assert [n["passage_id"] for n in mined.hard_negatives] == ["b0"]


def test_in_article_negatives_are_same_title_without_answer_retrieved_first(tmp_path):
    passages = read_corpus(write_psgs(tmp_path / "psgs.tsv"))
    articles = ArticleIndex(passages, "string")
    result = QuestionResult("which river?", ["Nile"], [ctx("a0", 9, True), ctx("a3", 3, False)], qid="q0")
    settings = AnswerMiningSettings(num_hard_negatives=0, answer_positives=1, in_article_negatives=5)
    mined = mine_question(result, settings, articles=articles)
    ids = [n["passage_id"] for n in mined.in_article]
    assert ids[0] == "a3" and sorted(ids) == ["a2", "a3"]  # a1 has "Nile": left out; Beta never
    assert mined.in_article[0]["score"] == 3 and "score" not in mined.in_article[1]
    again = mine_question(result, settings, articles=articles)
    assert [n["passage_id"] for n in again.in_article] == ids  # seeded


def test_questions_without_positive_are_counted_and_left_out():
    results = [QuestionResult("q", ["zzz"], [ctx("a0", 1, False)], qid="q0"),
               QuestionResult("r", ["Nile"], [ctx("a0", 1, True), ctx("b0", 0.5, False)], qid="q1")]
    kept, counts = mine_answer_negatives(results, AnswerMiningSettings())
    assert [m.qid for m in kept] == ["q1"] and counts["skipped_no_positive"] == 1
    with pytest.raises(ConfigError, match="passage collection"):
        mine_answer_negatives(results, AnswerMiningSettings(in_article_negatives=1))


def test_mine_from_results_writes_dpr_tevatron_beir_that_train_reads(tiny_model_dir, tmp_path, capsys):
    psgs = write_psgs(tmp_path / "psgs.tsv")
    questions = [("which river is long?", ["Nile"], "a0", ["a1", "b0", "a0", "a2", "b1"]),
                 ("what is the highest?", ["Everest"], "b1", ["b0", "b1", "a3", "b2"]),
                 ("who needs oxygen?", ["climbers"], "b2", ["b2", "a0", "b3"])]
    qa = tmp_path / "retriever.json"
    qa.write_text(json.dumps([{"question": q, "answers": a, "positive_ctxs": [
        {"passage_id": g, "title": next(ti for p, _, ti in PASSAGES if p == g),
         "text": next(t for p, t, _ in PASSAGES if p == g)}]} for q, a, g, _ in questions]), encoding="utf-8")
    from densekit.qa.answers import has_answer

    results = [QuestionResult(q, a, [ctx(p, 10 - i, has_answer(a, next(t for pp, t, _ in PASSAGES if pp == p)))
                                     for i, p in enumerate(ranked)]) for q, a, _, ranked in questions]
    write_results(tmp_path / "results.json", results)
    out = tmp_path / "hn"
    assert main(["mine", "--results", str(tmp_path / "results.json"), "--qa_file", str(qa), "--passages", str(psgs),
                 "--answer_positives", "0", "--num_hard_negatives", "2", "--in_article_negatives", "1",
                 "--output_format", "dpr", "tevatron", "beir", "--output_dir", str(out)]) == 0
    assert "3 of 3 questions with a positive" in capsys.readouterr().out
    dpr = json.loads((out / "train.json").read_text())
    assert dpr[0]["answers"] == ["Nile"] and [c["passage_id"] for c in dpr[0]["positive_ctxs"]] == ["a0"]
    assert [c["passage_id"] for c in dpr[0]["hard_negative_ctxs"]][:2] == ["b0", "a2"]
    assert len(dpr[0]["hard_negative_ctxs"]) == 3  # + one in-article (a3: Alpha, no "Nile")
    assert dpr[0]["hard_negative_ctxs"][2]["passage_id"] == "a3"
    assert read_dpr(out / "train.json").qrels["q0"] == {"a0": 1, "b0": 0, "a2": 0, "a3": 0}
    tevatron = read_tevatron(out / "train.jsonl")
    assert tevatron.qrels == read_dpr(out / "train.json").qrels
    assert json.loads((out / "train.jsonl").read_text().splitlines()[0])["answers"] == ["Nile"]
    assert (out / "beir" / "qrels" / "train.tsv").is_file()
    # densekit train reads the BEIR folder with its judged-0 passages as hard negatives
    assert main(["train", "--model_name_or_path", str(tiny_model_dir), "--dataset", str(out / "beir"),
                 "--negative_qrel_path", str(out / "beir" / "qrels" / "train.tsv"), "--output_dir",
                 str(tmp_path / "model"), "--group_size", "2", "--per_device_train_batch_size", "3", "--max_steps", "1",
                 "--save_strategy", "no", "--disable_tqdm", "true", "--dataloader_pin_memory", "false",
                 "--query_max_len", "16", "--passage_max_len", "32"]) == 0
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_mine_with_a_model_searches_and_writes_results_too(tiny_model_dir, tmp_path, capsys):
    psgs = write_psgs(tmp_path / "psgs.tsv")
    qa = tmp_path / "qa.csv"
    qa.write_text("which river?\t[\"Nile\"]\nhighest mountain?\t[\"Everest\"]\n", encoding="utf-8")
    out = tmp_path / "hn"
    assert main(["mine", "--qa_file", str(qa), "--passages", str(psgs), "--model_name_or_path", str(tiny_model_dir),
                 "--n_docs", "8", "--top_k", "1", "8", "--num_hard_negatives", "3", "--output_format", "tevatron",
                 "--output_dir", str(out), "--disable_tqdm", "true", "--query_max_len", "16",
                 "--passage_max_len", "32"]) == 0
    lines = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert [line["query_id"] for line in lines] == ["q0", "q1"]
    for line in lines:
        assert len(line["positive_passages"]) == 1 and len(line["negative_passages"]) == 3
        answer = line["answers"][0]
        assert answer in line["positive_passages"][0]["text"]
        assert all(answer not in n["text"] for n in line["negative_passages"])
    assert json.loads((out / "metrics.json").read_text())["aggregate"]["Accuracy@8"] == 1.0
    assert (out / "results.json").is_file() and (out / "answer_mining.json").is_file()


def test_mine_output_format_is_checked(tmp_path, capsys):
    assert main(["mine", "--results", "r.json", "--output_format", "qrels"]) == 1
    assert "dpr, tevatron, beir" in capsys.readouterr().err
