"""RetrievalEvaluationCallback: full-corpus dev evaluation during training picks the best checkpoint,
load_best_model_at_end restores it, EarlyStoppingCallback stops on it, and bad setups fail early."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, EarlyStoppingCallback, TrainerCallback

from densekit import BiEncoderRetriever, DataArguments, MaterializedQRelConfig, ModelArguments, MultiLevelDataset
from densekit import RetrievalCollator
from densekit.errors import ConfigError
from densekit.evaluation.evaluation_args import EvaluationArguments
from densekit.evaluation.evaluator import RetrievalEvaluator
from densekit.training import RetrievalTrainer, RetrievalTrainingArguments
from densekit.training.retrieval_eval import (
    RetrievalEvaluationCallback,
    best_metric_measure,
    put_retrieval_evaluation_first,
)
from tests.helpers import TOPICS

CORRUPT_FROM = 2  # from this step on the weights are zeroed: every later dev evaluation is worse


def write_dev(folder):
    """A dev collection whose 12 filler documents come first in the corpus and sort last by id: a model that
    scores everything the same (zeroed weights) ranks only fillers in the top 10, whichever way ties are
    broken (by corpus row, or by descending id as trec_eval does), so its nDCG@10 is 0."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as handle:
        for n in range(12):
            handle.write(json.dumps({"_id": f"z-filler-{n}", "text": f"lorem ipsum number {n} dolor"}) + "\n")
        for topic, text in TOPICS.items():
            handle.write(json.dumps({"_id": f"a-{topic}", "text": text}) + "\n")
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as handle:
        for topic in TOPICS:
            handle.write(json.dumps({"_id": f"q-{topic}", "text": f"what are {topic}?"}) + "\n")
    with open(folder / "dev.tsv", "w", encoding="utf-8") as handle:
        handle.write("query-id\tcorpus-id\tscore\n")
        for topic in TOPICS:
            handle.write(f"q-{topic}\ta-{topic}\t1\n")
    return folder


