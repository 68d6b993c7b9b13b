"""BinaryDataset: one positive + group_size-1 negatives per query, drawn per (seed, epoch, index)."""
from __future__ import annotations

import json
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from densekit.data.data_args import DataArguments
from densekit.data.datasets import BinaryDataset
from densekit.data.qrels import MaterializedQRelConfig, materialize
from densekit.data.sampling import example_rng
from densekit.errors import ConfigError, InputError


def write_collection(folder: Path, judgments: dict[str, dict[str, int]], extra_docs: int = 0) -> Path:
    """Corpus with one document per judged id (text "text of <id>") + ``extra_docs`` unjudged, queries, qrels."""
    folder.mkdir(parents=True, exist_ok=True)
    doc_ids = sorted({d for docs in judgments.values() for d in docs} | {f"x{i}" for i in range(extra_docs)})
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as handle:
        for did in doc_ids:
            handle.write(json.dumps({"_id": did, "title": f"title {did}", "text": f"text of {did}"}) + "\n")
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as handle:
        for qid in judgments:
            handle.write(json.dumps({"_id": qid, "text": f"query {qid}"}) + "\n")
    write_qrels(folder / "qrels.tsv", judgments)
    return folder


def add_docs(folder: Path, *doc_ids: str) -> None:
    with open(folder / "corpus.jsonl", "a", encoding="utf-8") as handle:
        for did in doc_ids:
            handle.write(json.dumps({"_id": did, "text": f"text of {did}"}) + "\n")


def write_qrels(path: Path, judgments: dict[str, dict[str, int]]) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("query-id\tcorpus-id\tscore\n")
        for qid, docs in judgments.items():
            for did, score in docs.items():
                handle.write(f"{qid}\t{did}\t{score}\n")
    return path


def conf(folder: Path, qrels: str = "qrels.tsv", **kw) -> MaterializedQRelConfig:
    return MaterializedQRelConfig(qrel_path=folder / qrels, corpus_path=folder / "corpus.jsonl",
                                  query_path=folder / "queries.jsonl", **kw)


def plain_passage(text, title=None, dataset=None):
    return text


def ids_of(item) -> list[str]:
    return [p.removeprefix("text of ") for p in item["passage"]]


def dataset(folder, pos, neg, **args) -> BinaryDataset:
    return BinaryDataset(DataArguments(**args), pos, neg, format_passage=plain_passage)


GRADED = {"q1": {"a": 2, "b": 1, "c": 0, "d": 0, "e": 0, "f": 0}, "q2": {"g": 1, "h": 0, "i": 0, "j": 0}}


@pytest.mark.filterwarnings("ignore:BinaryDataset")  # q2 has no positive >= 2
def test_item_has_the_positive_first_and_distinct_negatives(tmp_path):
    folder = write_collection(tmp_path, GRADED)
    ds = dataset(folder, conf(folder, min_score=2), conf(folder, max_score=1), group_size=4)
    item = ds[0]
    assert item["query_id"] == "q1" and item["query"] == "query q1"
    assert item["label"] == [1.0, 0.0, 0.0, 0.0]
    ids = ids_of(item)
    assert ids[0] == "a"
    assert len(set(ids[1:])) == 3 and set(ids[1:]) <= {"c", "d", "e", "f"}


@pytest.mark.filterwarnings("ignore:BinaryDataset")  # q2 has no positive >= 2
def test_min_and_max_score_select_positives_and_negatives_in_every_epoch(tmp_path):
    folder = write_collection(tmp_path, GRADED)
    ds = dataset(folder, conf(folder, min_score=2), conf(folder, max_score=1), group_size=3)
    seen = set()
    for epoch in range(20):
        ds.set_epoch(epoch)
        ids = ids_of(ds[0])
        assert ids[0] == "a"  # b (score 1) is neither a positive (< 2) nor a negative (>= 1)
        seen.update(ids[1:])
    assert seen == {"c", "d", "e", "f"}


def test_groups_follow_example_rng_exactly(tmp_path):
    """The documented contract: positive = positives[rng.integers(P)], then negatives[rng.choice(N, k, False)],
    both lists sorted by doc id, with rng = example_rng(seed, epoch, index)."""
    folder = write_collection(tmp_path, GRADED)
    ds = dataset(folder, conf(folder, min_score=1), conf(folder, max_score=1), group_size=3, sampling_seed=5)
    ds.set_epoch(3)
    rng = example_rng(5, 3, 0)
    positives, negatives = ["a", "b"], ["c", "d", "e", "f"]
    expected = [positives[rng.integers(2)]] + [negatives[i] for i in rng.choice(4, size=2, replace=False)]
    assert ids_of(ds[0]) == expected
    assert ds.select_group(0) == [(expected[0], 1.0), (expected[1], 0.0), (expected[2], 0.0)]


