"""Hard-negative selection rules on hand-made scores: each rule keeps and drops exactly what it should."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from densekit.errors import ConfigError
from densekit.evaluation.evaluation_args import EvaluationArguments
from densekit.evaluation.mining import STATUS_NAMES, MiningSettings, select_negatives

IDS = [f"d{i}" for i in range(1, 9)]
SCORES = [0.99, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4]
RANKS = list(range(1, 9))


def statuses(settings: MiningSettings, positives=(), judged=(), key="q1", ids=IDS, scores=SCORES, ranks=RANKS):
    """{doc id: status name} of one query's candidates."""
    codes = select_negatives(ids, scores, ranks, list(positives), set(judged), settings, key=key)
    return {doc: STATUS_NAMES[int(c)] for doc, c in zip(ids, codes)}


def kept(result: dict[str, str]) -> list[str]:
    return [doc for doc, status in result.items() if status == "kept"]


def test_default_keeps_the_top_k_and_leaves_the_rest_unused():
    result = statuses(MiningSettings(num_negatives=3))
    assert kept(result) == ["d1", "d2", "d3"]
    assert {result[d] for d in IDS[3:]} == {"unused"}


def test_rank_window_skips_the_top_r_and_stops_at_rank_R():
    result = statuses(MiningSettings(num_negatives=10, skip_top=2, max_rank=5))
    assert [result[d] for d in IDS] == ["skip_top"] * 2 + ["kept"] * 3 + ["max_rank"] * 3
    result = statuses(MiningSettings(num_negatives=2, skip_top=2))
    assert kept(result) == ["d3", "d4"] and result["d5"] == "unused"


def test_judged_documents_are_left_out_only_when_asked():
    judged = {"d2", "d4", "unretrieved"}
    result = statuses(MiningSettings(num_negatives=3, exclude_judged=True), judged=judged)
    assert kept(result) == ["d1", "d3", "d5"] and result["d2"] == result["d4"] == "judged"
    assert kept(statuses(MiningSettings(num_negatives=3), judged=judged)) == ["d1", "d2", "d3"]


def test_max_score_drops_candidates_scoring_above_it():
    result = statuses(MiningSettings(num_negatives=8, max_score=0.82))
    assert [d for d, s in result.items() if s == "max_score"] == ["d1", "d2", "d3"]
    assert kept(result) == IDS[3:]


def test_relative_margin_with_one_positive():
    # 0.95 * 0.9 = 0.855: 0.99 and 0.9 are above it, 0.85 is not
    result = statuses(MiningSettings(num_negatives=8, relative_margin=0.95), positives=[0.9])
    assert [d for d, s in result.items() if s == "relative_margin"] == ["d1", "d2"]
    assert kept(result) == IDS[2:]


def test_relative_margin_keeps_a_candidate_exactly_at_the_threshold():
    result = statuses(MiningSettings(num_negatives=3, relative_margin=0.95), positives=[1.0],
                      ids=["a", "b", "c"], scores=[0.96, 0.95, 0.5], ranks=[1, 2, 3])
    assert result == {"a": "relative_margin", "b": "kept", "c": "kept"}


@pytest.mark.parametrize("reference, dropped", [
    ("min", ["d1", "d2", "d3", "d4", "d5"]),  # 0.95 * 0.7 = 0.665
    ("mean", ["d1", "d2", "d3", "d4"]),       # 0.95 * 0.8 = 0.76
    ("max", ["d1", "d2"]),                    # 0.95 * 0.9 = 0.855
])
def test_relative_margin_with_several_positives_uses_the_reference(reference, dropped):
    settings = MiningSettings(num_negatives=8, relative_margin=0.95, positive_reference=reference)
    result = statuses(settings, positives=[0.9, 0.7, 0.8])
    assert [d for d, s in result.items() if s == "relative_margin"] == dropped
    assert kept(result) == [d for d in IDS if d not in dropped]


def test_the_default_reference_is_the_weakest_positive():
    assert MiningSettings(num_negatives=1).positive_reference == "min"
    assert MiningSettings(num_negatives=1).reference([0.9, 0.7, 0.8]) == pytest.approx(0.7)


@pytest.mark.parametrize("positives, reference, dropped", [
    ([0.88], "min", ["d1", "d2", "d3"]),                          # 0.88 - 0.05 = 0.83
    ([0.93, 0.73], "min", ["d1", "d2", "d3", "d4", "d5"]),        # 0.73 - 0.05 = 0.68
    ([0.93, 0.73], "mean", ["d1", "d2", "d3", "d4"]),             # 0.83 - 0.05 = 0.78
    ([0.93, 0.73], "max", ["d1", "d2"]),                          # 0.93 - 0.05 = 0.88
])
def test_absolute_margin(positives, reference, dropped):
    settings = MiningSettings(num_negatives=8, absolute_margin=0.05, positive_reference=reference)
    result = statuses(settings, positives=positives)
    assert [d for d, s in result.items() if s == "absolute_margin"] == dropped
    assert kept(result) == [d for d in IDS if d not in dropped]


def test_margins_do_not_apply_to_a_query_without_positive():
    settings = MiningSettings(num_negatives=3, relative_margin=0.5, absolute_margin=0.5)
    assert kept(statuses(settings, positives=[])) == ["d1", "d2", "d3"]


