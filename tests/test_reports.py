"""Evaluation reports: report.md sections, metrics_at_k.png, exact metric-vs-cutoff curves, the plots API."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from densekit.errors import ConfigError
from densekit.evaluation import plots
from densekit.evaluation.metrics import compute_metrics, metrics_at_every_cutoff
from densekit.evaluation.output import SearchResult, markdown_report, write_evaluation
from tests.test_evaluation_metrics import random_case

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_valid_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    image = pytest.importorskip("PIL.Image")
    with image.open(path) as png:
        png.verify()


@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_at_every_cutoff_equal_compute_metrics_at_each_k(seed):
    qrels, query_ids, indices, scores, doc_ids = random_case(seed, depth=30)
    curves = metrics_at_every_cutoff(qrels, query_ids, indices, scores, doc_ids, max_k=1000)
    assert curves["k"].tolist() == list(range(1, 31))  # capped at the run depth
    names = [f"nDCG@{k}" for k in range(1, 31)] + [f"Recall@{k}" for k in range(1, 31)]
    exact = compute_metrics(qrels, query_ids, indices, scores, doc_ids, names).aggregate
    np.testing.assert_allclose(curves["nDCG"], [exact[f"nDCG@{k}"] for k in range(1, 31)], rtol=0, atol=1e-12)
    np.testing.assert_allclose(curves["Recall"], [exact[f"Recall@{k}"] for k in range(1, 31)], rtol=0, atol=1e-12)
    short = metrics_at_every_cutoff(qrels, query_ids, indices, scores, doc_ids, max_k=7)
    np.testing.assert_array_equal(short["nDCG"], curves["nDCG"][:7])


def search_result(seed: int = 0):
    qrels, query_ids, indices, scores, doc_ids = random_case(seed)
    return qrels, SearchResult(query_ids=query_ids, doc_ids=doc_ids, scores=scores, indices=indices)


def test_write_evaluation_report_sections_and_png(tmp_path, capsys):
    qrels, result = search_result()
    metrics = compute_metrics(qrels, result.query_ids, result.indices, result.scores, result.doc_ids)
    settings = {"search_topk": 30, "query_max_len": 32, "passage_max_len": 128, "corpus_cache_key": "abc123"}
    write_evaluation(tmp_path, result, metrics, tag="test", seconds=1.5, settings=settings, qrels=qrels,
                     fingerprints={"corpus": "c0ffee", "qrels": "feed"})
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert report.startswith("| measure | value |")  # the metrics come first
    order = [report.index(s) for s in ("| nDCG@10 |", "## nDCG@k and Recall@k", "## Settings",
                                       "## Data fingerprints")]
    assert order == sorted(order)
    assert "![nDCG@k and Recall@k, k = 1..30](metrics_at_k.png)" in report
    assert "| passage_max_len | 128 |" in report and "| corpus_cache_key | abc123 |" in report
    assert "| corpus | `c0ffee` |" in report and "| seconds | 1.5 |" in report
    assert f"{metrics.num_queries} queries evaluated" in report
    assert_valid_png(tmp_path / "metrics_at_k.png")
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["settings"]["passage_max_len"] == 128 and saved["fingerprints"]["qrels"] == "feed"
    assert len(saved["metrics_at_k"]["nDCG"]) == 30 and saved["num_queries"] == metrics.num_queries
    assert (tmp_path / "run.trec").is_file()
    assert capsys.readouterr().out.startswith("densekit evaluate: nDCG@10=")


def test_write_evaluation_without_qrels_keeps_the_old_call(tmp_path, capsys):
    qrels, result = search_result(1)
    metrics = compute_metrics(qrels, result.query_ids, result.indices, result.scores, result.doc_ids)
    write_evaluation(tmp_path, result, metrics, tag="t", seconds=0.1, settings={"search_topk": 30})
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert report.startswith("| measure | value |") and "## Settings" in report
    assert "## Data fingerprints" not in report and "metrics_at_k" not in report
    assert not (tmp_path / "metrics_at_k.png").exists()


def test_evaluate_run_file_report(tmp_path, capsys):
    from densekit.cli.main import main
    from tests.test_evaluate_run_file import write_fixture

    run_path, qrels_path, _, _ = write_fixture(tmp_path / "data")
    assert main(["evaluate", "--run", str(run_path), "--qrels", str(qrels_path), "--output_dir",
                 str(tmp_path / "out")]) == 0
    report = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert report.startswith("| measure | value |")
    for section in ("## nDCG@k and Recall@k, k = 1..40", "## Settings", "## Data fingerprints"):
        assert section in report
    assert "3 judged queries absent from the run left out" in report
    assert_valid_png(tmp_path / "out" / "metrics_at_k.png")


def test_markdown_cells_are_escaped():
    text = markdown_report({"nDCG@10": 0.5}, {"template": "a | b\nc"})
    assert "| template | a \\| b c |" in text


def test_plots_api_writes_valid_pngs(tmp_path):
    rng = np.random.default_rng(0)
    k = np.arange(1, 101)
    paths = [
        plots.plot_metric_at_k({"nDCG": 1 - 1 / np.sqrt(k), "Recall": 1 - 1 / k}, tmp_path / "a.png"),
        plots.plot_per_query_differences({"dense - bm25": {"nDCG@10": rng.normal(0, 0.2, 80),
                                                           "MRR": rng.normal(0, 0.2, 80)}}, tmp_path / "b.png"),
        plots.plot_training_curves([{"step": s, "loss": 1 / s, "learning_rate": 1e-5, "epoch": s / 10}
                                    for s in range(1, 20)] + [{"step": 10, "eval_nDCG@10": 0.3, "eval_runtime": 2.0}],
                                   tmp_path / "c.png"),
        plots.plot_score_histograms({"positives": rng.normal(0.7, 0.1, 50), "negatives": rng.normal(0.3, 0.1, 500)},
                                    tmp_path / "sub" / "d.png"),
    ]
    for path in paths:
        assert_valid_png(path)
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, no leftovers
    with pytest.raises(ConfigError):
        plots.plot_training_curves([{"epoch": 1.0}], tmp_path / "e.png")
    with pytest.raises(ConfigError):
        plots.plot_score_histograms({"empty": []}, tmp_path / "f.png")


def test_matplotlib_is_imported_only_when_plotting():
    code = ("import sys, densekit.evaluation.output, densekit.evaluation.compare, densekit.evaluation.plots; "
            "print('matplotlib' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
