"""Files an evaluation leaves behind: a TREC run, the metrics as JSON, a Markdown report, a summary line."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import numpy as np

from densekit.data.formats import write_run
from densekit.evaluation import plots
from densekit.evaluation.metrics import MetricResults, metrics_at_every_cutoff
from densekit.files import atomic_write

if TYPE_CHECKING:
    from densekit.evaluation.compare import Comparison


@dataclass
class SearchResult:
    """Top-k lists of a query set: rows follow ``query_ids``; ``indices`` point into ``doc_ids`` (-1 = none)."""

    query_ids: list[str]
    doc_ids: list[str]
    scores: np.ndarray
    indices: np.ndarray


def summary_line(aggregate: dict[str, float], num_queries: int, num_documents: int, seconds: float) -> str:
    """One line a person reads at the end of a run."""
    parts = " ".join(f"{name}={value:.4f}" for name, value in aggregate.items())
    return f"densekit evaluate: {parts} | {num_queries} queries, {num_documents} documents, {seconds:.1f}s"


def markdown_report(aggregate: Mapping[str, float], settings: Mapping[str, Any], *,
                    counts: Optional[Mapping[str, int]] = None, fingerprints: Optional[Mapping[str, str]] = None,
                    plots: Optional[Mapping[str, str]] = None) -> str:
    """The report.md of an evaluation: what a person reads first, so the metrics table comes first.

    Then a line of query counts (``counts``: evaluated / unjudged / missing queries, when given), the plots
    (``plots``: caption -> file name next to the report, or -> a note when a plot could not be drawn),
    the resolved settings (max lengths, cache keys ... as the caller passes them) and the fingerprints of
    the data files (when given), so that two reports can be told apart without opening the run.
    """
    lines = ["| measure | value |", "| --- | --- |"]
    lines += [f"| {name} | {value:.4f} |" for name, value in aggregate.items()]
    if counts:
        lines += ["", _counts_sentence(counts)]
    for caption, target in (plots or {}).items():
        image = target.endswith(".png")
        lines += ["", f"## {caption}", "", f"![{caption}]({target})" if image else target]
    lines += ["", "## Settings", "", "| setting | value |", "| --- | --- |"]
    lines += [f"| {key} | {_cell(value)} |" for key, value in settings.items()]
    if fingerprints:
        lines += ["", "## Data fingerprints", "", "| data | fingerprint |", "| --- | --- |"]
        lines += [f"| {_cell(name)} | `{value}` |" for name, value in fingerprints.items()]
    return "\n".join(lines) + "\n"


def _counts_sentence(counts: Mapping[str, int]) -> str:
    text = f"{counts.get('num_queries', 0)} queries evaluated (judged and in the run)"
    if counts.get("run_queries_without_judgments"):
        text += f"; {counts['run_queries_without_judgments']} run queries without judgments left out"
    if counts.get("judged_queries_missing_from_run"):
        text += (f"; {counts['judged_queries_missing_from_run']} judged queries absent from the run "
                 f"{'scored 0' if counts.get('complete') else 'left out (trec_eval without -c)'}")
    return text + "."


def _cell(value: Any) -> str:
    """A value as one Markdown table cell (no pipes, no line breaks)."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def write_metrics_report(output_dir: Path, metrics: MetricResults, *, settings: Mapping[str, Any],
                         fingerprints: Optional[Mapping[str, str]] = None,
                         curves: Optional[Mapping[str, np.ndarray]] = None,
                         extra_counts: Optional[Mapping[str, Any]] = None) -> dict[str, Path]:
    """Write metrics.json, metrics_at_k.png (when ``curves`` from ``metrics_at_every_cutoff`` are given)
    and report.md into ``output_dir``; returns the paths written by name.

    Shared by ``write_evaluation`` (search results) and ``densekit evaluate --run`` (an existing run file).
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    counts = {"num_queries": metrics.num_queries,
              "run_queries_without_judgments": metrics.run_queries_without_judgments,
              "judged_queries_missing_from_run": metrics.judged_queries_missing_from_run, **(extra_counts or {})}
    payload: dict[str, Any] = {"aggregate": metrics.aggregate, "per_query": metrics.per_query,
                               "settings": dict(settings), **counts}
    if fingerprints:
        payload["fingerprints"] = dict(fingerprints)
    written: dict[str, Path] = {}
    shown: dict[str, str] = {}
    if curves is not None and len(curves["k"]):
        payload["metrics_at_k"] = {name: np.asarray(v).tolist() for name, v in curves.items()}
        caption = f"nDCG@k and Recall@k, k = 1..{int(curves['k'][-1])}"
        if plots.available():
            written["metrics_at_k.png"] = plots.plot_metric_at_k(
                {"nDCG": curves["nDCG"], "Recall": curves["Recall"]}, output_dir / "metrics_at_k.png",
                title=f"Metric vs cutoff ({metrics.num_queries} queries)")
            shown[caption] = "metrics_at_k.png"
        else:
            shown[caption] = "(plot left out: matplotlib is not installed; `pip install matplotlib`)"
    with atomic_write(output_dir / "metrics.json") as handle:
        json.dump(payload, handle, indent=1)
    written["metrics.json"] = output_dir / "metrics.json"
    with atomic_write(output_dir / "report.md") as handle:
        handle.write(markdown_report(metrics.aggregate, payload["settings"], counts=counts,
                                     fingerprints=fingerprints, plots=shown))
    written["report.md"] = output_dir / "report.md"
    return written


def write_evaluation(output_dir: Path, result: SearchResult, metrics: MetricResults, *, tag: str, seconds: float,
                     settings: dict[str, Any], qrels: Optional[Mapping[str, Mapping[str, int]]] = None,
                     fingerprints: Optional[Mapping[str, str]] = None, max_k: int = 1000) -> str:
    """Write run.trec, metrics.json and report.md into ``output_dir``; print and return the summary line.

    With ``qrels`` (the judgments ``metrics`` were computed from) the report also gets metrics_at_k.png,
    nDCG@k and Recall@k for k = 1 .. min(``max_k``, search depth); ``fingerprints`` (name -> hash of a data
    file or text set) get their own report section.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    write_run(output_dir / "run.trec", result.query_ids, result.indices, result.scores, result.doc_ids, tag=tag)
    curves = None
    if qrels is not None:
        curves = metrics_at_every_cutoff(qrels, result.query_ids, result.indices, result.scores, result.doc_ids,
                                         max_k=max_k)
    write_metrics_report(output_dir, metrics, settings={**settings, "seconds": round(seconds, 3)},
                         fingerprints=fingerprints, curves=curves)
    line = summary_line(metrics.aggregate, len(result.query_ids), len(result.doc_ids), seconds)
    print(line, flush=True)
    return line


