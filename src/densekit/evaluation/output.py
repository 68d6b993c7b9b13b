"""Files an evaluation leaves behind: a TREC run, the metrics as JSON, a Markdown report, a summary line."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from densekit.data.formats import write_run
from densekit.files import atomic_write


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


def markdown_report(aggregate: dict[str, float], settings: dict[str, Any]) -> str:
    """A small Markdown table of the aggregate metrics and the run's settings."""
    lines = ["| measure | value |", "| --- | --- |"]
    lines += [f"| {name} | {value:.4f} |" for name, value in aggregate.items()]
    lines += ["", "| setting | value |", "| --- | --- |"]
    lines += [f"| {key} | {value} |" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def write_evaluation(output_dir: Path, result: SearchResult, metrics, *, tag: str, seconds: float,
                     settings: dict[str, Any]) -> str:
    """Write run.trec, metrics.json and report.md into ``output_dir``; print and return the summary line."""
    output_dir.mkdir(parents=True, exist_ok=True)
    write_run(output_dir / "run.trec", result.query_ids, result.indices, result.scores, result.doc_ids, tag=tag)
    payload = {"aggregate": metrics.aggregate, "per_query": metrics.per_query,
               "settings": {**settings, "seconds": round(seconds, 3)}}
    with atomic_write(output_dir / "metrics.json") as handle:
        json.dump(payload, handle, indent=1)
    with atomic_write(output_dir / "report.md") as handle:
        handle.write(markdown_report(metrics.aggregate, payload["settings"]))
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