def test_same_seed_and_epoch_give_same_groups_and_new_epoch_changes_them(tmp_path):
    judgments = {f"q{i}": {f"p{i}": 1, **{f"n{i}_{j}": 0 for j in range(10)}} for i in range(8)}
    folder = write_collection(tmp_path, judgments)
    one = dataset(folder, conf(folder, min_score=1), conf(folder, max_score=1), group_size=4, sampling_seed=11)
    two = dataset(folder, conf(folder, min_score=1), conf(folder, max_score=1), group_size=4, sampling_seed=11)
    first = [ids_of(one[i]) for i in range(len(one))]
    assert first == [ids_of(two[i]) for i in reversed(range(len(two)))][::-1]  # order of access is irrelevant
    one.set_epoch(1)
    second = [ids_of(one[i]) for i in range(len(one))]
    assert second != first
    one.set_epoch(0)
    assert [ids_of(one[i]) for i in range(len(one))] == first
    other_seed = dataset(folder, conf(folder, min_score=1), conf(folder, max_score=1), group_size=4, sampling_seed=12)
    assert [ids_of(other_seed[i]) for i in range(len(other_seed))] != first


def test_positive_is_sampled_among_all_positives(tmp_path):
    folder = write_collection(tmp_path, {"q1": {"a": 1, "b": 1, "c": 1, "n": 0}})
    ds = dataset(folder, conf(folder, min_score=1), conf(folder, max_score=1), group_size=2)
    firsts = set()
    for epoch in range(30):
        ds.set_epoch(epoch)
        firsts.add(ids_of(ds[0])[0])
    assert firsts == {"a", "b", "c"}


def test_short_negatives_use_each_once_then_draw_with_replacement(tmp_path):
    folder = write_collection(tmp_path, {"q1": {"a": 1, "n1": 0, "n2": 0}, "q2": {"b": 1, **{f"m{j}": 0 for j in range(6)}}})
    with pytest.warns(UserWarning, match=r"1 query\(ies\) have fewer than 4 negatives and draw the rest with replacement"):
        ds = dataset(folder, conf(folder, min_score=1), conf(folder, max_score=1), group_size=5)
    assert len(ds) == 2 and ds.num_filled_with_replacement == 1
    for epoch in range(5):
        ds.set_epoch(epoch)
        negatives = ids_of(ds[0])[1:]
        assert len(negatives) == 4 and set(negatives[:2]) == {"n1", "n2"}  # each once, then 2 more draws
        assert len(set(ids_of(ds[1])[1:])) == 4  # q2 has enough: no repeats


def test_short_negatives_skip_drops_the_query_with_a_counted_warning(tmp_path):
    folder = write_collection(tmp_path, {"q1": {"a": 1, "n1": 0}, "q2": {"b": 1, **{f"m{j}": 0 for j in range(6)}}})
    with pytest.warns(UserWarning, match=r"1 query\(ies\) with fewer than 4 negatives were skipped"):
        ds = dataset(folder, conf(folder, min_score=1), conf(folder, max_score=1), group_size=5,
                     short_negatives="skip")
    assert ds.query_ids == ["q2"] and ds.skipped["short_negatives"] == 1


