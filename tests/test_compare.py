"""densekit.evaluation.compare: each statistic against an independent reference (scipy, brute force, ranx)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import pytrec_eval
from scipy import stats

from densekit.errors import ConfigError, InputError
from densekit.evaluation.compare import (
    bootstrap_interval,
    compare_runs,
    holm_adjust,
    paired_t_test,
    randomization_test,
    t_critical,
    t_interval,
    t_two_sided_p,
)


def paired_scores(n: int, shift: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-query scores in [0, 1] of a baseline and a run that is ``shift`` better on average, with ties."""
    rng = np.random.default_rng(seed)
    baseline = np.round(rng.beta(2, 3, size=n), 2)
    run = np.clip(np.round(baseline + rng.normal(shift, 0.15, size=n), 2), 0, 1)
    return baseline, run


@pytest.mark.parametrize("n, shift, seed", [(5, 0.05, 0), (30, 0.0, 1), (200, 0.03, 2), (3000, 0.01, 3)])
def test_paired_t_test_equals_scipy_ttest_rel(n, shift, seed):
    baseline, run = paired_scores(n, shift, seed)
    t, p = paired_t_test(baseline, run)
    reference = stats.ttest_rel(run, baseline)
    assert t == pytest.approx(reference.statistic, rel=1e-10)
    assert p == pytest.approx(reference.pvalue, rel=1e-8, abs=1e-14)


@pytest.mark.parametrize("df", [1, 2, 4, 9, 49, 500, 6979, 100_000])
def test_student_t_tail_and_quantile_equal_scipy(df):
    for t in (0.0, 0.05, 0.7, 1.5, 2.0, 3.3, 6.0, 25.0):
        assert t_two_sided_p(t, df) == pytest.approx(2 * stats.t.sf(t, df), rel=1e-8, abs=1e-300)
    for alpha in (0.01, 0.05, 0.1):
        assert t_critical(alpha, df) == pytest.approx(stats.t.ppf(1 - alpha / 2, df), rel=1e-9)


def test_t_interval_equals_scipy_confidence_interval():
    baseline, run = paired_scores(150, 0.02, 4)
    expected = stats.ttest_rel(run, baseline).confidence_interval(0.95)
    assert t_interval(baseline, run, 0.05) == pytest.approx((expected.low, expected.high), rel=1e-9)


def test_degenerate_differences():
    same = np.array([0.1, 0.5, 0.9])
    assert paired_t_test(same, same) == (0.0, 1.0)
    assert randomization_test(same, same) == 1.0
    assert bootstrap_interval(same, same) == (0.0, 0.0)
    t, p = paired_t_test(same, same + 0.1)  # a constant shift: no variance, certainly different
    assert p == 0.0 and t == math.inf


def brute_force_randomization(d: np.ndarray) -> float:
    """All 2^n sign assignments, one at a time."""
    observed = abs(d.mean())
    hits = sum(abs(np.mean(np.array(signs) * d)) >= observed - 1e-12
               for signs in itertools.product((1.0, -1.0), repeat=d.size))
    return hits / 2 ** d.size


def test_randomization_test_is_exact_for_small_samples():
    for seed in range(4):
        baseline, run = paired_scores(10, 0.05, seed)
        assert randomization_test(baseline, run, n_permutations=10_000) == brute_force_randomization(run - baseline)


def reference_randomization(baseline: np.ndarray, run: np.ndarray, n: int, seed: int) -> float:
    """A plain loop: swap each query's pair of scores with probability 1/2, compare the |mean difference|."""
    rng = np.random.default_rng(seed)
    observed = abs(run.mean() - baseline.mean())
    hits = 0
    for _ in range(n):
        swap = rng.random(baseline.size) < 0.5
        a, b = np.where(swap, run, baseline), np.where(swap, baseline, run)
        hits += abs(b.mean() - a.mean()) >= observed - 1e-12
    return hits / n


def within_monte_carlo_error(p1: float, n1: int, p2: float, n2: int) -> bool:
    """Two Monte-Carlo p estimates agree within 4.5 standard errors (plus the +1 of p = (hits+1)/(n+1))."""
    p = (p1 + p2) / 2
    sigma = math.sqrt(max(p * (1 - p), 1e-4) * (1 / n1 + 1 / n2))
    return abs(p1 - p2) <= 4.5 * sigma + 2 / min(n1, n2)


@pytest.mark.parametrize("n, shift, seed", [(40, 0.04, 5), (120, 0.015, 6), (300, 0.0, 7)])
def test_randomization_p_within_monte_carlo_error_of_a_reference(n, shift, seed):
    baseline, run = paired_scores(n, shift, seed)
    ours = randomization_test(baseline, run, n_permutations=10_000, seed=seed)
    reference = reference_randomization(baseline, run, 5_000, seed + 100)
    assert within_monte_carlo_error(ours, 10_000, reference, 5_000), (ours, reference)
    # and close to the t-test here, which these samples satisfy well enough
    assert abs(ours - paired_t_test(baseline, run)[1]) < 0.05


