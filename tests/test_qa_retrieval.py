"""Answer-matching retrieval evaluation: qa files, results JSON, top-k accuracy, errors, CLI end to end."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from densekit.cli.main import main
from densekit.data.formats import read_corpus
from densekit.data.formats.dpr import iter_dpr_questions, read_dpr
from densekit.data.formats.qa import QAExample, read_qa
from densekit.errors import InputError
from densekit.qa.retrieval import (QuestionResult, RetrievedPassage, Ranking, match_answers, read_results,
                                   top_k_accuracy, write_results)

PASSAGES = [
    # id, text, title  (csv-quoted by csv.writer where a quote occurs, as DPR's psgs_w100.tsv)
    ("p1", 'The "Eiffel Tower" is in Paris, France.', "Eiffel Tower"),
    ("p2", "Berlin is the capital of Germany.", "Berlin"),
    ("p3", "General Electric builds turbines in a 14-story building.", "General Electric"),
    ("p4", "Rome is the capital of Italy.", "Rome"),
    ("p5", "Madrid hosts the Prado museum.", "Madrid"),
    ("p6", "Paris is also a city in Texas.", "Paris, Texas"),
]
QUESTIONS = [
    ("where is the eiffel tower?", ["Paris"]),
    ("what is the capital of germany?", ["Berlin"]),
    ("how many floors has the ge building?", ["14"]),
    ('which company is called "GE"?', ["Ge"]),   # "Ge" is not a token of "General": never found
]


def write_psgs(path: Path) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["id", "text", "title"])
        writer.writerows(PASSAGES)
    return path


def write_qa_csv(path: Path, rows=QUESTIONS) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        for question, answers in rows:
            writer.writerow([question, json.dumps(answers)])
    return path


def write_run(path: Path, ranking: dict[str, list[str]]) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for qid, docs in ranking.items():
            for rank, doc in enumerate(docs, 1):
                handle.write(f"{qid} Q0 {doc} {rank} {10 - rank}.5 test\n")
    return path


# ------------------------------------------------------------------------------------------ qa files
def test_qa_csv_json_python_lists_quotes_and_ids(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text('"""Hey Jude"" was by whom?"\t["The Beatles"]\n'
                    "\n"
                    "who wrote it?\t['Lennon', \"McCartney\"]\n"
                    "which id?\t[\"x\"]\tmy-id\n", encoding="utf-8")
    examples = read_qa(path)
    assert [(e.qid, e.question, e.answers, e.line) for e in examples] == [
        ("q0", '"Hey Jude" was by whom?', ["The Beatles"], 1),
        ("q1", "who wrote it?", ["Lennon", "McCartney"], 3),
        ("my-id", "which id?", ["x"], 4)]


def test_squad_qa_files_read_intact():
    squad = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad"
    if not (squad / "qa" / "dev.csv").is_file():
        pytest.skip("shared SQuAD data not here")
    dev = read_qa(squad / "qa" / "dev.csv")
    dpr = list(iter_dpr_questions(squad / "retriever" / "dev.json"))
    assert len(dev) == len(dpr) == 1743
    assert [(e.question, e.answers) for e in dev] == [(q.question, q.answers) for q in dpr]
    assert dpr[0].positive_ctxs[0]["passage_id"] == "sq50_0"


@pytest.mark.parametrize("line,message", [
    ("a question without answers\n", "question without answers"),
    ("q\t'Paris'\n", "answers are not a list"),
    ("q\t{'a': 1}\n", "answers are not a list"),
    ("q\t[1, 2]\n", "is not a string"),
    ("q\t[]\n", "answers list is empty"),
    ("q\t[unquoted]\n", "neither a JSON nor a Python list"),
    ("\t[\"a\"]\n", "empty question"),
])
def test_bad_qa_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "qa.csv"
    path.write_text("fine question\t[\"fine\"]\n" + line, encoding="utf-8")
    with pytest.raises(InputError, match=message) as info:
        read_qa(path)
    assert info.value.path == str(path) and info.value.line == 2
    assert str(info.value).startswith(f"{path}:2: ")


