"""``densekit train``: flags and YAML config, BEIR folder + split, saved model, seeded negative sampling,
and errors that name the fix."""
from __future__ import annotations

import pytest
import yaml

from densekit.cli import train as train_cli
from densekit.data.data_args import DataArguments
from densekit.errors import ConfigError, InputError
from densekit.modeling.retriever import BiEncoderRetriever
from densekit.data.datasets import BinaryDataset
from tests.helpers import write_beir


def test_train_from_beir_folder_with_flags_saves_a_reloadable_model(tiny_model_dir, tmp_path, capsys):
    beir = write_beir(tmp_path / "beir", split="train")
    out = tmp_path / "model"
    code = train_cli.run(["--model_name_or_path", str(tiny_model_dir), "--dataset", str(beir), "--split", "train",
                          "--output_dir", str(out), "--group_size", "3", "--per_device_train_batch_size", "4",
                          "--max_steps", "2", "--save_strategy", "no", "--disable_tqdm", "true",
                          "--grad_cache", "--query_chunk_size", "2", "--passage_chunk_size", "5",
                          "--dataloader_pin_memory", "false", "--bf16"])
    assert code == 0
    assert "2 steps" in capsys.readouterr().out
    model = BiEncoderRetriever.from_pretrained(out)
    assert (out / "modules.json").is_file() and model.encoder.pooling == "mean"


def test_train_reads_a_yaml_config_and_flags_override_it(tiny_model_dir, tmp_path):
    beir = write_beir(tmp_path / "beir", split="train")
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "model_name_or_path": str(tiny_model_dir), "dataset": str(beir), "output_dir": str(tmp_path / "a"),
        "group_size": 2, "per_device_train_batch_size": 3, "max_steps": 1, "save_strategy": "no",
        "disable_tqdm": True, "dataloader_pin_memory": False, "pooling": "cls",
    }))
    assert train_cli.run([str(config), "--output_dir", str(tmp_path / "b")]) == 0
    assert not (tmp_path / "a").exists()
    assert BiEncoderRetriever.from_pretrained(tmp_path / "b").encoder.pooling == "cls"


def test_training_groups_are_a_positive_then_seeded_random_negatives_that_change_by_epoch(tmp_path):
    beir = write_beir(tmp_path / "beir", split="train")
    positives, negatives = train_cli.qrel_configs_from(train_cli.TrainDataArguments(dataset=str(beir), split="train"))
    assert negatives is None
    dataset = BinaryDataset(DataArguments(group_size=5, sampling_seed=3), positives, negative_configs=None)
    judged = positive_docs(beir / "qrels" / "train.tsv")
    first = [[doc for doc, _ in dataset.select_group(i)] for i in range(len(dataset))]
    again = [[doc for doc, _ in dataset.select_group(i)] for i in range(len(dataset))]
    dataset.set_epoch(1)
    later = [[doc for doc, _ in dataset.select_group(i)] for i in range(len(dataset))]
    assert first == again and first != later
    assert len(dataset) == len(judged)
    for index, group in enumerate(first):
        qid = dataset.query_ids[index]
        assert group[0] in judged[qid]
        assert not set(group[1:]) & judged[qid] and len(set(group)) == 5
    item = dataset[0]
    assert item["label"] == [1.0, 0.0, 0.0, 0.0, 0.0] and len(item["passage"]) == 5


def test_negative_qrels_train_through_binary_dataset_with_those_negatives(tiny_model_dir, tmp_path, monkeypatch):
    from densekit.data import datasets

    beir = write_beir(tmp_path / "beir", split="train")
    hard = tmp_path / "hard.tsv"
    hard.write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"q-{t}\t{o}-2\t7\n" for t, o in [("cats", "dogs"), ("dogs", "rain"), ("rain", "sun"), ("sun", "bread"),
                                            ("bread", "chess"), ("chess", "cats")]))
    built = []
    real = datasets.BinaryDataset
    monkeypatch.setattr(datasets, "BinaryDataset", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    assert train_cli.run(["--model_name_or_path", str(tiny_model_dir), "--dataset", str(beir), "--output_dir",
                          str(tmp_path / "o"), "--group_size", "2", "--per_device_train_batch_size", "3",
                          "--max_steps", "1", "--save_strategy", "no", "--disable_tqdm", "true",
                          "--dataloader_pin_memory", "false", "--negative_qrel_path", str(hard)]) == 0
    dataset = built[0]
    group = dataset.select_group(dataset.query_ids.index("q-cats"))
    assert group[0][0] in ("cats-0", "cats-1") and group[1] == ("dogs-2", 0.0)


def test_missing_data_options_say_what_to_give(tmp_path):
    with pytest.raises(ConfigError, match="--dataset"):
        train_cli.qrel_configs_from(train_cli.TrainDataArguments())
    with pytest.raises(InputError, match="qrels/dev.tsv"):
        train_cli.qrel_configs_from(train_cli.TrainDataArguments(dataset=str(write_beir(tmp_path / "b")),
                                                                 split="dev"))


def test_cli_rejects_a_passage_chunk_larger_than_the_batch(tiny_model_dir, tmp_path):
    beir = write_beir(tmp_path / "beir", split="train")
    with pytest.raises(ConfigError, match="passage_chunk_size=9"):
        train_cli.run(["--model_name_or_path", str(tiny_model_dir), "--dataset", str(beir),
                       "--output_dir", str(tmp_path / "o"), "--group_size", "2", "--per_device_train_batch_size",
                       "4", "--grad_cache", "--passage_chunk_size", "9"])


def test_random_negatives_never_include_a_positive_even_when_the_corpus_is_small(tmp_path):
    beir = write_beir(tmp_path / "beir", split="train")  # 18 documents, 2 positives per query
    positives, _ = train_cli.qrel_configs_from(train_cli.TrainDataArguments(dataset=str(beir), split="train"))
    dataset = BinaryDataset(DataArguments(group_size=17, sampling_seed=1), positives, negative_configs=None)
    judged = positive_docs(beir / "qrels" / "train.tsv")
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            group = [doc for doc, _ in dataset.select_group(index)]
            assert not set(group[1:]) & judged[dataset.query_ids[index]] and len(set(group)) == 17
    with pytest.raises(ConfigError, match="group_size"):
        BinaryDataset(DataArguments(group_size=18), positives, negative_configs=None)


def positive_docs(qrels_path) -> dict[str, set[str]]:
    """Query -> documents judged >= 1 in a BEIR qrels file (the test's reference, read independently)."""
    judged: dict[str, set[str]] = {}
    for line in qrels_path.read_text().splitlines()[1:]:
        qid, doc, score = line.split("\t")
        if float(score) >= 1:
            judged.setdefault(qid, set()).add(doc)
    return judged
