"""GroupBatchSampler: seeded per (seed, epoch), no corpus row twice in a batch (also across ranks of a
global batch), every example once per epoch, and the trainer's loader built on it."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from densekit.data.collator import RetrievalCollator
from densekit.data.data_args import DataArguments
from densekit.data.datasets import BinaryDataset
from densekit.data.sampling import GroupBatchSampler
from densekit.modeling.model_args import ModelArguments
from densekit.modeling.retriever import BiEncoderRetriever
from densekit.training import RetrievalTrainer, RetrievalTrainingArguments
from tests.test_data_binary_dataset import conf, plain_passage, write_collection

# 12 queries over 16 documents: positives shared by pairs of queries, negatives drawn from a small pool,
# so random batches repeat documents often
JUDGMENTS = {f"q{i}": {f"p{i // 2}": 1, **{f"n{(i + j) % 10}": 0 for j in range(4)}} for i in range(12)}


@pytest.fixture()
def dataset(tmp_path):
    folder = write_collection(tmp_path, JUDGMENTS)
    return BinaryDataset(DataArguments(group_size=3, sampling_seed=1), conf(folder, min_score=1),
                         conf(folder, max_score=1), format_passage=plain_passage)


def rows_repeat(dataset, batch, epoch):
    seen = [int(r) for i in batch for r in dataset.group_rows(i, epoch)]
    return len(seen) != len(set(seen))


def test_batches_never_repeat_a_passage_and_cover_every_example_once(dataset):
    sampler = GroupBatchSampler(dataset, 4, seed=3)
    for epoch in range(4):
        dataset.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert sorted(i for b in batches for i in b) == list(range(len(dataset)))
        assert not any(rows_repeat(dataset, b, epoch) for b in batches)
    # without the constraint, the same data does repeat passages (so the test is not vacuous)
    plain = GroupBatchSampler(dataset, 4, seed=3, unique_passages=False)
    assert any(rows_repeat(dataset, b, dataset.epoch) for b in plain)


def test_same_seed_and_epoch_give_the_same_batches_others_differ(dataset, tmp_path):
    first = list(GroupBatchSampler(dataset, 4, seed=3))
    assert list(GroupBatchSampler(dataset, 4, seed=3)) == first
    assert list(GroupBatchSampler(dataset, 4, seed=4)) != first
    dataset.set_epoch(1)
    assert list(GroupBatchSampler(dataset, 4, seed=3)) != first
    dataset.set_epoch(0)
    assert list(GroupBatchSampler(dataset, 4, seed=3)) == first


def test_ranks_get_slices_of_one_global_batch_without_repeats(dataset):
    ranks = [list(GroupBatchSampler(dataset, 2, seed=3, num_replicas=2, rank=r)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])
    for mine, theirs in zip(*ranks):
        assert mine and theirs and not rows_repeat(dataset, mine + theirs, 0)
    seen = [i for r in ranks for b in r for i in b]
    assert len(seen) == len(set(seen))
    # a global batch too small to give each rank an example (here the single last one) is left out
    whole = GroupBatchSampler(dataset, 4, seed=3).global_batches  # same global size, one process
    assert len(dataset) - len(seen) == sum(len(b) for b in whole(0) if len(b) < 2)


def test_drop_last_keeps_only_full_batches(dataset):
    kept = list(GroupBatchSampler(dataset, 3, seed=3, drop_last=True))
    every = list(GroupBatchSampler(dataset, 3, seed=3))
    assert kept == [b for b in every if len(b) == 3] and kept and len(kept) < len(every)


def test_trainer_uses_the_sampler_when_asked(tiny_model_dir, dataset, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=str(tiny_model_dir)))
    collator = RetrievalCollator(DataArguments(group_size=3, passage_max_len=8, query_max_len=8), tokenizer)

    def trainer(unique):
        args = RetrievalTrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4,
                                          max_steps=3, save_strategy="no", disable_tqdm=True, seed=3,
                                          dataloader_pin_memory=False, unique_passages_per_batch=unique)
        return RetrievalTrainer(args=args, model=model, tokenizer=tokenizer, data_collator=collator,
                                train_dataset=dataset)

    loader = trainer(True).get_train_dataloader()
    batches = list(loader)
    assert len(batches) == len(GroupBatchSampler(dataset, 4, seed=3))
    for batch in batches:
        rows = batch["passage_row"].reshape(-1).tolist()
        assert len(rows) == len(set(rows))
    assert sum(len(b["passage_row"]) for b in batches) == len(dataset)
    assert trainer(False)._group_batch_sampler() is None
    result = trainer(True).train()
    assert result.global_step == 3


def test_a_resumed_run_sees_the_same_batches_and_ends_with_the_same_weights(tiny_model_dir, dataset, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    collator = RetrievalCollator(DataArguments(group_size=3, passage_max_len=8, query_max_len=8), tokenizer)
    steps = len(GroupBatchSampler(dataset, 4, seed=3)) + 2  # into the second epoch

    def trainer(out):
        model = BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=str(tiny_model_dir)))
        args = RetrievalTrainingArguments(output_dir=str(out), per_device_train_batch_size=4, max_steps=steps,
                                          save_steps=steps - 1, learning_rate=1e-3, disable_tqdm=True, seed=3,
                                          dataloader_pin_memory=False, unique_passages_per_batch=True)
        return RetrievalTrainer(args=args, model=model, tokenizer=tokenizer, data_collator=collator,
                                train_dataset=dataset)

    first = trainer(tmp_path / "first")
    first.train()
    dataset.set_epoch(0)
    second = trainer(tmp_path / "second")
    second.train(resume_from_checkpoint=str(tmp_path / "first" / f"checkpoint-{steps - 1}"))
    done = {n: v.detach().clone() for n, v in first.model.state_dict().items()}
    resumed = {n: v.detach().clone() for n, v in second.model.state_dict().items()}
    assert all(torch.allclose(resumed[n], done[n], rtol=0, atol=1e-6) for n in done)