def report_metrics(report_to, aggregate: dict[str, float], prefix: str = "eval") -> list[str]:
    """Send aggregate metrics to the experiment trackers named in ``report_to``; returns those used.

    Supported: ``wandb`` (joins the active run, or starts one in project ``densekit``). "none", "all"
    with nothing installed, and an empty list report nowhere. A named tracker that is not installed is a
    ConfigError, raised before any encoding (see :func:`check_reporters`).
    """
    used = []
    for name in check_reporters(report_to):
        if name == "wandb":
            import wandb

            run = wandb.run or wandb.init(project="densekit", job_type="evaluation")
            run.log({f"{prefix}/{key}": value for key, value in aggregate.items()})
            used.append(name)
    return used


def check_reporters(report_to) -> list[str]:
    """The trackers to report to; fails early when a named one cannot be imported."""
    import importlib.util

    from densekit.errors import ConfigError

    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    names = [n for n in names if n not in ("none", None)]
    if names == ["all"]:
        return ["wandb"] if importlib.util.find_spec("wandb") else []
    unknown = [n for n in names if n != "wandb"]
    if unknown:
        raise ConfigError(f"report_to={unknown} is not supported by the evaluator; use 'wandb' or 'none'.")
    if names and importlib.util.find_spec("wandb") is None:
        raise ConfigError("report_to=['wandb'] needs the wandb package: `pip install wandb`, or set report_to='none'.")
    return names


