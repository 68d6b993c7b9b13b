"""The audit of a mined negative pool: ``audit.md`` and ``audit.png`` beside the mined files.

Why: a pool of hard negatives is only as good as its false-negative control, and the numbers that tell
(how many candidates each rule dropped, how the kept negatives score against the positives, how many kept
negatives some other qrels file judges relevant) are cheap to compute while the pool is in memory and costly
to rebuild afterwards. The report is for a person to read before training on the pool; its counts are the
pool's own (:meth:`densekit.evaluation.mining.Pool.counts`), the same as in ``mining.json``, so they match the
mined files line for line. The fingerprint printed at the top is what a model trained on the pool records.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import numpy as np

from densekit.evaluation.mining import DROP_RULES, KEPT, PADDING, STATUS_NAMES, UNUSED, Pool
from densekit.files import atomic_write

if TYPE_CHECKING:
    from densekit.data.datasets import MultiLevelDataset

# Not report.md: evaluate() writes that name, and one evaluator (one output_dir) often evaluates and mines.
REPORT, PLOT = "audit.md", "audit.png"
#: Rank bands of the tables and plots (inclusive; None = no upper end).
BANDS: tuple[tuple[int, Optional[int]], ...] = ((1, 10), (11, 30), (31, 100), (101, None))
_DROPPED = [code for code, name in STATUS_NAMES.items() if name in DROP_RULES]


def band_label(band: tuple[int, Optional[int]]) -> str:
    low, high = band
    return f"{low}-{high}" if high is not None else f"{low}+"


def _in_band(ranks: np.ndarray, band: tuple[int, Optional[int]]) -> np.ndarray:
    low, high = band
    return (ranks >= low) & (ranks <= (high if high is not None else np.iinfo(np.int64).max))


def _stats(values: np.ndarray) -> str:
    if values.size == 0:
        return "0"
    return f"{values.size}: {values.mean():.3f} [{values.min():.3f}, {values.max():.3f}]"


def positive_arrays(pool: Pool) -> tuple[np.ndarray, np.ndarray]:
    """Scores and search ranks of every judged positive (rank 0 = deeper than the search went)."""
    pairs = [(score, rank or 0) for docs in pool.positives.values() for score, rank in docs.values()]
    if not pairs:
        return np.empty(0), np.empty(0, dtype=np.int64)
    scores, ranks = zip(*pairs)
    return np.asarray(scores, dtype=np.float64), np.asarray(ranks, dtype=np.int64)


def score_groups(pool: Pool, band: Optional[tuple[int, Optional[int]]] = None) -> dict[str, np.ndarray]:
    """Scores of positives, kept and dropped candidates, and unused survivors, in ``band`` (None: all ranks)."""
    ranks = pool.ranks()
    inside = np.ones(pool.status.shape, dtype=bool) if band is None else _in_band(ranks, band)
    pos_scores, pos_ranks = positive_arrays(pool)
    pos_inside = np.ones(pos_ranks.shape, dtype=bool) if band is None else _in_band(pos_ranks, band)
    return {"positives": pos_scores[pos_inside],
            "kept": pool.scores[inside & (pool.status == KEPT)].astype(np.float64),
            "dropped": pool.scores[inside & np.isin(pool.status, _DROPPED)].astype(np.float64),
            "unused": pool.scores[inside & (pool.status == UNUSED)].astype(np.float64)}


def relevant_kept(pool: Pool, qrels_by_source: Mapping[str, Mapping[str, Mapping[str, float]]]
                  ) -> dict[str, tuple[int, int]]:
    """For each qrels source: kept (query, negative) pairs it judges relevant (> 0), and mined queries it judges.

    The second number says whether the first can be other than 0: splits with disjoint queries share none.
    """
    kept = pool.kept()
    return {source: (sum(1 for qid, docs in kept.items() for doc, _, _ in docs if qrels.get(qid, {}).get(doc, 0) > 0),
                     sum(1 for qid in kept if qid in qrels))
            for source, qrels in qrels_by_source.items()}


def _cell(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("|", "\\|")


def sample_rows(pool: Pool, dataset: "MultiLevelDataset", size: int, seed: int = 0) -> list[dict[str, Any]]:
    """Up to ``size`` candidates to eyeball, half kept and half dropped (seeded), with their texts."""
    rng = np.random.default_rng(seed)
    kept = np.argwhere(pool.status == KEPT)
    dropped = np.argwhere(np.isin(pool.status, _DROPPED))
    n_kept = min(len(kept), max(size - min(len(dropped), size // 2), 0))
    n_dropped = min(len(dropped), size - n_kept)
    picks = [cells[rng.choice(len(cells), size=n, replace=False)] for cells, n in ((kept, n_kept), (dropped, n_dropped))
             if n > 0]
    chosen = sorted(map(tuple, np.concatenate(picks))) if picks else []
    rows = []
    for row, col in chosen:
        qid = pool.query_ids[row]
        doc_row = int(pool.indices[row, col])
        title = dataset.corpus.title_at(doc_row)
        text = dataset.corpus.text_at(doc_row)
        reference = pool.settings.reference([s for s, _ in pool.positives.get(qid, {}).values()])
        rows.append({"query_id": qid, "query": dataset.queries.text_at(dataset.queries.index_of(qid)),
                     "doc_id": pool.doc_ids[doc_row], "document": f"{title}: {text}" if title else text,
                     "rank": int(col) + 1, "score": float(pool.scores[row, col]), "reference": reference,
                     "status": STATUS_NAMES[int(pool.status[row, col])],
                     "label": pool.judged.get(qid, {}).get(pool.doc_ids[doc_row])})
    return rows


def plot_scores(path: Path, pool: Pool) -> None:
    """Histograms (density) of positive, kept and dropped scores: all ranks, then one panel per rank band.

    Drawn on a bare matplotlib Figure (Agg canvas), so no global backend is switched and no window opens.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [("all ranks", score_groups(pool))]
    panels += [(f"ranks {band_label(b)}", score_groups(pool, b)) for b in BANDS
               if b[0] <= pool.status.shape[1]]
    figure = Figure(figsize=(4.2 * len(panels), 3.4))
    FigureCanvasAgg(figure)
    colours = {"positives": "tab:green", "kept": "tab:blue", "dropped": "tab:red"}
    for i, (title, groups) in enumerate(panels):
        axis = figure.add_subplot(1, len(panels), i + 1)
        present = [np.asarray(groups[name]) for name in colours if len(groups[name])]
        if present:
            edges = np.histogram_bin_edges(np.concatenate(present), bins=40)
            for name, colour in colours.items():
                if len(groups[name]):
                    axis.hist(groups[name], bins=edges, density=True, alpha=0.45, color=colour,
                              label=f"{name} ({len(groups[name])})")
            axis.legend(fontsize=7)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("score", fontsize=8)
        if i == 0:
            axis.set_ylabel("density", fontsize=8)
    figure.tight_layout()
    with atomic_write(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=90)


