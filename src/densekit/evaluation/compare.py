"""Is run B really better than run A? Paired significance tests over per-query scores (``densekit compare``).

A difference of means on a few hundred queries is noise until a test says otherwise, and different tests
fail in different ways, so every comparison reports three views of the per-query differences
``d_i = run_i - baseline_i`` (one value per judged query, same measure, same query set):

* **paired t-test** (two-sided): ``t = mean(d) / (sd(d) / sqrt(n))`` with ``sd`` of ``n - 1`` degrees of
  freedom, p from Student's t with ``n - 1`` degrees of freedom; the numbers of ``scipy.stats.ttest_rel``
  and of ranx's ``student`` test. All ``d_i`` equal: p = 1 when they are 0, else p = 0.
* **randomization test** (Fisher's, paired, two-sided): under the null hypothesis the two runs'
  scores of a query are exchangeable, i.e. every ``d_i`` could as well have had the other sign. The p-value
  is the share of sign assignments whose ``|mean(s * d)|`` reaches the observed ``|mean(d)|``: all
  ``2**n`` of them when that is at most ``n_permutations`` (exact), else ``n_permutations`` random ones
  with ``p = (hits + 1) / (n_permutations + 1)`` (the observed assignment counts as one, so p is never 0).
  ranx's ``fisher`` test swaps the pair of each query with probability 1/2, the same distribution; it
  reports ``hits / n_permutations``.
* **bootstrap confidence interval** of ``mean(d)`` (percentile method): queries are resampled with
  replacement ``n_bootstrap`` times and the ``alpha/2`` and ``1 - alpha/2`` quantiles of the resampled
  means are the interval. The t-interval ``mean(d) -+ t_(1-alpha/2, n-1) * sd(d)/sqrt(n)`` is reported
  beside it; on large samples they agree.

Which queries: every query with at least one judgment in qrels. A judged query absent from a run scores
0 on every measure for that run (trec_eval ``-c``): a run must not look better by leaving out its hard
queries, and both sides of a paired test must have the same queries. Run queries without judgments are
ignored. Both are counted per run so that a mismatch (wrong split, wrong ids) is visible.

Which pairs: the first run is the baseline and every other run is compared with it (the question usually
asked, and fewer tests keep more power after correction); ``all_pairs=True`` compares every pair instead,
as ranx does. Multiple comparisons: when more than one test of a kind is made (several runs or several
measures) the p-values of each kind (t-test, randomization) are adjusted together with Holm-Bonferroni,
and "significant" means adjusted p <= alpha.

Randomness is seeded (``seed``): every test draws from its own generators made from the seed, so a
result does not depend on the order or number of the other tests.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from densekit.errors import ConfigError, InputError
from densekit.evaluation.metrics import Measure, evaluate_run_dict, parse_measures

# Entries of a (draws x queries) random matrix made at once: bounds memory for large query sets.
_BLOCK_ENTRIES = 1 << 21


# ---------------------------------------------------------------------------- Student's t distribution
def _incomplete_beta(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b) by its continued fraction (modified Lentz).

    Only Student's t tail needs it; writing it here keeps scipy out of the runtime dependencies.
    """
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges fast below this point; use the symmetry
        return 1.0 - _incomplete_beta(b, a, 1.0 - x)
    log_front = (a * math.log(x) + b * math.log1p(-x) + math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 - math.log(a))
    tiny = 1e-300
    f, c, d = 1.0, 1.0, 0.0
    for i in range(20_000):
        m = i // 2
        if i == 0:
            numerator = 1.0
        elif i % 2 == 0:
            numerator = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            numerator = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + numerator * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + numerator / c
        c = c if abs(c) > tiny else tiny
        f *= c * d
        if abs(1.0 - c * d) < 1e-15:
            break
    return math.exp(log_front) * (f - 1.0)


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0
    return min(1.0, _incomplete_beta(df / 2.0, 0.5, df / (df + t * t)))


def t_critical(alpha: float, df: float) -> float:
    """The t with ``t_two_sided_p(t, df) == alpha`` (the 1 - alpha/2 quantile), by bisection."""
    low, high = 0.0, 1.0
    while t_two_sided_p(high, df) > alpha:
        low, high = high, high * 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        if t_two_sided_p(middle, df) > alpha:
            low = middle
        else:
            high = middle
        if high - low < 1e-13 * high:
            break
    return (low + high) / 2.0


