"""PNG figures for run reports (metric vs cutoff, per-query differences, training curves, score histograms).

A report is read by a person who wants to see the shape of a result, not only its mean, so every run
folder gets a few plain plots next to its report.md. matplotlib is imported only when a figure is drawn
(importing densekit or running a command without plots stays fast) and through its object API with the
Agg canvas: no window, no display needed, and the caller's pyplot backend and state are left alone.
Every function writes its PNG atomically and returns the path.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from densekit.errors import ConfigError
from densekit.files import atomic_write

PathLike = Union[str, Path]


def available() -> bool:
    """Whether matplotlib can be imported (reports leave the plots out, with a note, when not)."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def _figure(width: float, height: float):
    """A matplotlib Figure bound to an Agg canvas (no pyplot, no global backend change)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ConfigError("plots need matplotlib: `pip install matplotlib`.") from err
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: PathLike) -> Path:
    """Render to PNG in memory, then write the file atomically."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    path = Path(path)
    with atomic_write(path, "wb") as handle:
        handle.write(buffer.getvalue())
    return path


def plot_metric_at_k(curves: Mapping[str, Sequence[float]], path: PathLike, *, ks: Optional[Sequence[int]] = None,
                     title: str = "Metric vs cutoff k") -> Path:
    """Lines of metric value against cutoff k (log-scaled when k spans more than a decade).

    ``curves`` maps a label (``"nDCG"``, ``"Recall"``, ``"dense nDCG"`` ...) to values at ``ks``
    (default 1, 2, ..., len(values)), e.g. the output of ``metrics.metrics_at_every_cutoff``.
    """
    figure = _figure(7.0, 4.2)
    axes = figure.add_subplot()
    longest = 1
    for label, values in curves.items():
        values = np.asarray(values, dtype=np.float64)
        x = np.arange(1, len(values) + 1) if ks is None else np.asarray(ks)
        longest = max(longest, int(x.max()) if x.size else 1)
        axes.plot(x, values, label=f"{label}@k", linewidth=1.6)
    if longest > 10:
        axes.set_xscale("log")
    axes.set_xlim(1, longest)
    axes.set_ylim(0.0, 1.0)
    axes.set_xlabel("cutoff k")
    axes.set_ylabel("mean over queries")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="best")
    return _save(figure, path)


def plot_per_query_differences(differences: Mapping[str, Mapping[str, Sequence[float]]], path: PathLike, *,
                               title: str = "Per-query differences (run - baseline), sorted") -> Path:
    """One panel per comparison (rows) and measure (columns): the per-query differences sorted from the
    largest gain to the largest loss, gains green and losses red, with wins/ties/losses in the title.

    ``differences`` maps a comparison label (``"dense - bm25"``) to ``{measure: differences}``.
    """
    labels = list(differences)
    measures = list(dict.fromkeys(m for row in differences.values() for m in row))
    if not labels or not measures:
        raise ConfigError("plot_per_query_differences needs at least one comparison with one measure.")
    figure = _figure(max(4.5, 3.8 * len(measures)), max(2.8, 2.4 * len(labels)) + 0.5)
    figure.suptitle(title)
    grid = figure.subplots(len(labels), len(measures), squeeze=False, sharey=True)
    for row, label in enumerate(labels):
        for col, measure in enumerate(measures):
            axes = grid[row][col]
            values = differences[label].get(measure)
            if values is None:
                axes.set_visible(False)
                continue
            d = np.sort(np.asarray(values, dtype=np.float64))[::-1]
            x = np.arange(1, d.size + 1)
            axes.fill_between(x, d, 0.0, where=d > 0, color="tab:green", step="mid", linewidth=0)
            axes.fill_between(x, d, 0.0, where=d < 0, color="tab:red", step="mid", linewidth=0)
            axes.axhline(0.0, color="black", linewidth=0.8)
            wins, losses = int((d > 1e-12).sum()), int((d < -1e-12).sum())
            axes.set_title(f"{label}: {measure}\nwins {wins} / ties {d.size - wins - losses} / losses {losses}",
                           fontsize=9)
            axes.set_xlim(0.5, d.size + 0.5)
            axes.set_xlabel("queries (sorted)", fontsize=8)
            axes.grid(True, axis="y", alpha=0.3)
    return _save(figure, path)


_NOT_CURVES = ("epoch", "step", "total_flos", "runtime", "per_second")


def plot_training_curves(log_history: Sequence[Mapping[str, Any]], path: PathLike, *,
                         title: str = "Training") -> Path:
    """One panel per logged quantity (loss, learning rate, grad norm, every ``eval_*`` metric) against
    the global step, from a Hugging Face ``Trainer.state.log_history`` (a list of dicts with ``step``).
    Bookkeeping entries (epoch, runtime, throughput, flos) are left out."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for entry in log_history:
        step = entry.get("step")
        if step is None:
            continue
        for key, value in entry.items():
            if any(part in key for part in _NOT_CURVES) or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and math.isfinite(value):
                xs, ys = series.setdefault(key, ([], []))
                xs.append(float(step))
                ys.append(float(value))
    if not series:
        raise ConfigError("plot_training_curves: the log history has no numeric entries with a 'step'.")
    columns = min(3, len(series))
    rows = math.ceil(len(series) / columns)
    figure = _figure(4.2 * columns, 3.0 * rows)
    figure.suptitle(title)
    grid = figure.subplots(rows, columns, squeeze=False)
    for i, (key, (xs, ys)) in enumerate(sorted(series.items())):
        axes = grid[i // columns][i % columns]
        axes.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, linewidth=1.4)
        axes.set_title(key, fontsize=10)
        axes.set_xlabel("step", fontsize=8)
        axes.grid(True, alpha=0.3)
    for j in range(len(series), rows * columns):
        grid[j // columns][j % columns].set_visible(False)
    return _save(figure, path)


def plot_score_histograms(groups: Mapping[str, Sequence[float]], path: PathLike, *, bins: int = 50,
                          title: str = "Score distribution", xlabel: str = "score") -> Path:
    """Overlaid, normalized histograms of score groups on shared bins, e.g. the similarity of positives,
    of mined negatives and of random documents: how well a model separates them, at a glance."""
    arrays = {label: np.asarray(values, dtype=np.float64) for label, values in groups.items()}
    arrays = {label: a[np.isfinite(a)] for label, a in arrays.items()}
    arrays = {label: a for label, a in arrays.items() if a.size}
    if not arrays:
        raise ConfigError("plot_score_histograms needs at least one non-empty group of finite scores.")
    everything = np.concatenate(list(arrays.values()))
    low, high = float(everything.min()), float(everything.max())
    edges = np.linspace(low, high if high > low else low + 1.0, bins + 1)
    figure = _figure(7.0, 4.2)
    axes = figure.add_subplot()
    for label, values in arrays.items():
        axes.hist(values, bins=edges, density=True, alpha=0.5, label=f"{label} (n={values.size})")
    axes.set_xlabel(xlabel)
    axes.set_ylabel("density")
    axes.set_title(title)
    axes.legend()
    axes.grid(True, alpha=0.3)
    return _save(figure, path)


__all__ = ["available", "plot_metric_at_k", "plot_per_query_differences", "plot_score_histograms",
           "plot_training_curves"]