def test_empty_qa_file_is_an_error(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(InputError, match="no questions"):
        read_qa(path)


def test_dpr_json_answers_are_kept_and_checked(tmp_path):
    path = tmp_path / "train.json"
    items = [{"question": "q one", "answers": ["a"], "positive_ctxs": [{"title": "T", "text": "a b", "passage_id": "7"}],
              "negative_ctxs": [], "hard_negative_ctxs": []},
             {"question": "q two", "answers": "b", "positive_ctxs": []}]
    path.write_text("[\n" + ",\n".join(json.dumps(i) for i in items) + "\n]\n", encoding="utf-8")
    with pytest.raises(InputError, match="answers of item 1 are not a list") as info:
        list(iter_dpr_questions(path))
    assert info.value.line == 3
    first = next(iter_dpr_questions(path))
    assert (first.qid, first.answers, first.positive_ctxs) == ("q0", ["a"], [{"passage_id": "7", "title": "T",
                                                                               "text": "a b"}])
    assert read_dpr(tmp_path / "train.json").qrels["q0"] == {"7": 1}  # the old reader is unchanged


def test_jsonl_qa(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"query_id": "a", "query": "q?", "answers": ["x"]}) + "\n"
                    + json.dumps({"question": "r?", "answers": "y"}) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="not a list") as info:
        read_qa(path)
    assert info.value.line == 2


# -------------------------------------------------------------------------------------- results
def test_results_json_round_trips(tmp_path):
    results = [QuestionResult("q?", ["a", "b"], [RetrievedPassage("d1", "T", 'x "a"', 3.5, True),
                                                  RetrievedPassage("d2", "", "y", 1.25, False)], qid="q0"),
               QuestionResult("empty?", ["c"], [], qid=None)]
    assert write_results(tmp_path / "r.json", results) == 2
    assert read_results(tmp_path / "r.json") == results
    data = json.loads((tmp_path / "r.json").read_text())
    assert list(data[0]) == ["question", "answers", "qid", "ctxs"]
    assert list(data[0]["ctxs"][0]) == ["id", "title", "text", "score", "has_answer"]


def test_dpr_written_results_with_string_scores_are_read(tmp_path):
    path = tmp_path / "dpr.json"
    path.write_text(json.dumps([{"question": "q", "answers": ["a"], "ctxs": [
        {"id": "wiki:1", "title": "t", "text": "a", "score": "81.5", "has_answer": True}]}]), encoding="utf-8")
    assert read_results(path)[0].ctxs[0].score == 81.5
    path.write_text(json.dumps([{"question": "q", "answers": ["a"], "ctxs": [{"id": "1", "text": "a", "score": 1}]}]),
                    encoding="utf-8")
    with pytest.raises(InputError, match="has_answer"):
        read_results(path)


def test_top_k_accuracy_of_a_hand_made_ranking_is_exact(tmp_path):
    passages = read_corpus(write_psgs(tmp_path / "psgs.tsv"))
    examples = [QAExample(f"q{i}", q, a, i + 1) for i, (q, a) in enumerate(QUESTIONS)]
    rows = {pid: i for i, pid in enumerate(passages.ids)}

    def ranking(*pids):
        return Ranking(np.array([rows[p] for p in pids]), np.arange(len(pids), 0, -1, dtype=float))

    results = match_answers(examples, [ranking("p2", "p1", "p6"),     # Paris at rank 2 (p1) and 3 (p6)
                                       ranking("p2", "p4", "p5"),     # Berlin at rank 1
                                       ranking("p1", "p4", "p5", "p2", "p3"),  # 14 at rank 5 (14-story)
                                       None],                         # nothing retrieved
                            passages, progress=False)
    assert [r.first_hit for r in results] == [1, 0, 4, None]
    assert [c.has_answer for c in results[0].ctxs] == [False, True, True]
    assert results[0].ctxs[1].text == 'The "Eiffel Tower" is in Paris, France.'  # csv quoting undone
    assert top_k_accuracy(results, [1, 2, 5, 20]) == {1: 0.25, 2: 0.5, 5: 0.75, 20: 0.75}