@pytest.mark.parametrize("short_negatives", ["sample_with_replacement", "skip"])
def test_random_corpus_negatives_are_never_short_whatever_short_negatives_says(tmp_path, short_negatives):
    # no negative configs: negatives come from the corpus, distinct, so no query is short, none skipped
    folder = write_collection(tmp_path, {"q1": {"a": 1}, "q2": {"b": 1}}, extra_docs=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any BinaryDataset warning fails the test
        ds = dataset(folder, conf(folder, min_score=1), None, group_size=5, short_negatives=short_negatives)
    assert ds.query_ids == ["q1", "q2"] and ds.num_filled_with_replacement == 0
    assert ds.skipped == {"no_positive": 0, "no_negative": 0, "short_negatives": 0}
    assert all(len(set(ids_of(ds[i]))) == 5 for i in range(2))


def test_queries_without_positives_or_negatives_are_skipped_and_counted(tmp_path):
    folder = write_collection(tmp_path, {"q1": {"a": 1, "n": 0}, "q2": {"m": 0, "o": 0}, "q3": {"c": 1}})
    with pytest.warns(UserWarning, match=r"1 query\(ies\) with negatives but no positive.*"
                                         r"1 query\(ies\) with a positive but no negative"):
        ds = dataset(folder, conf(folder, min_score=1), conf(folder, max_score=1), group_size=2)
    assert ds.query_ids == ["q1"]
    assert ds.skipped == {"no_positive": 1, "no_negative": 1, "short_negatives": 0}


def test_group_size_one_needs_no_negatives(tmp_path):
    folder = write_collection(tmp_path, {"q1": {"a": 1}})
    ds = dataset(folder, conf(folder, min_score=1), conf(folder, max_score=1), group_size=1)
    assert ds[0]["label"] == [1.0] and ids_of(ds[0]) == ["a"]


def test_no_usable_query_is_a_config_error_that_says_what_to_add(tmp_path):
    folder = write_collection(tmp_path, {"q1": {"a": 1}, "q2": {"b": 1}})
    with pytest.warns(UserWarning), pytest.raises(ConfigError, match="score_transform=0"):
        dataset(folder, conf(folder, min_score=1), conf(folder, max_score=1), group_size=4)


def test_a_document_both_positive_and_negative_counts_as_positive_only(tmp_path):
    folder = write_collection(tmp_path, {"q1": {"a": 1, "n1": 0, "n2": 0}})
    add_docs(folder, "n3")
    write_qrels(folder / "mined.tsv", {"q1": {"a": 5, "n3": 4}})
    ds = dataset(folder, conf(folder, min_score=1), [conf(folder, max_score=1), conf(folder, "mined.tsv")],
                 group_size=4)
    for epoch in range(5):
        ds.set_epoch(epoch)
        assert sorted(ids_of(ds[0])[1:]) == ["n1", "n2", "n3"]


def test_merged_negative_configs_with_transform_and_per_query_limit(tmp_path):
    """Judged zeros plus mined documents (scores 9, 8, 7, 7): max_per_query=3 keeps 9, 8 and the tie by doc id."""
    folder = write_collection(tmp_path, {"q1": {"a": 1, "z": 0}})
    add_docs(folder, "m9", "m8", "m7b", "m7a")
    write_qrels(folder / "mined.tsv", {"q1": {"m9": 9, "m8": 8, "m7b": 7, "m7a": 7}})
    mined = conf(folder, "mined.tsv", score_transform=0, max_per_query=3)
    assert materialize(mined).qrels == {"q1": {"m9": 0.0, "m8": 0.0, "m7a": 0.0}}
    ds = dataset(folder, conf(folder, min_score=1), [conf(folder, max_score=1), mined], group_size=5)
    assert sorted(ids_of(ds[0])[1:]) == ["m7a", "m8", "m9", "z"]


def test_max_per_query_must_be_positive(tmp_path):
    folder = write_collection(tmp_path, {"q1": {"a": 1}})
    with pytest.raises(ConfigError, match="max_per_query"):
        conf(folder, max_per_query=0)


def test_negative_missing_from_corpus_names_the_qrel_file(tmp_path):
    folder = write_collection(tmp_path, {"q1": {"a": 1, "n": 0}})
    write_qrels(folder / "mined.tsv", {"q1": {"ghost": 3}})
    with pytest.raises(InputError, match="ghost") as err:
        dataset(folder, conf(folder, min_score=1), conf(folder, "mined.tsv", score_transform=0), group_size=2)
    assert err.value.path.endswith("mined.tsv")


def test_items_collate_into_query_passage_and_label_tensors(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    from densekit.data.collator import RetrievalCollator

    folder = write_collection(tmp_path, GRADED)
    args = DataArguments(group_size=3, query_max_len=8, passage_max_len=16)
    ds = BinaryDataset(args, conf(folder, min_score=1), conf(folder, max_score=1))
    batch = RetrievalCollator(data_args=args, tokenizer=AutoTokenizer.from_pretrained(tiny_model_dir))([ds[0], ds[1]])
    assert batch["query"]["input_ids"].shape[0] == 2
    assert batch["passage"]["input_ids"].shape[0] == 6
    assert batch["label"].tolist() == [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]


@pytest.mark.integration
def test_seed_001_creating_training_dataset_runs_as_written(scifact_dir, tmp_path, monkeypatch, tiny_model_dir):
    """Seed 001's blocks on SciFact's train qrels. SciFact judges positives only, so train_qrel.tsv is its
    train qrels plus 20 unjudged corpus documents per query labelled 0 (what `max_score=1` then selects)."""
    corpus_ids = [json.loads(line)["_id"] for line in open(scifact_dir / "corpus.jsonl", encoding="utf-8")]
    rows = [line.split("\t") for line in open(scifact_dir / "qrels" / "train.tsv", encoding="utf-8")][1:]
    judged: dict[str, set[str]] = {}
    for qid, did, _ in rows:
        judged.setdefault(qid, set()).add(did)
    rnd = random.Random(0)
    with open(tmp_path / "train_qrel.tsv", "w", encoding="utf-8") as handle:
        handle.write("query-id\tcorpus-id\tscore\n")
        handle.writelines("\t".join(r) for r in rows)
        for qid in judged:
            for did in rnd.sample([d for d in corpus_ids[:2000] if d not in judged[qid]], 20):
                handle.write(f"{qid}\t{did}\t0\n")
    shutil.copy(scifact_dir / "corpus.jsonl", tmp_path / "corpus.jsonl")
    shutil.copy(scifact_dir / "queries.jsonl", tmp_path / "queries.jsonl")
    monkeypatch.chdir(tmp_path)
    from densekit import BiEncoderRetriever, ModelArguments

    model_args = ModelArguments(model_name_or_path=str(tiny_model_dir), encoder_class="default", pooling="mean",
                                normalize=False, loss="infonce")
    model = BiEncoderRetriever.from_model_args(args=model_args)
    # --- seed block
    from densekit import DataArguments
    data_args = DataArguments(
        dataset_name="msmarco",
        group_size=16,
        query_max_len=32,
        passage_max_len=128
    )
    # --- seed block
    from densekit import MaterializedQRelConfig
    pos_conf = MaterializedQRelConfig(
        qrel_path="train_qrel.tsv",
        corpus_path="corpus.jsonl",
        query_path="queries.jsonl",
        min_score=1,
    )
    neg_conf = MaterializedQRelConfig(
        qrel_path="train_qrel.tsv",
        corpus_path="corpus.jsonl",
        query_path="queries.jsonl",
        max_score=1,
    )
    # --- seed block
    from densekit import BinaryDataset
    dataset = BinaryDataset(
        data_args=data_args,
        positive_configs=pos_conf,
        negative_configs=neg_conf,
        format_query=model.format_query,
        format_passage=model.format_passage,
    )
    # --- seed block
    from transformers import AutoTokenizer
    from densekit import RetrievalCollator
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    tokenizer.pad_token_id = tokenizer.eos_token_id
    tokenizer.padding_side = "right"
    data_collator = RetrievalCollator(
        data_args=data_args,
        tokenizer=tokenizer,
        append_eos=model.append_eos_token,
    )
    # --- checks
    assert len(dataset) == len(judged)  # every SciFact train query has a positive and 20 negatives
    item = dataset[0]
    qid = item["query_id"]
    assert len(item["passage"]) == 16 and item["label"] == [1.0] + [0.0] * 15
    group = [d for d, _ in dataset.select_group(0)]
    assert group[0] in judged[qid] and not set(group[1:]) & judged[qid] and len(set(group[1:])) == 15
    batch = data_collator([dataset[i] for i in range(4)])
    assert batch["passage"]["input_ids"].shape[0] == 64 and batch["passage"]["input_ids"].shape[1] <= 128
    assert np.array_equal(batch["label"][:, 0].numpy(), np.ones(4))


def test_items_carry_every_judged_positive_row_and_group_rows_take_an_epoch(tmp_path):
    folder = write_collection(tmp_path, {"q1": {"a": 1, "b": 1, "n1": 0, "n2": 0, "n3": 0}})
    ds = dataset(folder, conf(folder, min_score=1), conf(folder, max_score=1), group_size=2)
    item = ds[0]
    assert sorted(item["positive_rows"]) == sorted(ds.corpus.indices_of(["a", "b"]).tolist())
    assert item["passage_row"] == ds.group_rows(0).tolist() == ds.group_rows(0, epoch=0).tolist()
    groups = {tuple(ds.group_rows(0, epoch=e)) for e in range(8)}
    ds.set_epoch(5)
    assert ds[0]["passage_row"] == ds.group_rows(0, epoch=5).tolist() and len(groups) > 1
