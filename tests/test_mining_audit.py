"""Mining end to end on a tiny model: the mined files agree with the search and the rules, the audit with the files."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from densekit import RetrievalEvaluator
from densekit.data.formats import read_qrels
from densekit.evaluation.mining import positive_ids, score_positives
from tests.helpers import write_beir
from tests.test_evaluation_evaluator import make_evaluator

NUM_DOCS = 18  # write_beir: 6 topics x 3 documents


def run_lines(path: Path) -> list[tuple[str, str, int, float]]:
    rows = []
    for line in path.read_text().splitlines():
        qid, q0, doc, rank, score, tag = line.split()
        assert q0 == "Q0" and tag == "densekit"
        rows.append((qid, doc, int(rank), float(score)))
    return rows


def report_table(text: str, heading: str) -> dict[str, str]:
    """First two columns of the Markdown table under ``## heading``."""
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("|")]
    return {row[0]: row[1] for row in cells[2:]}


def full_ranking(evaluator: RetrievalEvaluator) -> dict[str, list[tuple[str, float]]]:
    """Every query's whole corpus, ranked: (doc id, score) best first."""
    result = evaluator.search(topk=NUM_DOCS)
    return {qid: [(result.doc_ids[i], float(s)) for i, s in zip(result.indices[row], result.scores[row])]
            for row, qid in enumerate(result.query_ids)}