class ZeroWeightsFrom(TrainerCallback):
    """After each optimizer step from ``step`` on (before the Trainer evaluates and saves), zero the weights."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step >= self.step:
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.zero_()
        return control


def train_examples(n=6):
    return [{"query": f"what is thing {i}?", "passage": [f"thing {i} is a kind of object {i}",
                                                         f"unrelated words {i * 3} here"], "label": [1, 0]}
            for i in range(n)]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def setup(tiny_model_dir, tokenizer, tmp_path):
    model = BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=str(tiny_model_dir),
                                                              pooling="mean", normalize=False))
    data_args = DataArguments(group_size=2, query_max_len=16, passage_max_len=16)
    dev_dir = write_dev(tmp_path / "dev")
    dev = MultiLevelDataset(data_args=data_args, qrel_config=MaterializedQRelConfig(
        qrel_path=str(dev_dir / "dev.tsv"), corpus_path=str(dev_dir / "corpus.jsonl"),
        query_path=str(dev_dir / "queries.jsonl")), format_query=model.format_query,
        format_passage=model.format_passage)
    collator = RetrievalCollator(data_args=data_args, tokenizer=tokenizer, append_eos=model.append_eos_token)
    return model, dev, collator


def args_for(tmp_path, **kw):
    values = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=6, learning_rate=1e-3,
                  eval_strategy="steps", eval_steps=1, save_strategy="steps", save_steps=1,
                  load_best_model_at_end=True, metric_for_best_model="nDCG@10", logging_steps=1,
                  disable_tqdm=True, dataloader_pin_memory=False)
    values.update(kw)
    return RetrievalTrainingArguments(**values)


def test_best_checkpoint_by_full_corpus_ndcg_is_kept_and_restored(tiny_model_dir, tokenizer, tmp_path):
    model, dev, collator = setup(tiny_model_dir, tokenizer, tmp_path)
    dev_eval = RetrievalEvaluationCallback(dev)
    trainer = RetrievalTrainer(args=args_for(tmp_path, max_steps=4), model=model, tokenizer=tokenizer,
                               data_collator=collator, train_dataset=train_examples(), eval_dataset=dev,
                               callbacks=[dev_eval, ZeroWeightsFrom(CORRUPT_FROM)])
    trainer.train()

    scores = {step: metrics["nDCG@10"] for step, metrics in dev_eval.history}
    assert sorted(scores) == [1, 2, 3, 4]
    assert scores[1] > 0 and all(scores[step] == 0 for step in (2, 3, 4))  # later steps made worse
    assert trainer.state.best_metric == scores[1]
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-1")
    # the final model is the best checkpoint's weights, not the (zeroed) last ones
    saved = load_file(f"{trainer.state.best_model_checkpoint}/model.safetensors")
    weights = model.encoder.model.state_dict()
    assert all(torch.equal(saved[name], weights[name]) for name in saved)
    assert any(weights[name].abs().sum() > 0 for name in saved)
    # ... and evaluating it again gives the best dev nDCG@10 (nothing stale, nothing cached)
    fresh = RetrievalEvaluator(EvaluationArguments(output_dir=str(tmp_path / "again"), search_topk=100,
                                                   disable_tqdm=True, report_to="none"),
                               model=model, tokenizer=tokenizer, eval_dataset=dev)
    assert fresh.evaluate()["nDCG@10"] == pytest.approx(scores[1], abs=1e-9)
    # the values are in the Trainer's log of each evaluation, and each evaluation's files are on disk
    logged = [entry for entry in trainer.state.log_history if "eval_nDCG@10" in entry]
    assert [entry["step"] for entry in logged] == [1, 2, 3, 4]
    assert all("eval_loss" in entry for entry in logged)  # merged into the Trainer's own entry
    written = json.loads((tmp_path / "out" / "retrieval_eval" / "step-1" / "metrics.json").read_text())
    assert "nDCG@10" in json.dumps(written)


def test_early_stopping_reads_the_dev_metric_in_any_callback_order(tiny_model_dir, tokenizer, tmp_path):
    model, dev, collator = setup(tiny_model_dir, tokenizer, tmp_path)
    dev_eval = RetrievalEvaluationCallback(dev, measures=["MRR@10"])  # nDCG@10 added: the best-model metric
    # listed after EarlyStoppingCallback, which would run first: the helper moves it to the front
    trainer = RetrievalTrainer(args=args_for(tmp_path, max_steps=20, metric_for_best_model="ndcg_cut.10"),
                               model=model, tokenizer=tokenizer, data_collator=collator,
                               train_dataset=train_examples(), eval_dataset=dev,
                               callbacks=[EarlyStoppingCallback(early_stopping_patience=2), dev_eval,
                                          ZeroWeightsFrom(CORRUPT_FROM)])
    put_retrieval_evaluation_first(trainer.callback_handler)
    trainer.train()
    assert trainer.state.global_step == 3  # steps 2 and 3 did not improve on step 1: patience 2 reached
    assert set(dev_eval.history[0][1]) == {"MRR@10", "nDCG@10"}
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-1")
    assert any("eval_ndcg_cut.10" in entry for entry in trainer.state.log_history)  # the key as spelled


def test_what_is_evaluated_must_be_a_dev_split_of_the_trained_model(tiny_model_dir, tokenizer, tmp_path):
    model, dev, _ = setup(tiny_model_dir, tokenizer, tmp_path)
    with pytest.raises(ConfigError, match="MultiLevelDataset"):
        RetrievalEvaluationCallback(train_examples())
    with pytest.raises(ConfigError, match="Unknown measure"):
        RetrievalEvaluationCallback(dev, measures=["nDGC@10"])
    eval_args = EvaluationArguments(output_dir=str(tmp_path / "e"), measures=["MRR@10"], report_to="none")
    other = BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=str(tiny_model_dir)))
    callback = RetrievalEvaluationCallback(RetrievalEvaluator(eval_args, model=other, tokenizer=tokenizer,
                                                              eval_dataset=dev))
    args = args_for(tmp_path, max_steps=1)
    with pytest.raises(ConfigError, match="does not compute"):
        callback.on_train_begin(args, None, None)
    with pytest.raises(ConfigError, match="another model"):
        callback.on_evaluate(args, None, None, metrics={}, model=model)
    with pytest.raises(ConfigError, match="broadcast_output"):
        RetrievalEvaluationCallback(RetrievalEvaluator(
            EvaluationArguments(output_dir=str(tmp_path / "e"), broadcast_output=False, report_to="none"),
            model=model, tokenizer=tokenizer, eval_dataset=dev))


def test_best_metric_measure_reads_every_spelling():
    class Args:
        metric_for_best_model = None

    args = Args()
    for name, expected in (("nDCG@10", "nDCG@10"), ("eval_ndcg_cut.10", "nDCG@10"), ("loss", None),
                           ("eval_loss", None), (None, None)):
        args.metric_for_best_model = name
        assert best_metric_measure(args) == expected


# ---------------------------------------------------------------------------- densekit train options
def dev_config(tmp_path):
    dev_dir = write_dev(tmp_path / "dev")
    return MaterializedQRelConfig(qrel_path=str(dev_dir / "dev.tsv"), corpus_path=str(dev_dir / "corpus.jsonl"),
                                  query_path=str(dev_dir / "queries.jsonl"))


def test_train_options_give_the_dev_set_and_callbacks_in_order(tmp_path):
    from densekit.cli.arguments import parse_dataclasses
    from densekit.training.retrieval_eval import DevEvaluationArguments, dev_evaluation_callbacks

    train_args, dev_args = parse_dataclasses(
        (RetrievalTrainingArguments, DevEvaluationArguments),
        ["--output_dir", str(tmp_path / "out"), "--eval_strategy", "steps", "--eval_steps", "5",
         "--save_steps", "5", "--load_best_model_at_end", "true", "--metric_for_best_model", "nDCG@10",
         "--eval_dataset", "unused-here", "--early_stopping_patience", "3", "--eval_measures", "MRR@10"],
        prog="densekit train")
    dataset, callbacks = dev_evaluation_callbacks(dev_args, train_args, dev_config(tmp_path),
                                                  DataArguments(group_size=2))
    assert isinstance(dataset, MultiLevelDataset) and len(dataset) == len(TOPICS)
    assert [type(cb) for cb in callbacks] == [RetrievalEvaluationCallback, EarlyStoppingCallback]
    assert callbacks[1].early_stopping_patience == 3 and callbacks[0].measures == ["MRR@10"]


def test_train_options_that_cannot_work_together_fail_before_training(tmp_path):
    from densekit.training.retrieval_eval import DevEvaluationArguments, dev_evaluation_callbacks

    data_args = DataArguments(group_size=2)
    best = args_for(tmp_path, max_steps=1)
    with pytest.raises(ConfigError, match="--eval_dataset"):
        dev_evaluation_callbacks(DevEvaluationArguments(), best, None, data_args)
    with pytest.raises(ConfigError, match="--eval_strategy"):
        dev_evaluation_callbacks(DevEvaluationArguments(eval_dataset="x"), RetrievalTrainingArguments(
            output_dir=str(tmp_path / "o")), dev_config(tmp_path), data_args)
    with pytest.raises(ConfigError, match="load_best_model_at_end"):
        dev_evaluation_callbacks(DevEvaluationArguments(eval_dataset="x", early_stopping_patience=2),
                                 args_for(tmp_path, max_steps=1, load_best_model_at_end=False),
                                 dev_config(tmp_path), data_args)
    plain = RetrievalTrainingArguments(output_dir=str(tmp_path / "o"))
    assert dev_evaluation_callbacks(DevEvaluationArguments(), plain, None, data_args) == (None, [])
