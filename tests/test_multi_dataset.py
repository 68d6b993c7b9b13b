"""Multi-dataset training: MultiSourceDataset, batches from one dataset each (proportional, round robin),
and ``densekit train`` with several BEIR folders."""
from __future__ import annotations

import pytest

from densekit.cli import train as train_cli
from densekit.data.data_args import DataArguments
from densekit.data.datasets import BinaryDataset, MultiSourceDataset
from densekit.data.sampling import GroupBatchSampler
from densekit.errors import ConfigError
from tests.helpers import write_beir
from tests.test_data_binary_dataset import conf, plain_passage, write_collection


def make(tmp_path, name, queries, group_size=2):
    judgments = {f"{name}q{i}": {f"{name}p{i}": 1, f"{name}n{i}": 0, f"{name}m{i}": 0} for i in range(queries)}
    folder = write_collection(tmp_path / name, judgments)
    return BinaryDataset(DataArguments(group_size=group_size), conf(folder, min_score=1), conf(folder, max_score=1),
                         format_passage=plain_passage)


@pytest.fixture()
def sources(tmp_path):
    return [make(tmp_path, "a", 9), make(tmp_path, "b", 3)]


def source_of(index):
    return 0 if index < 9 else 1


def test_indices_map_to_their_source_and_epochs_pass_through(sources):
    both = MultiSourceDataset(sources)
    assert len(both) == 12 and both.sources == [range(0, 9), range(9, 12)]
    assert both[10]["query_id"] == "bq1" and both[2]["query_id"] == "aq2"
    both.set_epoch(3)
    assert sources[0].epoch == sources[1].epoch == 3
    assert list(both.group_rows(10)) == list(sources[1].group_rows(1))
    with pytest.raises(IndexError):
        both.locate(12)


@pytest.mark.parametrize("unique", [False, True])
def test_proportional_batches_come_from_one_source_and_cover_every_example(sources, unique):
    both = MultiSourceDataset(sources, sampling="proportional")
    batches = list(GroupBatchSampler(both, 2, seed=5, unique_passages=unique))
    assert all(len({source_of(i) for i in b}) == 1 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(12))
    orders = {tuple(source_of(b[0]) for b in GroupBatchSampler(both, 2, seed=s)) for s in range(6)}
    assert len(orders) > 1  # the sources' batches are shuffled together, seeded
    assert list(GroupBatchSampler(both, 2, seed=5, unique_passages=unique)) == batches


def test_round_robin_alternates_sources_until_one_runs_out(sources):
    both = MultiSourceDataset(sources, sampling="round_robin")
    batches = list(GroupBatchSampler(both, 2, seed=5, unique_passages=False))
    # a: 5 batches (9 queries), b: 2 batches (3 queries): a b a b a a a
    assert [source_of(b[0]) for b in batches] == [0, 1, 0, 1, 0, 0, 0]


def test_different_group_sizes_and_unknown_sampling_are_refused(tmp_path, sources):
    with pytest.raises(ConfigError, match="group sizes"):
        MultiSourceDataset([sources[0], make(tmp_path, "c", 2, group_size=3)])
    with pytest.raises(ConfigError, match="unknown"):
        MultiSourceDataset(sources, sampling="random")


def test_train_cli_takes_several_datasets_and_the_new_options(tiny_model_dir, tmp_path, capsys):
    first = write_beir(tmp_path / "one", split="train")
    second = write_beir(tmp_path / "two", split="dev")
    out = tmp_path / "model"
    code = train_cli.run(["--model_name_or_path", str(tiny_model_dir), "--dataset", str(first), str(second),
                          "--split", "train", "dev", "--multi_dataset_sampling", "round_robin",
                          "--loss", "multi_positive_infonce", "--positives_per_query", "2",
                          "--unique_passages_per_batch", "true", "--output_dir", str(out), "--group_size", "3",
                          "--per_device_train_batch_size", "2", "--max_steps", "2", "--save_strategy", "no",
                          "--disable_tqdm", "true", "--dataloader_pin_memory", "false",
                          "--grad_cache", "--query_chunk_size", "1"])
    assert code == 0
    assert "12 queries, 2 steps" in capsys.readouterr().out


def test_train_data_arguments_check_split_counts_and_give_one_config_per_dataset(tmp_path):
    first, second = write_beir(tmp_path / "one", split="train"), write_beir(tmp_path / "two", split="train")
    args = train_cli.TrainDataArguments(dataset=[str(first), str(second)])
    parts = args.per_dataset()
    assert [p.dataset for p in parts] == [[str(first)], [str(second)]] and all(p.split == ["train"] for p in parts)
    assert train_cli.qrel_configs_from(parts[1])[0].corpus_path == second / "corpus.jsonl"
    with pytest.raises(ConfigError, match="split"):
        train_cli.TrainDataArguments(dataset=[str(first), str(second)], split=["train", "dev", "test"])
    with pytest.raises(ConfigError, match="multi_dataset_sampling"):
        train_cli.TrainDataArguments(dataset=[str(first)], multi_dataset_sampling="mixed")