def test_randomization_p_within_monte_carlo_error_of_ranx():
    ranx_fisher = pytest.importorskip("ranx.statistical_tests").fisher_randomization_test
    for n, shift, seed in [(60, 0.03, 8), (150, 0.01, 9)]:
        baseline, run = paired_scores(n, shift, seed)
        theirs, _ = ranx_fisher(baseline, run, 5_000, 0.05, seed)
        ours = randomization_test(baseline, run, n_permutations=10_000, seed=seed)
        assert within_monte_carlo_error(ours, 10_000, float(theirs), 5_000), (ours, theirs)


def test_randomization_and_bootstrap_are_seeded():
    baseline, run = paired_scores(80, 0.02, 10)
    assert randomization_test(baseline, run, 2_000, seed=1) == randomization_test(baseline, run, 2_000, seed=1)
    assert bootstrap_interval(baseline, run, 2_000, seed=1) == bootstrap_interval(baseline, run, 2_000, seed=1)
    assert bootstrap_interval(baseline, run, 2_000, seed=1) != bootstrap_interval(baseline, run, 2_000, seed=2)


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_bootstrap_interval_matches_the_t_interval_on_a_large_sample(seed):
    """For n = 3000 both are mean -+ 1.96 standard errors; the bootstrap's endpoints may differ from the
    t-interval's by Monte-Carlo error (about 3% of the half-width at 10,000 resamples) and by the
    t vs normal quantile and ddof (0.1%), so the bootstrap interval widened by 10% of its half-width must
    contain the t-interval, and the t-interval widened likewise must contain the bootstrap one."""
    baseline, run = paired_scores(3000, 0.01, seed)
    low, high = bootstrap_interval(baseline, run, 10_000, 0.05, seed=seed)
    t_low, t_high = t_interval(baseline, run, 0.05)
    slack = 0.10 * (t_high - t_low) / 2
    assert low - slack <= t_low and t_high <= high + slack
    assert t_low - slack <= low and high <= t_high + slack
    assert low < (run - baseline).mean() < high


def brute_force_holm(p: list[float], alpha: float) -> list[bool]:
    """Holm's step-down procedure as written in textbooks."""
    order = sorted(range(len(p)), key=p.__getitem__)
    reject = [False] * len(p)
    for rank, i in enumerate(order):
        if p[i] > alpha / (len(p) - rank):
            break
        reject[i] = True
    return reject