# ------------------------------------------------------------------------------------ densekit compare
def _marked(p: float, significant: bool, mark: str) -> str:
    return f"{p:.4f}{' ' + mark if significant else ''}"


def _signed(value: float) -> str:
    return f"{value:+.4f}"


def _legend(comparison: Comparison) -> str:
    settings = comparison.settings
    corrected = (f"Holm-Bonferroni-adjusted over the {settings['tests_per_kind']} tests of each kind"
                 if settings["correction"] == "holm" else "one test of each kind, no correction needed")
    return (f"p-values are two-sided, {corrected}; * = paired t-test, † = randomization test "
            f"({settings['n_permutations']} sign flips) significant at alpha = {settings['alpha']}; "
            f"CI = {100 * (1 - settings['alpha']):g}% percentile bootstrap ({settings['n_bootstrap']} resamples).")


def comparison_table(comparison: Comparison) -> str:
    """The plain-text tables ``densekit compare`` prints: means per run, then one line per test."""
    baseline = comparison.settings["baseline"]
    names = [f"{r} (baseline)" if r == baseline else r for r in comparison.runs]
    width = max(len(n) for n in names) + 2
    lines = ["run".ljust(width) + "".join(f"{m:>12}" for m in comparison.measures)]
    for name, run in zip(names, comparison.runs):
        lines.append(name.ljust(width) + "".join(f"{comparison.means[run][m]:>12.4f}" for m in comparison.measures))
    labels = [f"{t.run} - {t.baseline}" for t in comparison.tests]
    left = max([len(label) for label in labels] + [10]) + 2
    lines += ["", f"{'comparison':<{left}}{'measure':<14}{'delta':>9}  {'CI (bootstrap)':<22}{'p t-test':<12}"
                  f"{'p random.':<12}W/T/L"]
    for label, t in zip(labels, comparison.tests):
        interval = f"[{_signed(t.bootstrap_interval[0])}, {_signed(t.bootstrap_interval[1])}]"
        lines.append(f"{label:<{left}}{t.measure:<14}{_signed(t.delta):>9}  {interval:<22}"
                     f"{_marked(t.t_p_adjusted, t.t_significant, '*'):<12}"
                     f"{_marked(t.randomization_p_adjusted, t.randomization_significant, '†'):<12}"
                     f"{t.wins}/{t.ties}/{t.losses}")
    lines += ["", _legend(comparison)]
    return "\n".join(lines)


