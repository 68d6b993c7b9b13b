"""``densekit train``: fine-tune a bi-encoder with contrastive loss from a BEIR folder or explicit files.

Options are those of ``ModelArguments``, ``DataArguments``, ``RetrievalTrainingArguments`` and
``TrainDataArguments`` below, as flags or in a YAML/JSON file given first::

    densekit train --model_name_or_path MODEL --dataset scifact --split train --output_dir out \\
        --group_size 4 --per_device_train_batch_size 64 --grad_cache --query_chunk_size 16 --bf16
    densekit train train.yaml --learning_rate 2e-5      # flags after the file override it

The model is saved to ``--output_dir`` (densekit + Hugging Face + sentence-transformers layout).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from densekit.cli.arguments import parse_dataclasses
from densekit.cli.evaluate import DatasetArguments, qrel_config_from
from densekit.data.data_args import DataArguments
from densekit.data.qrels import MaterializedQRelConfig
from densekit.modeling.model_args import ModelArguments
from densekit.training.training_args import RetrievalTrainingArguments


@dataclass
class TrainDataArguments(DatasetArguments):
    """Where the training data is: :class:`DatasetArguments` (train split by default) plus negatives."""

    split: str = field(default="train", metadata={"help": "qrels split inside the BEIR folder"})
    negative_qrel_path: Optional[list[str]] = field(
        default=None, metadata={"help": "qrel file(s) whose documents are hard negatives (e.g. mined ones); "
                                        "without it negatives are drawn at random from the corpus, distinct "
                                        "and never a positive (so --short_negatives does not apply)"})
    min_positive_score: float = field(default=1.0, metadata={"help": "judgments >= this are positives"})


def qrel_configs_from(args: TrainDataArguments) -> tuple[MaterializedQRelConfig, Optional[MaterializedQRelConfig]]:
    """Positive and (optional) hard-negative configs from a BEIR folder and/or explicit files."""
    positives = dataclasses.replace(qrel_config_from(args), min_score=args.min_positive_score)
    negatives = None
    if args.negative_qrel_path:
        negatives = MaterializedQRelConfig(qrel_path=args.negative_qrel_path, corpus_path=positives.corpus_path,
                                           query_path=positives.query_path, score_transform=0)
    return positives, negatives


def train(model_args: ModelArguments, data_args: DataArguments, train_args: RetrievalTrainingArguments,
          train_data_args: TrainDataArguments) -> dict[str, float]:
    """Build model, dataset, collator and trainer from parsed options, train, save; returns train metrics."""
    from transformers import AutoTokenizer

    from densekit.data.collator import RetrievalCollator
    from densekit.data.datasets import BinaryDataset
    from densekit.modeling.retriever import BiEncoderRetriever
    from densekit.training.trainer import RetrievalTrainer

    train_args.check_group_size(data_args.group_size)
    positives, negatives = qrel_configs_from(train_data_args)
    model = BiEncoderRetriever.from_model_args(args=model_args)
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path,
                                              trust_remote_code=model_args.trust_remote_code)
    formatting = dict(format_query=model.format_query, format_passage=model.format_passage,
                      store_cache_dir=train_data_args.store_cache_dir)
    # judged (e.g. mined) negatives, or, without them (a BEIR train split), random corpus negatives
    dataset = BinaryDataset(data_args=data_args, positive_configs=positives, negative_configs=negatives,
                            **formatting)
    collator = RetrievalCollator(data_args=data_args, tokenizer=tokenizer, append_eos=model.append_eos_token,
                                 model_max_length=model.max_length)
    trainer = RetrievalTrainer(args=train_args, model=model, tokenizer=tokenizer, data_collator=collator,
                               train_dataset=dataset)
    result = trainer.train(resume_from_checkpoint=train_args.resume_from_checkpoint)
    trainer.save_model()
    if trainer.is_world_process_zero():
        print(f"densekit train: {len(dataset)} queries, {result.global_step} steps, "
              f"loss {result.training_loss:.4f}; model saved to {train_args.output_dir}")
    return dict(result.metrics)


def run(argv) -> int:
    model_args, data_args, train_args, train_data_args = parse_dataclasses(
        (ModelArguments, DataArguments, RetrievalTrainingArguments, TrainDataArguments), argv, prog="densekit train")
    train(model_args, data_args, train_args, train_data_args)
    return 0
