"""``densekit mine --output_format tevatron``: mined hard negatives as Tevatron / OpenMatch training lines."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from densekit.cli.main import main
from densekit.data.formats import read_qrels
from densekit.data.formats.tevatron import read_tevatron
from tests.helpers import write_beir


def mine(model_dir, beir: Path, out: Path, *extra: str) -> int:
    return main(["mine", "--model_name_or_path", str(model_dir), "--dataset", str(beir), "--search_topk", "4",
                 "--output_dir", str(out), "--disable_tqdm", "true", *extra])


def corpus_of(beir: Path) -> dict[str, tuple[str, str]]:
    records = [json.loads(line) for line in (beir / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    return {r["_id"]: (r["title"], r["text"]) for r in records}


def records_of(path: Path) -> dict[str, dict]:
    return {r["query_id"]: r for r in map(json.loads, path.read_text(encoding="utf-8").splitlines())}


def check_passages(record: dict, corpus: dict[str, tuple[str, str]]) -> None:
    for passage in record["positive_passages"] + record["negative_passages"]:
        assert (passage["title"], passage["text"]) == corpus[passage["docid"]]


def test_tevatron_output_has_judged_positives_and_mined_negatives_in_rank_order(tiny_model_dir, tmp_path, capsys):
    beir = write_beir(tmp_path / "beir", graded=True)  # topic-0: 2, topic-1: 1, topic-2: 0 (annotated negative)
    out = tmp_path / "hn"
    assert mine(tiny_model_dir, beir, out, "--no_annot_in_mined_hn", "true", "--output_format", "tevatron") == 0
    assert "densekit mine: tevatron: 6 queries, 12 positives, 24 negatives" in capsys.readouterr().out
    mined = read_qrels(out / "mined_qrels.tsv")  # still written: the tevatron file is in addition to it
    judged = read_qrels(beir / "qrels" / "test.tsv")
    collection = read_tevatron(out / "train.jsonl")  # densekit's own reader accepts the file
    assert list(collection.queries.ids) == list(judged)
    records, corpus = records_of(out / "train.jsonl"), corpus_of(beir)
    for qid, record in records.items():
        negatives = [p["docid"] for p in record["negative_passages"]]
        assert negatives == list(mined[qid]) and len(negatives) == 4  # the mined documents, best first
        assert [mined[qid][d] for d in negatives] == sorted(mined[qid].values(), reverse=True)
        assert not set(negatives) & set(judged[qid])  # no annotated document, judged 0 included
        assert [p["docid"] for p in record["positive_passages"]] == [d for d, s in judged[qid].items() if s >= 1]
        assert {d: s for d, s in collection.qrels[qid].items() if s >= 1} == {
            d: s for d, s in judged[qid].items() if s >= 1}  # graded labels kept on the positives
        assert record["query"] == f"what are {qid.removeprefix('q-')}?"
        check_passages(record, corpus)


def test_positives_are_never_negatives_and_queries_without_positive_are_skipped(tiny_model_dir, tmp_path, capsys):
    beir = write_beir(tmp_path / "beir", graded=True)
    qrels = beir / "qrels" / "test.tsv"
    lines = [l for l in qrels.read_text().splitlines() if not l.startswith("q-chess\tchess-0")]
    qrels.write_text("\n".join(lines) + "\n")  # q-chess keeps chess-1 (1) and chess-2 (0): no positive at >= 2
    out = tmp_path / "hn"
    assert mine(tiny_model_dir, beir, out, "--output_format", "tevatron", "--min_positive_score", "2") == 0
    captured = capsys.readouterr()
    assert "warning: 1 of 6 queries have no judgment >= 2" in captured.err
    mined, judged = read_qrels(out / "mined_qrels.tsv"), read_qrels(qrels)
    records = records_of(out / "train.jsonl")
    assert "q-chess" not in records and len(records) == 5
    read_tevatron(out / "train.jsonl")
    corpus = corpus_of(beir)
    assert any(judged[q].get(d, 0) >= 2 for q in records for d in mined[q])  # some positive was mined
    for qid, record in records.items():
        positives = [d for d, s in judged[qid].items() if s >= 2]
        assert [p["docid"] for p in record["positive_passages"]] == positives
        # without --no_annot_in_mined_hn annotated documents may be mined; positives are still left out
        assert [p["docid"] for p in record["negative_passages"]] == [d for d in mined[qid] if d not in positives]
        check_passages(record, corpus)


def test_default_output_format_writes_no_tevatron_file(tiny_model_dir, tmp_path):
    beir = write_beir(tmp_path / "beir")
    assert mine(tiny_model_dir, beir, tmp_path / "hn") == 0
    assert (tmp_path / "hn" / "mined_qrels.tsv").is_file() and not (tmp_path / "hn" / "train.jsonl").exists()


def test_bad_output_format_is_a_clear_error(tmp_path, capsys):
    assert main(["mine", "--model_name_or_path", "m", "--dataset", str(tmp_path), "--output_format", "jsonl"]) == 1
    err = capsys.readouterr().err
    assert "--output_format" in err and "invalid choice: 'jsonl'" in err and "tevatron" in err


def test_min_positive_score_without_tevatron_output_is_refused(tmp_path, capsys):
    assert main(["mine", "--model_name_or_path", "m", "--dataset", str(tmp_path), "--min_positive_score", "2"]) == 1
    assert "--min_positive_score only applies to --output_format tevatron" in capsys.readouterr().err


def test_no_positive_at_all_fails_before_mining(tiny_model_dir, tmp_path, capsys):
    beir = write_beir(tmp_path / "beir")  # every judgment is 1
    out = tmp_path / "hn"
    assert mine(tiny_model_dir, beir, out, "--output_format", "tevatron", "--min_positive_score", "5") == 1
    assert "no judgment is >= --min_positive_score 5" in capsys.readouterr().err
    assert not (out / "mined_qrels.tsv").exists() and not (out / "train.jsonl").exists()


def test_selection_flags_shape_the_pool_and_the_tevatron_negatives(tiny_model_dir, tmp_path, capsys):
    beir = write_beir(tmp_path / "beir", graded=True)
    out = tmp_path / "hn"
    assert mine(tiny_model_dir, beir, out, "--mine_skip_top", "2", "--mine_relative_margin", "0.95",
                "--mine_max_rank", "10", "--no_annot_in_mined_hn", "true", "--output_format", "tevatron",
                "--audit_qrels", str(beir / "qrels" / "test.tsv")) == 0
    assert "densekit mine:" in capsys.readouterr().out
    info = json.loads((out / "mining.json").read_text())
    assert info["settings"]["skip_top"] == 2 and info["settings"]["max_rank"] == 10
    assert info["settings"]["relative_margin"] == 0.95 and info["counts"]["dropped_skip_top"] == 12
    judged = read_qrels(beir / "qrels" / "test.tsv")
    ranks = {(q, d): int(r) for q, _, d, r, _, _ in (l.split() for l in (out / "mined_run.trec").read_text().splitlines())}
    assert len(ranks) == info["counts"]["kept"] and all(2 < r <= 10 for r in ranks.values())
    assert not any(d in judged[q] for q, d in ranks)
    for qid, record in records_of(out / "train.jsonl").items():  # the negatives are the pool's, in rank order
        negatives = [p["docid"] for p in record["negative_passages"]]
        assert [ranks[(qid, d)] for d in negatives] == sorted(r for (q, _), r in ranks.items() if q == qid)
    assert (out / "audit.md").is_file() and (out / "audit.png").is_file()


@pytest.mark.parametrize("flags, message", [
    (["--mine_skip_top", "4"], "--mine_skip_top 4 >= the deepest rank 4"),
    (["--mine_relative_margin", "1.2"], "--mine_relative_margin must be in (0, 1]"),
    (["--mine_absolute_margin", "-1"], "--mine_absolute_margin must be a finite number >= 0"),
    (["--mine_positive_reference", "median"], "--mine_positive_reference"),
    (["--mine_sample", "true"], "--mine_sample true draws k negatives"),
])
def test_bad_selection_flags_fail_before_any_work(tmp_path, capsys, flags, message):
    out = tmp_path / "hn"
    extra = ["--mine_max_rank", "4"] if flags[0] == "--mine_skip_top" else []
    # the model does not exist: the error must come from the options, before anything is loaded
    assert main(["mine", "--model_name_or_path", str(tmp_path / "no-model"), "--dataset", str(tmp_path),
                 "--search_topk", "4", "--output_dir", str(out), *flags, *extra]) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()