def comparison_markdown(comparison: Comparison, *, run_files: Optional[Mapping[str, str]] = None,
                        plot: Optional[str] = None, qrels_files: Sequence[str] = ()) -> str:
    """compare.md: means, tests, the per-query plot, the queries that changed most, coverage and method."""
    settings = comparison.settings
    baseline = settings["baseline"]
    lines = ["# densekit compare", "",
             f"{len(comparison.runs)} runs on {len(comparison.query_ids)} judged queries"
             f"{' (qrels: ' + ', '.join(qrels_files) + ')' if qrels_files else ''}; baseline **{_cell(baseline)}**; "
             f"pairs: {settings['pairs']}.", "", "## Means", "",
             "| run | " + " | ".join(comparison.measures) + " |",
             "| --- |" + " --- |" * len(comparison.measures)]
    for run in comparison.runs:
        lines.append(f"| {_cell(run)} | " + " | ".join(f"{comparison.means[run][m]:.4f}" for m in comparison.measures)
                     + " |")
    lines += ["", "## Differences", "", _legend(comparison), "",
              "| comparison | measure | Δ | Δ % | CI (bootstrap) | CI (t) | t | p t-test | p t-test, adjusted "
              "| p randomization | p randomization, adjusted | wins / ties / losses |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for t in comparison.tests:
        relative = f"{100 * t.relative_delta:+.1f}%" if t.relative_delta is not None else "n/a"
        lines.append(
            f"| {_cell(t.run)} - {_cell(t.baseline)} | {t.measure} | {_signed(t.delta)} | {relative} "
            f"| [{_signed(t.bootstrap_interval[0])}, {_signed(t.bootstrap_interval[1])}] "
            f"| [{_signed(t.t_interval[0])}, {_signed(t.t_interval[1])}] | {t.t_statistic:.3f} "
            f"| {t.t_p_value:.4f} | {_marked(t.t_p_adjusted, t.t_significant, '*')} | {t.randomization_p_value:.4f} "
            f"| {_marked(t.randomization_p_adjusted, t.randomization_significant, '†')} "
            f"| {t.wins} / {t.ties} / {t.losses} |")
    if plot:
        lines += ["", "## Per-query differences", "", f"![per-query differences]({plot})"]
    changed = [t for t in comparison.tests if t.top_changes]
    if changed:
        lines += ["", "## Queries that changed most"]
    for t in changed:
        lines += ["", f"### {_cell(t.run)} vs {_cell(t.baseline)}, {t.measure}", "",
                  f"| query | text | {_cell(t.baseline)} | {_cell(t.run)} | Δ |", "| --- | --- | --- | --- | --- |"]
        for change in t.top_changes:
            text = change["text"] if change["text"] is not None else ""
            text = text if len(text) <= 120 else text[:117] + "..."
            lines.append(f"| {_cell(change['query_id'])} | {_cell(text)} | {change['baseline']:.4f} "
                         f"| {change['run']:.4f} | {_signed(change['delta'])} |")
    lines += ["", "## Coverage", "", "| run | file | queries in run | judged queries absent (scored 0) "
              "| run queries without judgments (ignored) |", "| --- | --- | --- | --- | --- |"]
    for run in comparison.runs:
        cover = comparison.coverage[run]
        lines.append(f"| {_cell(run)} | {_cell((run_files or {}).get(run, ''))} | {cover['queries']} "
                     f"| {cover['judged_missing']} | {cover['unjudged']} |")
    lines += ["", "## Method", "",
              "Differences are run - baseline per judged query; a judged query absent from a run scores 0. "
              "Paired t-test: two-sided, n - 1 degrees of freedom (as scipy.stats.ttest_rel). Randomization "
              "test: two-sided paired sign-flip test of the mean difference, exact when 2^n <= n_permutations, "
              "else p = (hits + 1) / (n_permutations + 1). Bootstrap: percentile interval of the mean "
              f"difference over resampled queries. Holm-Bonferroni adjusts each kind of p-value over all "
              f"comparisons and measures. Seed {settings['seed']}."]
    return "\n".join(lines) + "\n"


def write_comparison(output_dir: Path, comparison: Comparison, *, run_files: Optional[Mapping[str, str]] = None,
                     qrels_files: Sequence[str] = ()) -> dict[str, Path]:
    """Write compare.json, compare_per_query.png (matplotlib permitting) and compare.md into ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    payload = comparison.to_json()
    payload["run_files"] = dict(run_files or {})
    payload["qrels_files"] = list(qrels_files)
    with atomic_write(output_dir / "compare.json") as handle:
        json.dump(payload, handle, indent=1, ensure_ascii=False)
    written["compare.json"] = output_dir / "compare.json"
    plot = None
    if plots.available():
        differences: dict[str, dict[str, np.ndarray]] = {}
        for t in comparison.tests:
            differences.setdefault(f"{t.run} - {t.baseline}", {})[t.measure] = (
                comparison.per_query[t.run][t.measure] - comparison.per_query[t.baseline][t.measure])
        written["compare_per_query.png"] = plots.plot_per_query_differences(differences,
                                                                            output_dir / "compare_per_query.png")
        plot = "compare_per_query.png"
    with atomic_write(output_dir / "compare.md") as handle:
        handle.write(comparison_markdown(comparison, run_files=run_files, plot=plot, qrels_files=qrels_files))
    written["compare.md"] = output_dir / "compare.md"
    return written
