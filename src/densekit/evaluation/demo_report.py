"""The report at the top of a ``densekit demo`` folder: stages side by side, with the significance of each change.

Each stage folder already has its own run, metrics and report; this page is the one a person reads first:
a before/after table (every measure per stage, each change with its paired significance from
:mod:`densekit.evaluation.compare`), the metric-vs-cutoff curves of every stage on one plot, the training
curves and the negative-pool audit, linked.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional

from densekit.files import atomic_write

EVALUATED = ("base", "stage1", "stage2")
MEASURES = ("nDCG@10", "Recall@100", "MRR@10")


def _stage_runs(out: Path) -> dict[str, Path]:
    return {stage: out / stage / "run.trec" for stage in EVALUATED if (out / stage / "run.trec").is_file()}


def _queries(folder: Path):
    path = folder / "queries.jsonl"
    if not path.is_file():
        return None
    from densekit.data.store import load_store

    store = load_store([path], kind="queries")
    index = {qid: i for i, qid in enumerate(store.ids)}
    return lambda ids: [store.text_at(index[q]) if q in index else None for q in ids]


def _change_rows(comparison: Any) -> list[str]:
    """One Markdown row per (pair, measure): delta, CI, adjusted p-values, W/T/L."""
    rows = ["| change | measure | delta | 95% CI (bootstrap) | p (t-test, Holm) | p (randomization, Holm) | W/T/L |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for t in comparison.tests:
        mark = " *" if t.t_significant else ""
        rmark = " †" if t.randomization_significant else ""
        rows.append(f"| {t.baseline} -> {t.run} | {t.measure} | {t.delta:+.4f} | "
                    f"[{t.bootstrap_interval[0]:+.4f}, {t.bootstrap_interval[1]:+.4f}] | {t.t_p_adjusted:.4f}{mark} | "
                    f"{t.randomization_p_adjusted:.4f}{rmark} | {t.wins}/{t.ties}/{t.losses} |")
    return rows


def write_demo_report(out: Path, folder: Path, split: str, *, seconds: float, settings: Mapping[str, Any],
                      model: str, seed: int = 42) -> Path:
    """Compare the evaluated stages, plot them, write ``out/report.md``; print the before/after table."""
    from densekit.data.formats import read_qrels, read_run
    from densekit.evaluation import plots
    from densekit.evaluation.compare import compare_runs
    from densekit.evaluation.metrics import metrics_at_every_cutoff, run_arrays
    from densekit.evaluation.output import comparison_table, write_comparison

    runs = _stage_runs(out)
    qrels = read_qrels(folder / "qrels" / f"{split}.tsv")
    lines = ["# densekit demo", "",
             f"Model `{model}` on `{folder}` (evaluated on the `{split}` queries), {seconds / 60:.1f} minutes.", ""]
    if not runs:
        lines += ["No stage was evaluated."]
    loaded = {stage: read_run(path) for stage, path in runs.items()}
    comparison = None
    if len(loaded) >= 2:
        comparison = compare_runs(qrels, loaded, list(MEASURES), query_text=_queries(folder), seed=seed,
                                  all_pairs=True)
        write_comparison(out / "compare", comparison, run_files={s: str(p) for s, p in runs.items()},
                         qrels_files=[str(folder / "qrels" / f"{split}.tsv")])
        print(comparison_table(comparison))
    metrics = {stage: json.loads((out / stage / "metrics.json").read_text(encoding="utf-8"))["aggregate"]
               for stage in runs if (out / stage / "metrics.json").is_file()}
    if metrics:
        lines += ["## Stages", "", "| stage | " + " | ".join(MEASURES) + " |",
                  "| --- |" + " --- |" * len(MEASURES)]
        for stage, values in metrics.items():
            lines.append(f"| {stage} | " + " | ".join(f"{values.get(m, float('nan')):.4f}" for m in MEASURES) + " |")
        lines.append("")
    if comparison is not None:
        lines += ["## Changes and their significance", "",
                  "Paired over the judged queries; p-values Holm-Bonferroni-adjusted over all the tests below; "
                  "* / † = significant at 0.05 (t-test / randomization test). Details: "
                  "[compare/compare.md](compare/compare.md).", "", *_change_rows(comparison), ""]
        if (out / "compare" / "compare_per_query.png").is_file():
            lines += ["![per-query differences](compare/compare_per_query.png)", ""]
    if plots.available() and loaded:
        curves = {}
        for stage, run in loaded.items():
            qids, indices, values, doc_ids = run_arrays(run)
            at_k = metrics_at_every_cutoff(qrels, qids, indices, values, doc_ids)
            curves[f"{stage} nDCG"] = at_k["nDCG"]
            curves[f"{stage} Recall"] = at_k["Recall"]
        plots.plot_metric_at_k(curves, out / "metrics_at_k.png", title="nDCG@k and Recall@k per stage")
        lines += ["## nDCG@k and Recall@k", "", "![metrics at k](metrics_at_k.png)", ""]
    training = [(stage, out / stage / "model" / "training_curves.png") for stage in ("stage1", "stage2")]
    training = [(stage, png) for stage, png in training if png.is_file()]
    if training:
        lines += ["## Training", ""]
        lines += [f"![{stage} training]({png.relative_to(out)})" for stage, png in training] + [""]
    if (out / "mined" / "audit.md").is_file():
        lines += ["## Hard negatives", "", "Mined with the stage-1 model: [mined/audit.md](mined/audit.md) "
                  "(what each rule dropped, score histograms, a sample to read).", ""]
        if (out / "mined" / "audit.png").is_file():
            lines += ["![negative pool](mined/audit.png)", ""]
    lines += ["## Settings", "", "| setting | value |", "| --- | --- |"]
    lines += [f"| {key} | {value} |" for key, value in settings.items()]
    commands = [(stage, out / folder / "command.txt") for stage, folder in (
        ("base", "base"), ("stage1", "stage1/model"), ("stage1", "stage1"), ("mined", "mined"),
        ("stage2", "stage2/model"), ("stage2", "stage2"))]
    commands = [(stage, path.read_text(encoding="utf-8").strip()) for stage, path in commands if path.is_file()]
    if commands:
        lines += ["", "## Commands", "", "Each stage is one densekit command:", "", "```bash"]
        lines += [command for _, command in commands] + ["```"]
    with atomic_write(out / "report.md") as handle:
        handle.write("\n".join(lines) + "\n")
    summary = " | ".join(f"{stage} nDCG@10={values.get('nDCG@10', float('nan')):.4f}" for stage, values in metrics.items())
    print(f"densekit demo: {summary} | {seconds / 60:.1f} min -> {out / 'report.md'}", flush=True)
    return out / "report.md"