def test_holm_adjustment():
    assert holm_adjust([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm_adjust([0.2]) == [0.2]
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = (rng.random(rng.integers(1, 8)) ** 3).tolist()
        adjusted = holm_adjust(p)
        assert all(a >= q for a, q in zip(adjusted, p)) and max(adjusted) <= 1.0
        for alpha in (0.01, 0.05, 0.1):
            assert [a <= alpha for a in adjusted] == brute_force_holm(p, alpha)


# ------------------------------------------------------------------------------------------- runs
def make_case(seed: int = 0, n_queries: int = 60):
    """Qrels for n_queries queries; a baseline run, a clearly better run and a run that misses queries."""
    rng = np.random.default_rng(seed)
    docs = [f"d{i}" for i in range(80)]
    qrels = {f"q{i}": {docs[j]: int(rng.integers(1, 3)) for j in rng.choice(80, 4, replace=False)}
             for i in range(n_queries)}
    qrels["q-empty"] = {}  # no judgments: not a compared query

    def run_with(quality: float, skip: int = 0, extra: bool = False):
        run = {}
        for i, (qid, judged) in enumerate(qrels.items()):
            if not judged or i < skip:
                continue
            scores = {d: float(rng.random()) for d in rng.choice(docs, 20, replace=False)}
            for d in judged:
                if rng.random() < quality:
                    scores[d] = 1.0 + float(rng.random())
            run[qid] = scores
        if extra:
            run["unjudged-query"] = {"d1": 1.0}
        return run

    return qrels, {"base": run_with(0.3), "better": run_with(0.8, extra=True), "partial": run_with(0.3, skip=5)}


def test_compare_runs_uses_every_judged_query_with_absent_ones_as_zero():
    qrels, runs = make_case()
    comparison = compare_runs(qrels, runs, ["ndcg_cut.10", "recall.20"], n_permutations=2_000, n_bootstrap=2_000)
    assert comparison.query_ids == [f"q{i}" for i in range(60)]
    assert comparison.coverage["partial"] == {"queries": 55, "judged_missing": 5, "unjudged": 0}
    assert comparison.coverage["better"]["unjudged"] == 1
    assert comparison.per_query["partial"]["nDCG@10"][:5].tolist() == [0.0] * 5
    # the per-query values are pytrec_eval's, with 0 for the queries a run lacks
    judged = {q: d for q, d in qrels.items() if d}
    for name, run in runs.items():
        reference = pytrec_eval.RelevanceEvaluator(judged, {"ndcg_cut.10"}).evaluate(run)
        expected = [reference.get(q, {"ndcg_cut_10": 0.0})["ndcg_cut_10"] for q in comparison.query_ids]
        np.testing.assert_allclose(comparison.per_query[name]["nDCG@10"], expected, atol=1e-12)
    test = next(t for t in comparison.tests if t.run == "partial" and t.measure == "nDCG@10")
    a, b = (np.asarray(comparison.per_query[r]["nDCG@10"]) for r in ("base", "partial"))
    assert test.t_p_value == pytest.approx(stats.ttest_rel(b, a).pvalue, rel=1e-8)
    assert test.delta == pytest.approx(b.mean() - a.mean())
    assert test.wins + test.ties + test.losses == 60


def test_pairs_holm_significance_and_top_changes():
    qrels, runs = make_case(1)
    comparison = compare_runs(qrels, runs, ["nDCG@10", "MRR@10"], n_permutations=2_000, n_bootstrap=1_000,
                              query_text=lambda ids: [f"text of {q}" if q != "q3" else None for q in ids],
                              top_queries=4)
    assert [(t.baseline, t.run) for t in comparison.tests] == [("base", "better")] * 2 + [("base", "partial")] * 2
    assert comparison.settings["correction"] == "holm" and comparison.settings["tests_per_kind"] == 4
    raw = [t.t_p_value for t in comparison.tests]
    assert [t.t_p_adjusted for t in comparison.tests] == pytest.approx(holm_adjust(raw))
    better = comparison.tests[0]
    assert better.delta > 0.2 and better.t_significant and better.randomization_significant
    assert better.bootstrap_interval[0] > 0 and better.wins > better.losses
    changes = better.top_changes
    assert len(changes) == 4 and [abs(c["delta"]) for c in changes] == sorted((abs(c["delta"]) for c in changes),
                                                                               reverse=True)
    assert all(c["text"] == (None if c["query_id"] == "q3" else f"text of {c['query_id']}") for c in changes)
    all_pairs = compare_runs(qrels, runs, ["nDCG@10"], n_permutations=500, n_bootstrap=500, all_pairs=True)
    assert [(t.baseline, t.run) for t in all_pairs.tests] == [("base", "better"), ("base", "partial"),
                                                              ("better", "partial")]
    single = compare_runs(qrels, {"base": runs["base"], "better": runs["better"]}, ["nDCG@10"],
                          n_permutations=500, n_bootstrap=500)
    assert single.settings["correction"] == "none"
    assert single.tests[0].t_p_adjusted == single.tests[0].t_p_value


def test_compare_results_do_not_depend_on_the_other_tests():
    qrels, runs = make_case(2)
    alone = compare_runs(qrels, {"base": runs["base"], "partial": runs["partial"]}, ["nDCG@10"],
                         n_permutations=3_000, n_bootstrap=3_000, seed=5).tests[0]
    among = next(t for t in compare_runs(qrels, runs, ["recall.20", "nDCG@10"], n_permutations=3_000,
                                         n_bootstrap=3_000, seed=5).tests
                 if t.run == "partial" and t.measure == "nDCG@10")
    assert (alone.randomization_p_value, alone.bootstrap_interval) == (among.randomization_p_value,
                                                                       among.bootstrap_interval)


def test_compare_json_is_plain():
    import json

    qrels, runs = make_case(3)
    payload = compare_runs(qrels, runs, ["nDCG@10"], n_permutations=200, n_bootstrap=200).to_json()
    text = json.dumps(payload, allow_nan=False)
    assert json.loads(text)["tests"][0]["measure"] == "nDCG@10"
    assert len(payload["per_query"]["base"]["nDCG@10"]) == 60


def test_bad_settings_and_inputs_are_errors():
    qrels, runs = make_case(4)
    with pytest.raises(ConfigError, match="at least two runs"):
        compare_runs(qrels, {"base": runs["base"]})
    with pytest.raises(ConfigError, match="n_permutations"):
        compare_runs(qrels, runs, n_permutations=0)
    with pytest.raises(ConfigError, match="alpha"):
        compare_runs(qrels, runs, alpha=5)
    with pytest.raises(ConfigError, match="Unknown measure"):
        compare_runs(qrels, runs, ["ndgc@10"])
    with pytest.raises(InputError, match="none of the"):
        compare_runs(qrels, {"base": runs["base"], "other": {"x": {"d1": 1.0}}})
    with pytest.raises(InputError, match="at least 2"):
        compare_runs({"q0": {"d1": 1}}, runs)
