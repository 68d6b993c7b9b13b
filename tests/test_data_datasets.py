"""MultiLevelDataset: groups, selection strategies, filling, reproducibility, id checks."""
from __future__ import annotations

import pytest

from densekit.data.data_args import DataArguments
from densekit.data.datasets import MultiLevelDataset
from densekit.data.qrels import MaterializedQRelConfig
from densekit.errors import InputError
from tests.helpers import write_beir


@pytest.fixture()
def beir(tmp_path):
    return write_beir(tmp_path / "beir", graded=True)


def conf(beir, **kw):
    return MaterializedQRelConfig(qrel_path=beir / "qrels" / "test.tsv", corpus_path=beir / "corpus.jsonl",
                                  query_path=beir / "queries.jsonl", **kw)


def test_most_relevant_keeps_top_labels_in_order(beir):
    ds = MultiLevelDataset(DataArguments(group_size=2, passage_selection_strategy="most_relevant"), conf(beir))
    item = ds[ds.query_ids.index("q-rain")]
    assert item["label"] == [2.0, 1.0]
    assert item["passage"][0].startswith("rain 0 rain is liquid water")
    assert item["query"] == "what are rain?"


def test_short_groups_are_filled_by_repeating_documents(beir):
    ds = MultiLevelDataset(DataArguments(group_size=7), conf(beir))
    item = ds[0]
    assert item["label"] == [2.0, 1.0, 0.0, 2.0, 1.0, 0.0, 2.0]
    assert item["passage"][0] == item["passage"][3] == item["passage"][6]


def test_random_selection_is_reproducible_per_epoch_and_changes_across_epochs(tmp_path):
    folder = write_beir(tmp_path / "b", graded=True)
    args = DataArguments(group_size=2, passage_selection_strategy="random", sampling_seed=7)
    one, two = MultiLevelDataset(args, conf(folder)), MultiLevelDataset(args, conf(folder))
    groups = [tuple(one[i]["passage"]) for i in range(len(one))]
    assert groups == [tuple(two[i]["passage"]) for i in range(len(two))]
    seen = set()
    for epoch in range(12):
        one.set_epoch(epoch)
        seen.add(tuple(one[0]["passage"]))
    assert len(seen) > 1  # 3 documents, groups of 2: new epochs draw other groups


def test_overrides_apply_to_this_dataset_only(beir):
    args = DataArguments(group_size=2)
    ds = MultiLevelDataset(args, conf(beir), data_args_overrides={"group_size": 3})
    assert ds.data_args.group_size == 3 and args.group_size == 2
    assert len(ds[0]["passage"]) == 3


def test_format_functions_receive_title_and_dataset_name(beir):
    seen = []

    def fmt_passage(text, title=None, dataset=None):
        seen.append((title, dataset))
        return f"<{title}|{text}>"

    ds = MultiLevelDataset(DataArguments(dataset_name="toy", group_size=1), conf(beir),
                           format_query=lambda text, dataset=None: f"{dataset}: {text}", format_passage=fmt_passage)
    item = ds[0]
    assert item["query"].startswith("toy: ")
    assert seen[0] == ("cats 0", "toy")


def test_configs_are_filtered_separately_then_merged(beir):
    ds = MultiLevelDataset(DataArguments(group_size=3), [conf(beir, min_score=2, score_transform=1),
                                                         conf(beir, max_score=1, score_transform=0)])
    assert ds.qrels["q-cats"] == {"cats-0": 1.0, "cats-2": 0.0}


def test_unknown_document_in_qrels_is_an_error_naming_the_file(beir):
    with open(beir / "qrels" / "test.tsv", "a", encoding="utf-8") as handle:
        handle.write("q-cats\tnot-a-doc\t1\n")
    with pytest.raises(InputError) as info:
        MultiLevelDataset(DataArguments(), conf(beir))
    assert "test.tsv" in str(info.value) and "not-a-doc" in str(info.value)


def test_unknown_query_in_qrels_is_an_error(beir):
    with open(beir / "qrels" / "test.tsv", "a", encoding="utf-8") as handle:
        handle.write("q-missing\tcats-0\t1\n")
    with pytest.raises(InputError, match="q-missing"):
        MultiLevelDataset(DataArguments(), conf(beir))


def test_missing_corpus_file_is_reported_before_reading(beir):
    with pytest.raises(InputError, match="corpus"):
        MultiLevelDataset(DataArguments(), MaterializedQRelConfig(
            qrel_path=beir / "qrels" / "test.tsv", corpus_path=beir / "missing.jsonl", query_path=beir / "queries.jsonl"))