def test_invalid_regex_answer_names_qa_file_and_line(tmp_path):
    passages = read_corpus(write_psgs(tmp_path / "psgs.tsv"))
    examples = [QAExample("q0", "q", ["(bad"], 7)]
    with pytest.raises(InputError, match="not a valid regular expression") as info:
        match_answers(examples, [Ranking(np.array([0]), np.array([1.0]))], passages, mode="regex",
                      source="qa.csv", progress=False)
    assert (info.value.path, info.value.line) == ("qa.csv", 7)


# ----------------------------------------------------------------------------------- CLI, run mode
def test_evaluate_run_with_qa_file_writes_results_metrics_report(tmp_path, capsys):
    psgs, qa = write_psgs(tmp_path / "psgs.tsv"), write_qa_csv(tmp_path / "qa.csv")
    run = write_run(tmp_path / "run.trec", {"q0": ["p2", "p1", "p6"], "q1": ["p2", "p4"],
                                            "q2": ["p1", "p4", "p5", "p2", "p3"], "q3": ["p3"]})
    out = tmp_path / "out"
    assert main(["evaluate", "--run", str(run), "--qa_file", str(qa), "--passages", str(psgs), "--n_docs", "5",
                 "--top_k", "1", "2", "5", "--output_dir", str(out), "--disable_tqdm", "true"]) == 0
    assert "Accuracy@1=0.2500 Accuracy@2=0.5000 Accuracy@5=0.7500" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["aggregate"] == {"Accuracy@1": 0.25, "Accuracy@2": 0.5, "Accuracy@5": 0.75}
    assert metrics["first_hit_rank"] == {"q0": 2, "q1": 1, "q2": 5, "q3": None}
    results = read_results(out / "results.json")
    assert [c.id for c in results[2].ctxs] == ["p1", "p4", "p5", "p2", "p3"]
    assert [c.score for c in results[2].ctxs] == sorted((c.score for c in results[2].ctxs), reverse=True)
    assert "not qrel Recall@k" in (out / "report.md").read_text()
    # --n_docs cuts the run
    assert main(["evaluate", "--run", str(run), "--qa_file", str(qa), "--passages", str(psgs), "--n_docs", "2",
                 "--top_k", "1", "2", "--output_dir", str(tmp_path / "cut"), "--disable_tqdm", "true"]) == 0
    assert max(len(r.ctxs) for r in read_results(tmp_path / "cut" / "results.json")) == 2


def test_run_passage_missing_from_passages_names_run_file_and_line(tmp_path, capsys):
    psgs, qa = write_psgs(tmp_path / "psgs.tsv"), write_qa_csv(tmp_path / "qa.csv")
    run = write_run(tmp_path / "run.trec", {"q0": ["p1", "p2"], "q1": ["p2", "nope"]})
    assert main(["evaluate", "--run", str(run), "--qa_file", str(qa), "--passages", str(psgs), "--top_k", "1",
                 "--output_dir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert f"{run}:4: passage 'nope'" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "results.json").exists()


def test_bad_qa_line_through_the_cli(tmp_path, capsys):
    psgs = write_psgs(tmp_path / "psgs.tsv")
    qa = tmp_path / "qa.csv"
    qa.write_text("ok?\t[\"a\"]\nno answers here\n", encoding="utf-8")
    run = write_run(tmp_path / "run.trec", {"q0": ["p1"]})
    assert main(["evaluate", "--run", str(run), "--qa_file", str(qa), "--passages", str(psgs), "--top_k", "1",
                 "--output_dir", str(tmp_path / "out")]) == 1
    assert f"{qa}:2: a question without answers" in capsys.readouterr().err


def test_run_ids_mapped_by_question_text_with_queries_file(tmp_path, capsys):
    psgs, qa = write_psgs(tmp_path / "psgs.tsv"), write_qa_csv(tmp_path / "qa.csv")
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps({"_id": f"id-{i}", "text": q}) + "\n"
                               for i, (q, _) in reversed(list(enumerate(QUESTIONS)))), encoding="utf-8")
    run = write_run(tmp_path / "run.trec", {"id-0": ["p1"], "id-1": ["p4"], "id-2": ["p3"], "id-3": ["p3"]})
    args = ["evaluate", "--run", str(run), "--qa_file", str(qa), "--passages", str(psgs), "--top_k", "1",
            "--output_dir", str(tmp_path / "out"), "--disable_tqdm", "true"]
    assert main(args) == 1  # the run's ids are not q0, q1, ...
    assert "--queries" in capsys.readouterr().err
    assert main(args + ["--queries", str(queries)]) == 0
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["aggregate"] == {"Accuracy@1": 0.5}