def test_mined_files_agree_with_the_search_the_rules_and_the_audit(tiny_model_dir, tmp_path):
    beir = write_beir(tmp_path / "beir", graded=True)
    out = tmp_path / "mined"
    evaluator = make_evaluator(tiny_model_dir, beir, out, search_topk=12, mine_num_negatives=3, mine_skip_top=1,
                               mine_relative_margin=0.999, no_annot_in_mined_hn=True, merge_mined_qrels=True)
    paths = evaluator.mine_hard_negatives()
    assert {p.name for p in paths.values()} == {"mined_qrels.tsv", "mined_run.trec", "mining.json",
                                                 "merged_qrels.tsv", "audit.md", "audit.png"}
    judged = read_qrels(beir / "qrels" / "test.tsv")
    ranking = full_ranking(evaluator)
    lines = run_lines(out / "mined_run.trec")
    for qid, doc, rank, score in lines:  # the rank and score the search gave the document
        assert ranking[qid][rank - 1][0] == doc
        assert score == pytest.approx(ranking[qid][rank - 1][1], abs=1e-6)
    expected = {}  # the rules re-applied by hand on the whole ranking
    for qid, ranked in ranking.items():
        scores = dict(ranked)
        threshold = 0.999 * min(scores[d] for d, label in judged[qid].items() if label > 0)
        eligible = [(d, r + 1) for r, (d, s) in enumerate(ranked)
                    if 1 < r + 1 <= 12 and d not in judged[qid] and s <= threshold]
        expected[qid] = eligible[:3]
    assert {q: [(d, r) for q2, d, r, _ in lines if q2 == q] for q in ranking} == expected
    info = json.loads((out / "mining.json").read_text())
    counts = info["counts"]
    assert counts["kept"] == len(lines) and 0 < counts["kept"] < 18  # some kept, some lost to the margin
    assert counts["dropped_relative_margin"] > 0 and counts["dropped_skip_top"] == 6
    assert counts["dropped_judged"] == sum(1 for q in ranking for d, _ in ranking[q][1:12] if d in judged[q])
    assert counts["candidates"] == 6 * 12 == counts["kept"] + counts["unused"] + counts["dropped"]
    assert counts["dropped"] == sum(v for k, v in counts.items() if k.startswith("dropped_"))
    assert counts["queries_with_fewer_than_k"] == sum(1 for v in expected.values() if len(v) < 3)
    mined = read_qrels(out / "mined_qrels.tsv")
    assert {q: list(d) for q, d in mined.items()} == {q: [d for q2, d, _, _ in lines if q2 == q]
                                                      for q in ranking if expected[q]}
    assert all(mined[q][d] == s for q, d, _, s in lines)
    merged = read_qrels(out / "merged_qrels.tsv")
    assert all(merged[q][d] == 0 for q, d, _, _ in lines) and all(merged[q][d] == l for q in judged
                                                                    for d, l in judged[q].items())
    report = (out / "audit.md").read_text()
    assert report_table(report, "Counts") == {k: str(v) for k, v in counts.items()}
    assert f"Fingerprint: `{info['fingerprint']}`" in report
    assert info["settings"]["search_depth"] == 12 and info["settings"]["relative_margin"] == 0.999
    assert (out / "audit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sample = report.split("## Sample\n", 1)[1].split("\n## ", 1)[0]
    assert len(re.findall(r"^\| q-", sample, flags=re.M)) == 20


def test_without_new_options_mining_keeps_the_top_search_topk_unjudged_documents(tiny_model_dir, tmp_path):
    beir = write_beir(tmp_path / "beir", graded=True)
    evaluator = make_evaluator(tiny_model_dir, beir, tmp_path / "m", search_topk=4, no_annot_in_mined_hn=True,
                               mine_audit=False)
    evaluator.mine_hard_negatives()
    judged = read_qrels(beir / "qrels" / "test.tsv")
    expected = {q: [d for d, _ in ranked if d not in judged[q]][:4] for q, ranked in full_ranking(evaluator).items()}
    assert {q: list(d) for q, d in read_qrels(tmp_path / "m" / "mined_qrels.tsv").items()} == expected
    assert not (tmp_path / "m" / "audit.md").exists() and not (tmp_path / "m" / "audit.png").exists()


@pytest.mark.parametrize("cached", [False, True])
def test_positive_scores_equal_the_search_scores(tiny_model_dir, tmp_path, cached):
    beir = write_beir(tmp_path / "beir")
    evaluator = make_evaluator(tiny_model_dir, beir, tmp_path / "m",
                               encoding_cache_dir=str(tmp_path / "cache") if cached else None)
    shallow = evaluator.search(topk=2)  # most positives lie deeper: they are scored apart
    scores = score_positives(evaluator, evaluator.eval_dataset, shallow)
    ranking = {q: dict(r) for q, r in full_ranking(evaluator).items()}
    found = sum(1 for row, q in enumerate(shallow.query_ids) for d in positive_ids(evaluator.eval_dataset.qrels)[q]
                if evaluator.eval_dataset.corpus.index_of(d) in shallow.indices[row])
    assert 0 < found < 12  # both paths are exercised: read from the search and computed
    assert {q: set(d) for q, d in scores.items()} == {q: set(d) for q, d in positive_ids(read_qrels(
        beir / "qrels" / "test.tsv")).items()}
    for qid, docs in scores.items():
        for doc, score in docs.items():
            assert score == pytest.approx(ranking[qid][doc], abs=1e-5)


def test_audit_counts_kept_negatives_judged_relevant_elsewhere_and_fingerprint(tiny_model_dir, tmp_path):
    beir = write_beir(tmp_path / "beir")
    cache = str(tmp_path / "cache")
    first = make_evaluator(tiny_model_dir, beir, tmp_path / "a", search_topk=3, no_annot_in_mined_hn=True,
                           encoding_cache_dir=cache)
    first.mine_hard_negatives()
    kept = run_lines(tmp_path / "a" / "mined_run.trec")
    other = tmp_path / "dev.tsv"  # another split: two kept pairs judged relevant, one judged 0
    other.write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{l}\n" for (q, d, _, _), l in
                                                              zip(kept[:3], (1, 2, 0))) + "q-cats\tcats-0\t1\n")
    second = make_evaluator(tiny_model_dir, beir, tmp_path / "b", search_topk=3, no_annot_in_mined_hn=True,
                            encoding_cache_dir=cache, audit_qrels=[str(other)])
    second.mine_hard_negatives()
    assert run_lines(tmp_path / "b" / "mined_run.trec") == kept
    report = (tmp_path / "b" / "audit.md").read_text()
    section = report_table(report, "Kept negatives judged relevant")
    assert section == {"this dataset's judgments": "0", str(other): "2"}
    judged_there = len({q for q, _, _, _ in kept[:3]} | {"q-cats"})
    assert re.search(rf"\| {re.escape(str(other))} \| 2 \| [0-9.]+% \| {judged_there} of 6 \|", report)
    info_a, info_b = (json.loads((tmp_path / x / "mining.json").read_text()) for x in "ab")
    assert info_a["fingerprint"] == info_b["fingerprint"]  # same model, data and rules: the same pool
    third = make_evaluator(tiny_model_dir, beir, tmp_path / "c", search_topk=3, no_annot_in_mined_hn=True,
                           encoding_cache_dir=cache, mine_skip_top=1)
    third.mine_hard_negatives()
    info_c = json.loads((tmp_path / "c" / "mining.json").read_text())
    assert info_c["fingerprint"] != info_a["fingerprint"]
    assert info_c["fingerprint_parts"]["model"] == info_a["fingerprint_parts"]["model"]
    assert info_c["fingerprint_parts"]["corpus"] == info_a["fingerprint_parts"]["corpus"]


def test_sampled_pool_is_reproducible_and_inside_the_window(tiny_model_dir, tmp_path):
    beir = write_beir(tmp_path / "beir")
    cache = str(tmp_path / "cache")
    runs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        make_evaluator(tiny_model_dir, beir, tmp_path / name, search_topk=12, mine_num_negatives=2, mine_skip_top=2,
                       mine_sample=True, mine_seed=seed, no_annot_in_mined_hn=True, mine_audit=False,
                       encoding_cache_dir=cache).mine_hard_negatives()
        runs.append(run_lines(tmp_path / name / "mined_run.trec"))
    assert runs[0] == runs[1] and runs[0] != runs[2]
    judged = read_qrels(beir / "qrels" / "test.tsv")
    for lines in runs:
        assert len(lines) == 12 and all(2 < rank <= 12 and doc not in judged[q] for q, doc, rank, _ in lines)