def test_a_candidate_is_counted_under_the_first_rule_that_applies():
    settings = MiningSettings(num_negatives=8, skip_top=1, max_rank=7, exclude_judged=True, max_score=0.88,
                              relative_margin=0.95, absolute_margin=0.0)
    result = statuses(settings, positives=[0.8], judged={"d1", "d2", "d8"})
    # d1: top rank (also judged), d2: judged (also above max_score), d3: max_score would pass -> relative margin
    # 0.95 * 0.8 = 0.76: d3 0.85 and d4 0.8 are above it; absolute 0.8 - 0 = 0.8: nothing left above it
    assert result == {"d1": "skip_top", "d2": "judged", "d3": "relative_margin", "d4": "relative_margin",
                      "d5": "kept", "d6": "kept", "d7": "kept", "d8": "max_rank"}


def test_filters_then_top_k_in_rank_order_whatever_the_input_order():
    order = [5, 0, 7, 2, 1, 6, 3, 4]
    result = statuses(MiningSettings(num_negatives=2, relative_margin=0.95), positives=[0.9],
                      ids=[IDS[i] for i in order], scores=[SCORES[i] for i in order], ranks=[RANKS[i] for i in order])
    assert sorted(kept(result)) == ["d3", "d4"]


def sample(settings: MiningSettings, key: str = "q1", judged=()) -> list[str]:
    return kept(statuses(settings, judged=judged, key=key))


def test_sampling_is_seeded_reproducible_and_inside_the_window():
    settings = MiningSettings(num_negatives=3, skip_top=2, max_rank=7, sample=True, seed=7)
    first = sample(settings)
    assert first == sample(settings) and len(first) == 3
    draws = {tuple(sample(MiningSettings(num_negatives=3, skip_top=2, max_rank=7, sample=True, seed=s)))
             for s in range(10)}
    assert len(draws) > 1  # another seed draws another sample
    assert all(set(d) <= {"d3", "d4", "d5", "d6", "d7"} for d in draws)  # ranks 3..7 only
    assert len({tuple(sample(settings, key=f"q{i}")) for i in range(10)}) > 1  # each query its own draw


def test_sampling_never_keeps_a_judged_document():
    for seed in range(20):
        settings = MiningSettings(num_negatives=3, max_rank=8, sample=True, seed=seed, exclude_judged=True)
        drawn = sample(settings, judged={"d2", "d5", "d6"})
        assert len(drawn) == 3 and not set(drawn) & {"d2", "d5", "d6"}


def test_sampling_keeps_every_survivor_when_there_are_at_most_k():
    settings = MiningSettings(num_negatives=5, skip_top=4, max_rank=8, sample=True)
    assert sample(settings) == ["d5", "d6", "d7", "d8"]


def test_scores_and_ranks_must_match_the_candidates():
    with pytest.raises(ConfigError, match="one score and one rank per candidate"):
        select_negatives(["a", "b"], [0.5], [1, 2], [], set(), MiningSettings(num_negatives=1))


@pytest.mark.parametrize("kwargs, message", [
    (dict(skip_top=5, max_rank=5), "empty window"),
    (dict(skip_top=-1), "--mine_skip_top must be >= 0"),
    (dict(num_negatives=0), "--mine_num_negatives"),
    (dict(relative_margin=0.0), r"--mine_relative_margin must be in \(0, 1\]"),
    (dict(relative_margin=1.5), r"--mine_relative_margin must be in \(0, 1\]"),
    (dict(absolute_margin=-0.1), "--mine_absolute_margin must be a finite number >= 0"),
    (dict(max_score=math.nan), "--mine_max_score must be a finite number"),
    (dict(positive_reference="median"), "--mine_positive_reference must be one of min, mean, max"),
    (dict(sample=True), "--mine_sample true draws k negatives from a rank window deeper than k"),
])
def test_bad_settings_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        MiningSettings(**{"num_negatives": 3, **kwargs})


def args(**kw):
    base = dict(search_topk=10, mine_num_negatives=None, mine_skip_top=0, mine_max_rank=None, mine_sample=False,
                mine_seed=0, mine_relative_margin=None, mine_absolute_margin=None, mine_max_score=None,
                mine_positive_reference="min", no_annot_in_mined_hn=False)
    return SimpleNamespace(**{**base, **kw})


def test_settings_from_arguments_keep_the_old_meaning_of_search_topk():
    old = MiningSettings.from_args(args(no_annot_in_mined_hn=True))
    assert old.num_negatives == 10 and old.max_rank is None
    assert old.depth(max_judged=3) == 13  # as before: deep enough to keep 10 after leaving judged ones out
    skipping = MiningSettings.from_args(args(mine_skip_top=5))
    assert skipping.depth(max_judged=3) == 15
    split = MiningSettings.from_args(args(search_topk=100, mine_num_negatives=7, mine_sample=True))
    assert (split.num_negatives, split.max_rank, split.depth(max_judged=50)) == (7, 100, 100)
    explicit = MiningSettings.from_args(args(mine_max_rank=40, mine_skip_top=3))
    assert (explicit.num_negatives, explicit.max_rank, explicit.depth(9)) == (10, 40, 40)


def test_evaluation_arguments_refuse_bad_mining_settings_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="empty window"):
        EvaluationArguments(output_dir=str(tmp_path / "o"), search_topk=5, mine_num_negatives=2, mine_skip_top=5)
    with pytest.raises(ConfigError, match="--mine_relative_margin"):
        EvaluationArguments(output_dir=str(tmp_path / "o"), mine_relative_margin=95)
    with pytest.raises(ConfigError, match="--mine_max_rank must be >= 1"):
        EvaluationArguments(output_dir=str(tmp_path / "o"), mine_max_rank=0)
    assert not (tmp_path / "o").exists()