def render_report(pool: Pool, info: Mapping[str, Any], relevant: Mapping[str, tuple[int, int]],
                  rows: Sequence[Mapping[str, Any]], plot_name: Optional[str]) -> str:
    """The Markdown text of the audit."""
    counts = pool.counts()
    lines = ["# Negative-pool audit", "", f"Fingerprint: `{info.get('fingerprint', '')}` (record it in the model "
             "card of any model trained on this pool).", "", "## Settings", "", "| setting | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in info.get("settings", {}).items()]
    lines += [f"| fingerprint {k} | {v} |" for k, v in info.get("fingerprint_parts", {}).items()]
    lines += ["", "## Counts", "", "A dropped candidate is counted under the first rule that applies, in the order "
              "listed; `unused` candidates passed every rule but were not among the k taken.", "",
              "| count | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in counts.items()]
    lines += ["", "## Rank bands", "", "Status of the candidates per band of the search's ranks:", "",
              "| ranks | kept | unused | " + " | ".join(DROP_RULES) + " |",
              "| --- " * (3 + len(DROP_RULES)) + "|"]
    ranks = pool.ranks()
    bands = [b for b in BANDS if b[0] <= pool.status.shape[1]]
    for band in bands:
        inside = _in_band(ranks, band) & (pool.status != PADDING)
        cells = [int((inside & (pool.status == code)).sum()) for code in STATUS_NAMES]
        lines.append(f"| {band_label(band)} | " + " | ".join(map(str, cells)) + " |")
    lines += ["", "Scores per band, as `count: mean [min, max]` (positives by their own rank in the search):", "",
              "| ranks | positives | kept | dropped | unused |", "| --- | --- | --- | --- | --- |"]
    for band in bands:
        groups = score_groups(pool, band)
        lines.append(f"| {band_label(band)} | " + " | ".join(_stats(groups[g]) for g in
                                                           ("positives", "kept", "dropped", "unused")) + " |")
    pos_scores, pos_ranks = positive_arrays(pool)
    lines.append(f"| not retrieved | {_stats(pos_scores[pos_ranks == 0])} | | | |")
    lines += ["", "## Kept negatives judged relevant", "",
              "Kept (query, negative) pairs that a qrels file judges > 0: likely false negatives.", "",
              "| qrels | kept pairs judged relevant | share of kept | mined queries judged there |",
              "| --- | --- | --- | --- |"]
    for source, (n, queries) in relevant.items():
        lines.append(f"| {source} | {n} | {n / max(1, counts['kept']):.2%} | {queries} of {counts['queries']} |")
    lines += ["", "## Sample", "", "`label`: the document's judgment for the query in the mined dataset (blank: "
              "not judged).", "", "| query | rank | score | reference positive | status | label | document |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        reference = "" if row["reference"] is None else f"{row['reference']:.4f}"
        lines.append(f"| {row['query_id']}: {_cell(row['query'], 80)} | {row['rank']} | {row['score']:.4f} | "
                     f"{reference} | {row['status']} | {'' if row['label'] is None else row['label']} | {row['doc_id']}: {_cell(row['document'], 160)} |")
    if plot_name:
        lines += ["", "## Score histograms", "", f"![scores of positives, kept and dropped negatives]({plot_name})"]
    return "\n".join(lines) + "\n"


def write_audit(output_dir: Path, pool: Pool, dataset: "MultiLevelDataset", info: Mapping[str, Any], *,
                audit_qrels: Optional[Mapping[str, Mapping[str, Mapping[str, float]]]] = None,
                sample: int = 20, seed: int = 0, plot: bool = True) -> dict[str, Path]:
    """Write ``audit.md`` (and ``audit.png``) into ``output_dir``; return their paths.

    ``audit_qrels`` maps a label (the file name) to judgments; the dataset's own judgments are always
    checked too (they can only match when judged documents were not excluded).
    """
    output_dir = Path(output_dir)
    paths = {"report": output_dir / REPORT}
    if plot:
        paths["plot"] = output_dir / PLOT
        plot_scores(paths["plot"], pool)
    sources = {"this dataset's judgments": pool.judged, **dict(audit_qrels or {})}
    text = render_report(pool, info, relevant_kept(pool, sources), sample_rows(pool, dataset, sample, seed),
                         PLOT if plot else None)
    with atomic_write(paths["report"]) as handle:
        handle.write(text)
    return paths