def test_top_k_above_n_docs_is_refused(tmp_path, capsys):
    psgs, qa = write_psgs(tmp_path / "psgs.tsv"), write_qa_csv(tmp_path / "qa.csv")
    assert main(["evaluate", "--run", "r", "--qa_file", str(qa), "--passages", str(psgs), "--n_docs", "5",
                 "--top_k", "1", "20"]) == 1
    assert "--n_docs 5" in capsys.readouterr().err
    from densekit.cli.evaluate import QAArguments

    assert QAArguments(qa_file=str(qa), passages=str(psgs), n_docs=20).top_k == [1, 5, 20]  # defaults <= n_docs


# ------------------------------------------------------------------------------- CLI, tiny model
def test_model_search_and_encode_search_run_give_the_same_results(tiny_model_dir, tmp_path):
    """evaluate --qa_file (RetrievalEvaluator.search) == encode shards + search + evaluate --run."""
    psgs, qa = write_psgs(tmp_path / "psgs.tsv"), write_qa_csv(tmp_path / "qa.csv")
    lengths = ["--passage_max_len", "32", "--query_max_len", "16"]
    assert main(["evaluate", "--qa_file", str(qa), "--passages", str(psgs), "--model_name_or_path",
                 str(tiny_model_dir), "--n_docs", "4", "--top_k", "1", "4", "--output_dir", str(tmp_path / "model"),
                 "--encoding_cache_dir", str(tmp_path / "cache"), "--disable_tqdm", "true", *lengths]) == 0
    direct = read_results(tmp_path / "model" / "results.json")
    assert len(direct) == 4 and all(len(r.ctxs) == 4 for r in direct)
    assert all(c.has_answer == (c.id in {"p1", "p6"}) for c in direct[0].ctxs)
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert metrics["settings"]["passage_max_len"] == 32 and metrics["aggregate"]["Accuracy@4"] <= 0.75

    # the questions as a query file with the qa file's ids, the passages in two shards
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"_id": f"q{i}", "text": q}) + "\n" for i, (q, _) in enumerate(QUESTIONS)),
                         encoding="utf-8")
    for args in (["--input_path", str(questions), "--kind", "query", "--output_dir", str(tmp_path / "eq")],
                 *(["--input_path", str(psgs), "--shard_id", str(s), "--num_shards", "2", "--output_dir",
                    str(tmp_path / f"ep{s}")] for s in range(2))):
        assert main(["encode", "--model_name_or_path", str(tiny_model_dir), *lengths, *args]) == 0
    assert main(["search", "--query_embeddings", str(tmp_path / "eq"), "--corpus_embeddings", str(tmp_path / "ep0"),
                 str(tmp_path / "ep1"), "--topk", "4", "--output_dir", str(tmp_path / "searched")]) == 0
    assert main(["evaluate", "--run", str(tmp_path / "searched" / "run.trec"), "--qa_file", str(qa), "--passages",
                 str(psgs), "--n_docs", "4", "--top_k", "1", "4", "--output_dir", str(tmp_path / "fromrun"),
                 "--disable_tqdm", "true"]) == 0
    from_run = read_results(tmp_path / "fromrun" / "results.json")
    assert [[c.id for c in r.ctxs] for r in from_run] == [[c.id for c in r.ctxs] for r in direct]
    assert [[c.has_answer for c in r.ctxs] for r in from_run] == [[c.has_answer for c in r.ctxs] for r in direct]
    np.testing.assert_allclose([c.score for r in from_run for c in r.ctxs], [c.score for r in direct for c in r.ctxs],
                               rtol=1e-4, atol=1e-4)
    again = json.loads((tmp_path / "fromrun" / "metrics.json").read_text())["aggregate"]
    assert again == metrics["aggregate"]
