"""``densekit compare RUN_A RUN_B ... --qrels Q``: printed table, compare.md / compare.json / PNG, options."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from densekit.cli.compare import positional_runs, run_names
from densekit.cli.main import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_runs(folder: Path, n_queries: int = 50) -> dict[str, Path]:
    """qrels.tsv (BEIR), queries.jsonl, and three runs: base, better (clearly), same_ish (noise)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    docs = [f"d{i}" for i in range(60)]
    qrels = {f"q{i}": list(rng.choice(docs, 3, replace=False)) for i in range(n_queries)}
    with open(folder / "qrels.tsv", "w", encoding="utf-8") as handle:
        handle.write("query-id\tcorpus-id\tscore\n")
        handle.writelines(f"{q}\t{d}\t1\n" for q, ds in qrels.items() for d in ds)
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps({"_id": q, "text": f"question number {q[1:]}"}) + "\n" for q in qrels)
    paths = {}
    for name, quality, skip in (("base", 0.25, 0), ("better", 0.85, 0), ("same_ish", 0.25, 3)):
        lines = []
        for i, (q, relevant) in enumerate(qrels.items()):
            if i < skip:
                continue
            scores = {d: float(rng.random()) for d in rng.choice(docs, 30, replace=False)}
            scores.update({d: 2.0 + float(rng.random()) for d in relevant if rng.random() < quality})
            ranked = sorted(scores.items(), key=lambda item: -item[1])
            lines += [f"{q} Q0 {d} {r} {s:.6f} {name}\n" for r, (d, s) in enumerate(ranked, 1)]
        paths[name] = folder / f"{name}.trec"
        paths[name].write_text("".join(lines), "utf-8")
    paths["qrels"], paths["queries"] = folder / "qrels.tsv", folder / "queries.jsonl"
    return paths


def test_compare_prints_table_and_writes_report_json_and_plot(tmp_path, capsys):
    files = write_runs(tmp_path / "data")
    out = tmp_path / "out"
    rc = main(["compare", str(files["base"]), str(files["better"]), str(files["same_ish"]), "--qrels",
               str(files["qrels"]), "-m", "ndcg_cut.10", "-m", "recip_rank", "--queries", str(files["queries"]),
               "--n_permutations", "2000", "--n_bootstrap", "2000", "--output_dir", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "base (baseline)" in printed and "Holm-Bonferroni-adjusted over the 4 tests" in printed
    better_line = next(line for line in printed.splitlines() if line.startswith("better - base") and "nDCG@10" in line)
    assert "*" in better_line and "†" in better_line  # both tests significant for the clearly better run
    assert "note: same_ish lacks 3 of the 50 judged queries; they score 0." in printed

    payload = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    assert payload["runs"] == ["base", "better", "same_ish"] and payload["measures"] == ["nDCG@10", "MRR"]
    assert payload["settings"]["correction"] == "holm" and payload["settings"]["n_permutations"] == 2000
    assert len(payload["tests"]) == 4 and payload["num_queries"] == 50
    test = next(t for t in payload["tests"] if t["run"] == "same_ish" and t["measure"] == "nDCG@10")
    a = [payload["per_query"]["base"]["nDCG@10"][q] for q in sorted(payload["per_query"]["base"]["nDCG@10"])]
    b = [payload["per_query"]["same_ish"]["nDCG@10"][q] for q in sorted(payload["per_query"]["base"]["nDCG@10"])]
    assert test["t_p_value"] == pytest.approx(stats.ttest_rel(b, a).pvalue, rel=1e-8)
    assert payload["per_query"]["same_ish"]["nDCG@10"]["q0"] == 0.0  # absent from the run: scored 0
    assert test["top_changes"][0]["text"].startswith("question number")

    report = (out / "compare.md").read_text(encoding="utf-8")
    for section in ("# densekit compare", "## Means", "## Differences", "## Per-query differences",
                    "## Queries that changed most", "## Coverage", "## Method"):
        assert section in report
    assert "![per-query differences](compare_per_query.png)" in report and "question number" in report
    assert (out / "compare_per_query.png").read_bytes()[:8] == PNG_MAGIC


def test_all_pairs_yaml_config_and_names(tmp_path, capsys):
    files = write_runs(tmp_path / "data")
    config = tmp_path / "compare.yaml"
    config.write_text(f"runs: [{files['base']}, {files['better']}, {files['same_ish']}]\nqrels: [{files['qrels']}]\n"
                      "measures: [P.5]\nall_pairs: true\nn_permutations: 500\nn_bootstrap: 500\ntop_queries: 0\n",
                      encoding="utf-8")
    assert main(["compare", str(config), "--names", "A", "B", "C", "--output_dir", str(tmp_path / "o")]) == 0
    payload = json.loads((tmp_path / "o" / "compare.json").read_text(encoding="utf-8"))
    assert [(t["baseline"], t["run"]) for t in payload["tests"]] == [("A", "B"), ("A", "C"), ("B", "C")]
    assert payload["settings"]["pairs"] == "all pairs"
    assert "## Queries that changed most" not in (tmp_path / "o" / "compare.md").read_text(encoding="utf-8")


def test_same_seed_same_numbers(tmp_path, capsys):
    files = write_runs(tmp_path / "data")
    argv = ["compare", str(files["base"]), str(files["same_ish"]), "--qrels", str(files["qrels"]),
            "--n_permutations", "3000", "--n_bootstrap", "3000", "--seed", "7"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0
    assert capsys.readouterr().out == first


@pytest.mark.parametrize("extra, message", [
    ([], "at least two run files"),
    (["--alpha", "2"], "--alpha"),
    (["--n_permutations", "0"], "n_permutations"),
    (["--bogus", "1"], "unknown option --bogus"),
])
def test_bad_options_are_one_line_errors(tmp_path, capsys, extra, message):
    files = write_runs(tmp_path / "data")
    runs = [str(files["base"])] if not extra else [str(files["base"]), str(files["better"])]
    assert main(["compare", *runs, "--qrels", str(files["qrels"]), *extra]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_compare_help_and_registration(capsys):
    from densekit.cli.main import COMMANDS

    assert "compare" in COMMANDS
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--help"])
    assert exit_info.value.code == 0 and "--n_permutations" in capsys.readouterr().out


def test_positional_runs_and_names():
    assert positional_runs(["a.trec", "b.trec", "--qrels", "q"]) == ["--runs", "a.trec", "b.trec", "--qrels", "q"]
    assert positional_runs(["c.yaml", "a", "b"]) == ["c.yaml", "--runs", "a", "b"]
    assert positional_runs(["--qrels", "q"]) == ["--qrels", "q"]
    assert run_names(["x/bm25.trec", "y/bm25.trec.gz", "dense.run"], None) == ["bm25", "bm25-2", "dense"]
