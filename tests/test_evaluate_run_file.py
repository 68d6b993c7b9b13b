"""``densekit evaluate --run RUN --qrels Q``: a run file scored like pytrec_eval / trec_eval, no model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import pytrec_eval

from densekit.cli.compare import merge_repeated
from densekit.cli.main import main

TREC = ["ndcg_cut.10", "recall.100", "P.5", "recip_rank", "map"]
PRINTED = ["ndcg_cut_10", "recall_100", "P_5", "recip_rank", "map"]
OURS = ["nDCG@10", "Recall@100", "P@5", "MRR", "MAP"]


def write_fixture(folder: Path, seed: int = 0) -> tuple[Path, Path, dict, dict]:
    """Graded qrels (TREC layout) and a run with tied scores, judged queries it lacks and unjudged ones."""
    rng = np.random.default_rng(seed)
    docs = [f"doc{i}" for i in range(120)] + ["D7", "é2"]
    qrels = {f"q{i}": {docs[j]: int(rng.integers(0, 3)) for j in rng.choice(len(docs), 6, replace=False)}
             for i in range(25)}
    run = {}
    for i in range(22):  # q22..q24 are judged but absent from the run
        chosen = rng.choice(len(docs), 40, replace=False)
        run[f"q{i}"] = {docs[j]: float(rng.integers(0, 8)) for j in chosen}  # many ties
    run["unjudged"] = {"doc1": 2.0}
    folder.mkdir(parents=True, exist_ok=True)
    qrels_path, run_path = folder / "qrels.txt", folder / "run.trec"
    qrels_path.write_text("".join(f"{q} 0 {d} {r}\n" for q, ds in qrels.items() for d, r in ds.items()), "utf-8")
    lines = []
    for q, ds in run.items():
        ranked = sorted(ds.items(), key=lambda item: -item[1])
        lines += [f"{q} Q0 {d} {rank} {score} test\n" for rank, (d, score) in enumerate(ranked, 1)]
    run_path.write_text("".join(lines), "utf-8")
    return run_path, qrels_path, run, qrels


def printed_values(out: str) -> dict[tuple[str, str], float]:
    values = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 3:
            values[(parts[0].strip(), parts[1])] = float(parts[2])
    return values


def test_run_file_scores_equal_pytrec_eval_per_query(tmp_path, capsys):
    run_path, qrels_path, run, qrels = write_fixture(tmp_path)
    argv = ["evaluate", "--run", str(run_path), "--qrels", str(qrels_path), "-q", "--output_dir", str(tmp_path / "out")]
    for name in TREC:
        argv += ["-m", name]
    assert main(argv) == 0
    out = capsys.readouterr().out
    reference = pytrec_eval.RelevanceEvaluator(qrels, set(TREC)).evaluate(run)
    printed = printed_values(out)
    assert len(reference) == 22 and "unjudged" not in reference
    assert {q for _, q in printed} == set(reference) | {"all"}
    for trec, ours in zip(PRINTED, OURS):
        for qid, values in reference.items():
            assert printed[(trec, qid)] == pytest.approx(values[trec], abs=5e-5)
        assert printed[(trec, "all")] == pytest.approx(np.mean([v[trec] for v in reference.values()]), abs=5e-5)
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    for trec, ours in zip(PRINTED, OURS):
        assert saved["aggregate"][ours] == pytest.approx(np.mean([v[trec] for v in reference.values()]), abs=1e-12)
        for qid, values in reference.items():
            assert saved["per_query"][ours][qid] == pytest.approx(values[trec], abs=1e-12)
    assert saved["judged_queries_missing_from_run"] == 3 and saved["run_queries_without_judgments"] == 1
    last = out.strip().splitlines()[-1]
    assert last.startswith("densekit evaluate: nDCG@10=") and "3 judged queries not in the run left out" in last
    # per-query lines come query by query (sorted), then the "all" lines
    qids = [line.split("\t")[1] for line in out.splitlines() if "\t" in line]
    assert qids[-len(TREC):] == ["all"] * len(TREC) and qids[:-len(TREC)] == sorted(qids[:-len(TREC)])


def test_measures_list_equals_repeated_m_and_no_q_prints_only_all(tmp_path, capsys):
    run_path, qrels_path, _, _ = write_fixture(tmp_path, seed=1)
    base = ["evaluate", "--run", str(run_path), "--qrels", str(qrels_path)]
    assert main(base + ["--measures", "ndcg_cut.10", "nDCG@5"]) == 0
    listed = capsys.readouterr().out
    assert main(base + ["-m", "ndcg_cut.10", "--measures", "nDCG@5"]) == 0
    repeated = capsys.readouterr().out
    assert listed == repeated
    assert {q for _, q in printed_values(listed)} == {"all"}
    assert set(name for name, _ in printed_values(listed)) == {"ndcg_cut_10", "ndcg_cut_5"}


def test_complete_scores_absent_judged_queries_as_zero(tmp_path, capsys):
    run_path, qrels_path, run, qrels = write_fixture(tmp_path, seed=2)
    assert main(["evaluate", "--run", str(run_path), "--qrels", str(qrels_path), "-c", "-m", "map", "-q"]) == 0
    out = capsys.readouterr().out
    reference = pytrec_eval.RelevanceEvaluator(qrels, {"map"}).evaluate(run)
    expected = [reference.get(q, {"map": 0.0})["map"] for q in qrels]
    printed = printed_values(out)
    assert printed[("map", "q24")] == 0.0
    assert printed[("map", "all")] == pytest.approx(np.mean(expected), abs=5e-5)
    assert "scored 0 (-c)" in out


def test_yaml_config_selects_run_file_mode(tmp_path, capsys):
    run_path, qrels_path, _, _ = write_fixture(tmp_path, seed=3)
    config = tmp_path / "eval.yaml"
    config.write_text(f"run: {run_path}\nqrels: [{qrels_path}]\nmeasures: [P.5]\n", "utf-8")
    assert main(["evaluate", str(config)]) == 0
    assert ("P_5", "all") in printed_values(capsys.readouterr().out)


def test_run_file_mode_errors(tmp_path, capsys):
    run_path, qrels_path, _, _ = write_fixture(tmp_path, seed=4)
    assert main(["evaluate", "--run", str(run_path), "--qrels", str(qrels_path), "--model_name_or_path", "x"]) == 1
    assert "does not apply" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(run_path)]) == 1
    assert "--qrels" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(run_path), "--qrels", str(qrels_path), "-m", "ndcg_cut"]) == 1
    assert "needs a rank cutoff" in capsys.readouterr().err
    bad = tmp_path / "bad.trec"
    bad.write_text("q1 Q0 d1 1 0.5 tag\nq1 Q0 d2 2 high tag\n", "utf-8")
    assert main(["evaluate", "--run", str(bad), "--qrels", str(qrels_path)]) == 1
    err = capsys.readouterr().err
    assert "bad.trec:2" in err and "Traceback" not in err


def test_merge_repeated_flags():
    assert merge_repeated(["--run", "r", "-m", "a", "--qrels", "q", "-m", "b", "c", "--measures=d"],
                          ("-m", "--measures")) == ["--run", "r", "--measures", "a", "b", "c", "d", "--qrels", "q"]
    assert merge_repeated(["--run", "r"], ("-m", "--measures")) == ["--run", "r"]