# ------------------------------------------------------------------------------------------- the tests
def _differences(baseline: Sequence[float], run: Sequence[float]) -> np.ndarray:
    a, b = np.asarray(baseline, dtype=np.float64), np.asarray(run, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise InputError(f"paired tests need two equally long score lists of 2 or more queries, got {a.shape} and "
                         f"{b.shape}.", fix="score both runs on the same judged queries (at least two).")
    return b - a


def paired_t_test(baseline: Sequence[float], run: Sequence[float]) -> tuple[float, float]:
    """``(t, two-sided p)`` of the paired t-test of ``run - baseline`` (see the module docstring)."""
    d = _differences(baseline, run)
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0.0 or sd <= 1e-14 * abs(mean):
        return (0.0, 1.0) if mean == 0.0 else (math.copysign(math.inf, mean), 0.0)
    t = mean / (sd / math.sqrt(d.size))
    return t, t_two_sided_p(t, d.size - 1)


def t_interval(baseline: Sequence[float], run: Sequence[float], alpha: float = 0.05) -> tuple[float, float]:
    """The ``1 - alpha`` t confidence interval of ``mean(run - baseline)``."""
    d = _differences(baseline, run)
    half = t_critical(alpha, d.size - 1) * float(d.std(ddof=1)) / math.sqrt(d.size)
    return float(d.mean()) - half, float(d.mean()) + half


def randomization_test(baseline: Sequence[float], run: Sequence[float], n_permutations: int = 10_000,
                       seed: int = 42) -> float:
    """Two-sided p-value of the paired randomization (sign-flip) test (see the module docstring)."""
    d = _differences(baseline, run)
    n = d.size
    observed = abs(float(d.sum()))
    slack = 1e-9 * (float(np.abs(d).sum()) + 1e-300)  # equal sums computed in another order still count
    total = float(d.sum())
    if n <= 16 and 2 ** n <= n_permutations:  # every assignment: an exact p-value
        codes = np.arange(2 ** n, dtype=np.int64)
        flips = ((codes[:, None] >> np.arange(n)) & 1).astype(np.float64)
        sums = np.abs(total - 2.0 * flips @ d)  # flipping d_i removes it once and subtracts it once
        return float(np.count_nonzero(sums >= observed - slack)) / 2 ** n
    rng = np.random.default_rng([seed, 1])
    hits, done, rows = 0, 0, max(1, _BLOCK_ENTRIES // n)
    while done < n_permutations:
        size = min(rows, n_permutations - done)
        random_bytes = rng.integers(0, 256, size=(size, (n + 7) // 8), dtype=np.uint8)  # 8 fair coins per draw
        flips = np.unpackbits(random_bytes, axis=1, count=n).astype(np.float64)
        hits += int(np.count_nonzero(np.abs(total - 2.0 * flips @ d) >= observed - slack))
        done += size
    return (hits + 1) / (n_permutations + 1)


def bootstrap_interval(baseline: Sequence[float], run: Sequence[float], n_bootstrap: int = 10_000,
                       alpha: float = 0.05, seed: int = 42) -> tuple[float, float]:
    """Percentile bootstrap ``1 - alpha`` interval of ``mean(run - baseline)`` (queries resampled)."""
    d = _differences(baseline, run)
    rng = np.random.default_rng([seed, 2])
    means = np.empty(n_bootstrap, dtype=np.float64)
    rows = max(1, _BLOCK_ENTRIES // d.size)
    for start in range(0, n_bootstrap, rows):
        size = min(rows, n_bootstrap - start)
        means[start:start + size] = d[rng.integers(0, d.size, size=(size, d.size))].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values: the i-th smallest of m is multiplied by ``m - i + 1`` (i from 1),
    made non-decreasing in that order and capped at 1; rejecting where adjusted p <= alpha is Holm's
    step-down procedure at family-wise error rate alpha."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, p[order] * (len(p) - np.arange(len(p))))
    adjusted = np.empty_like(p)
    adjusted[order] = np.maximum.accumulate(scaled) if len(p) else scaled
    return adjusted.tolist()


# ------------------------------------------------------------------------------------ the comparison
@dataclass
class PairedComparison:
    """One run against one other run (``baseline``) on one measure; differences are run - baseline."""

    baseline: str
    run: str
    measure: str
    num_queries: int
    baseline_mean: float
    run_mean: float
    delta: float
    t_statistic: float
    t_p_value: float
    randomization_p_value: float
    bootstrap_interval: tuple[float, float]
    t_interval: tuple[float, float]
    wins: int
    ties: int
    losses: int
    t_p_adjusted: float = math.nan
    randomization_p_adjusted: float = math.nan
    t_significant: bool = False
    randomization_significant: bool = False
    top_changes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def relative_delta(self) -> Optional[float]:
        """``delta / baseline_mean`` (None when the baseline mean is 0)."""
        return self.delta / self.baseline_mean if self.baseline_mean else None

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items()}
        out["bootstrap_interval"] = list(self.bootstrap_interval)
        out["t_interval"] = list(self.t_interval)
        out["relative_delta"] = self.relative_delta
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


@dataclass
class Comparison:
    """Everything ``densekit compare`` reports: means, per-query scores, tests and their settings."""

    runs: list[str]
    measures: list[str]
    query_ids: list[str]
    per_query: dict[str, dict[str, np.ndarray]]  # run -> measure -> scores aligned with query_ids
    tests: list[PairedComparison]
    coverage: dict[str, dict[str, int]]           # run -> judged_missing / unjudged / queries
    settings: dict[str, Any]

    @property
    def means(self) -> dict[str, dict[str, float]]:
        return {r: {m: float(v.mean()) for m, v in by_measure.items()} for r, by_measure in self.per_query.items()}

    def to_json(self) -> dict[str, Any]:
        """A plain dict for ``json.dump``: settings, means, coverage, tests, and per-query scores."""
        return {
            "settings": dict(self.settings), "runs": list(self.runs), "measures": list(self.measures),
            "num_queries": len(self.query_ids), "means": self.means, "coverage": self.coverage,
            "tests": [t.to_json() for t in self.tests],
            "per_query": {r: {m: dict(zip(self.query_ids, v.tolist())) for m, v in by_measure.items()}
                          for r, by_measure in self.per_query.items()},
        }


Run = Mapping[str, Mapping[str, float]]


def per_query_scores(qrels: Mapping[str, Mapping[str, int]], runs: Mapping[str, Run],
                     measures: Sequence[Measure]) -> tuple[list[str], dict[str, dict[str, np.ndarray]],
                                                          dict[str, dict[str, int]]]:
    """Scores of every run on every judged query (absent ones 0; see the module docstring).

    Returns ``(query_ids, {run: {measure: scores}}, {run: coverage counts})``.
    """
    query_ids = [q for q, judged in qrels.items() if judged]
    if len(query_ids) < 2:
        raise InputError(f"the qrels judge {len(query_ids)} query; a paired comparison needs at least 2.",
                         fix="give the qrels of the whole query set.")
    scores: dict[str, dict[str, np.ndarray]] = {}
    coverage: dict[str, dict[str, int]] = {}
    for name, run in runs.items():
        complete = {q: run.get(q, {}) for q in query_ids}
        result = evaluate_run_dict(qrels, complete, measures)
        scores[name] = {m.name: np.array([result.per_query[m.name][q] for q in query_ids]) for m in measures}
        judged_missing = sum(1 for q in query_ids if q not in run)
        if judged_missing == len(query_ids):
            raise InputError(f"run {name!r} has none of the {len(query_ids)} judged queries.",
                             fix="check that the run and the qrels use the same query ids (and the right split).")
        coverage[name] = {"queries": len(run), "judged_missing": judged_missing,
                          "unjudged": sum(1 for q in run if not qrels.get(q))}
    return query_ids, scores, coverage


def _check_settings(n_permutations: int, n_bootstrap: int, alpha: float, seed: int, top_queries: int) -> None:
    for name, value in (("n_permutations", n_permutations), ("n_bootstrap", n_bootstrap)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"--{name} must be a positive integer, got {value!r}.")
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"--alpha must be between 0 and 1 (e.g. 0.05), got {alpha!r}.")
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"--seed must be an integer >= 0, got {seed!r}.")
    if top_queries < 0:
        raise ConfigError(f"--top_queries must be 0 or more, got {top_queries!r}.")


def compare_runs(
    qrels: Mapping[str, Mapping[str, int]],
    runs: Mapping[str, Run],
    measures: Union[str, Iterable[Union[str, Measure]], None] = None,
    *,
    query_text: Optional[Callable[[Sequence[str]], Sequence[Optional[str]]]] = None,
    seed: int = 42,
    n_permutations: int = 10_000,
    n_bootstrap: int = 10_000,
    alpha: float = 0.05,
    all_pairs: bool = False,
    top_queries: int = 10,
) -> Comparison:
    """Compare ``runs`` (name -> ``{qid: {docid: score}}``, the first is the baseline) on ``measures``.

    ``query_text`` maps query ids to their text (None where unknown) for the list of the ``top_queries``
    queries that changed most per test. See the module docstring for the statistics.
    """
    _check_settings(n_permutations, n_bootstrap, alpha, seed, top_queries)
    if len(runs) < 2:
        raise ConfigError(f"compare needs at least two runs, got {len(runs)}.")
    measure_list = parse_measures(measures)
    names = list(runs)
    query_ids, scores, coverage = per_query_scores(qrels, runs, measure_list)
    pairs = list(itertools.combinations(names, 2)) if all_pairs else [(names[0], other) for other in names[1:]]
    tests = [_paired(base, other, m.name, scores, query_ids, seed, n_permutations, n_bootstrap, alpha)
             for base, other in pairs for m in measure_list]
    for kind in ("t", "randomization"):
        adjusted = holm_adjust([getattr(t, f"{kind}_p_value") for t in tests])
        for test, p in zip(tests, adjusted):
            setattr(test, f"{kind}_p_adjusted", p)
            setattr(test, f"{kind}_significant", p <= alpha)
    if top_queries:
        for test in tests:
            test.top_changes = _top_changes(test, scores, query_ids, top_queries, query_text)
    settings = {"baseline": names[0], "pairs": "all pairs" if all_pairs else "each run vs the baseline",
                "seed": seed, "n_permutations": n_permutations, "n_bootstrap": n_bootstrap, "alpha": alpha,
                "correction": "holm" if len(tests) > 1 else "none", "tests_per_kind": len(tests),
                "missing_queries": "judged queries absent from a run score 0"}
    return Comparison(runs=names, measures=[m.name for m in measure_list], query_ids=query_ids, per_query=scores,
                      tests=tests, coverage=coverage, settings=settings)


def _paired(baseline: str, run: str, measure: str, scores: dict[str, dict[str, np.ndarray]],
            query_ids: Sequence[str], seed: int, n_permutations: int, n_bootstrap: int,
            alpha: float) -> PairedComparison:
    a, b = scores[baseline][measure], scores[run][measure]
    d = b - a
    t, p_t = paired_t_test(a, b)
    tie = 1e-12  # equal scores computed from different rankings may differ in the last bits
    return PairedComparison(
        baseline=baseline, run=run, measure=measure, num_queries=len(query_ids),
        baseline_mean=float(a.mean()), run_mean=float(b.mean()), delta=float(d.mean()), t_statistic=t,
        t_p_value=p_t, randomization_p_value=randomization_test(a, b, n_permutations, seed),
        bootstrap_interval=bootstrap_interval(a, b, n_bootstrap, alpha, seed), t_interval=t_interval(a, b, alpha),
        wins=int(np.count_nonzero(d > tie)), ties=int(np.count_nonzero(np.abs(d) <= tie)),
        losses=int(np.count_nonzero(d < -tie)))


def _top_changes(test: PairedComparison, scores: dict[str, dict[str, np.ndarray]], query_ids: Sequence[str],
                 top: int, query_text: Optional[Callable[[Sequence[str]], Sequence[Optional[str]]]]) -> list[dict]:
    """The ``top`` queries with the largest |difference| (ties by query id), largest first; unchanged ones
    are left out."""
    a, b = scores[test.baseline][test.measure], scores[test.run][test.measure]
    d = b - a
    order = sorted((i for i in range(len(d)) if abs(d[i]) > 1e-12), key=lambda i: (-abs(d[i]), query_ids[i]))[:top]
    chosen = [query_ids[i] for i in order]
    texts = list(query_text(chosen)) if query_text and chosen else [None] * len(chosen)
    return [{"query_id": q, "text": text, "baseline": float(a[i]), "run": float(b[i]), "delta": float(d[i])}
            for q, i, text in zip(chosen, order, texts)]


__all__ = ["Comparison", "PairedComparison", "bootstrap_interval", "compare_runs", "holm_adjust",
           "paired_t_test", "per_query_scores", "randomization_test", "t_critical", "t_interval",
           "t_two_sided_p"]
