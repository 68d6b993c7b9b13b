"""MaterializedQRelConfig: filters, score transforms, merged files, validation."""
from __future__ import annotations

import pytest

from densekit.data.qrels import MaterializedQRelConfig, materialize, merge_qrels
from densekit.errors import ConfigError, InputError
from tests.helpers import write_beir


@pytest.fixture()
def beir(tmp_path):
    return write_beir(tmp_path / "beir", graded=True)


def config(beir, **kw):
    return MaterializedQRelConfig(qrel_path=beir / "qrels" / "test.tsv", corpus_path=beir / "corpus.jsonl",
                                  query_path=beir / "queries.jsonl", **kw)


def test_min_and_max_score_keep_half_open_range(beir):
    positives = materialize(config(beir, min_score=1)).qrels
    negatives = materialize(config(beir, max_score=1)).qrels
    assert positives["q-cats"] == {"cats-0": 2, "cats-1": 1}
    assert negatives["q-cats"] == {"cats-2": 0}
    assert materialize(config(beir, min_score=1, max_score=2)).qrels["q-cats"] == {"cats-1": 1}


def test_score_transform_constant_and_callable(beir):
    assert set(materialize(config(beir, score_transform=1)).qrels["q-dogs"].values()) == {1.0}
    doubled = materialize(config(beir, score_transform=lambda s: 2 * s)).qrels["q-dogs"]
    assert doubled == {"dogs-0": 4.0, "dogs-1": 2.0, "dogs-2": 0.0}


def test_filter_fn_sees_query_doc_and_score(beir):
    kept = materialize(config(beir, filter_fn=lambda q, d, s: q == "q-sun" and d.endswith("-1"))).qrels
    assert kept == {"q-sun": {"sun-1": 1.0}}


def test_list_of_qrel_files_is_merged(tmp_path, beir):
    extra = tmp_path / "extra.tsv"
    extra.write_text("q-cats\t0\tdogs-0\t1\n", encoding="utf-8")  # TREC format
    merged = materialize(MaterializedQRelConfig(
        qrel_path=[beir / "qrels" / "test.tsv", extra], corpus_path=beir / "corpus.jsonl",
        query_path=beir / "queries.jsonl")).qrels
    assert merged["q-cats"]["dogs-0"] == 1
    assert merged["q-cats"]["cats-0"] == 2


def test_merge_keeps_highest_score_per_pair():
    assert merge_qrels([{"q": {"a": 0.0, "b": 1.0}}, {"q": {"a": 1.0}}]) == {"q": {"a": 1.0, "b": 1.0}}


def test_bad_configs_fail_fast(beir):
    with pytest.raises(ConfigError, match="min_score"):
        config(beir, min_score=2, max_score=1)
    with pytest.raises(ConfigError, match="corpus_path"):
        MaterializedQRelConfig(qrel_path="x", query_path="y")
    with pytest.raises(ConfigError, match="score_transform"):
        config(beir, score_transform="one")


def test_missing_qrel_file_names_the_path(beir):
    with pytest.raises(InputError, match="nope.tsv"):
        materialize(MaterializedQRelConfig(qrel_path=beir / "nope.tsv", corpus_path=beir / "corpus.jsonl",
                                           query_path=beir / "queries.jsonl"))
