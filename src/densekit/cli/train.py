"""``densekit train``: fine-tune a bi-encoder with contrastive loss from a BEIR folder or explicit files.

Options are those of ``ModelArguments``, ``DataArguments``, ``RetrievalTrainingArguments`` and
``TrainDataArguments`` below, as flags or in a YAML/JSON file given first::

    densekit train --model_name_or_path MODEL --dataset scifact --split train --output_dir out \\
        --group_size 4 --per_device_train_batch_size 64 --grad_cache --query_chunk_size 16 --bf16
    densekit train train.yaml --learning_rate 2e-5      # flags after the file override it

The model is saved to ``--output_dir`` (densekit + Hugging Face + sentence-transformers layout).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from densekit.cli.arguments import parse_dataclasses
from densekit.cli.evaluate import beir_file
from densekit.data.data_args import DataArguments
from densekit.data.qrels import MaterializedQRelConfig
from densekit.errors import ConfigError, InputError
from densekit.modeling.model_args import ModelArguments
from densekit.training.training_args import RetrievalTrainingArguments


@dataclass
class TrainDataArguments:
    """Where the training data is: a BEIR folder and split, or explicit files (which win)."""

    dataset: Optional[str] = field(default=None, metadata={"help": "BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv"})
    split: str = field(default="train", metadata={"help": "qrels split inside the BEIR folder"})
    corpus_path: Optional[list[str]] = field(default=None, metadata={"help": "corpus file(s), overrides --dataset"})
    query_path: Optional[list[str]] = field(default=None, metadata={"help": "query file(s), overrides --dataset"})
    qrel_path: Optional[list[str]] = field(default=None, metadata={"help": "positive qrel file(s), overrides --dataset"})
    negative_qrel_path: Optional[list[str]] = field(
        default=None, metadata={"help": "qrel file(s) whose documents are hard negatives (e.g. mined ones); "
                                        "without it negatives are drawn at random from the corpus"})
    min_positive_score: float = field(default=1.0, metadata={"help": "judgments >= this are positives"})
    store_cache_dir: Optional[str] = field(default=None, metadata={"help": "keep Arrow copies of text files here"})


def qrel_configs_from(args: TrainDataArguments) -> tuple[MaterializedQRelConfig, Optional[MaterializedQRelConfig]]:
    """Positive and (optional) hard-negative configs from a BEIR folder and/or explicit files."""
    folder = Path(args.dataset) if args.dataset else None
    if folder is None and not (args.corpus_path and args.query_path and args.qrel_path):
        raise ConfigError("give --dataset BEIR_FOLDER, or all of --corpus_path, --query_path and --qrel_path.")
    if folder is not None and not folder.is_dir():
        raise InputError("dataset folder not found.", path=folder, fix="check the path given to --dataset.")
    corpus = args.corpus_path or beir_file(folder, "corpus.jsonl")
    queries = args.query_path or beir_file(folder, "queries.jsonl")
    positives = MaterializedQRelConfig(qrel_path=args.qrel_path or beir_file(folder, f"qrels/{args.split}.tsv"),
                                       corpus_path=corpus, query_path=queries, min_score=args.min_positive_score)
    negatives = None
    if args.negative_qrel_path:
        negatives = MaterializedQRelConfig(qrel_path=args.negative_qrel_path, corpus_path=corpus, query_path=queries,
                                           score_transform=0)
    return positives, negatives


def train(model_args: ModelArguments, data_args: DataArguments, train_args: RetrievalTrainingArguments,
          train_data_args: TrainDataArguments) -> dict[str, float]:
    """Build model, dataset, collator and trainer from parsed options, train, save; returns train metrics."""
    from transformers import AutoTokenizer

    from densekit.data.collator import RetrievalCollator
    from densekit.data.datasets import BinaryDataset
    from densekit.modeling.retriever import BiEncoderRetriever
    from densekit.training.beir_train_dataset import PositivesWithNegativesDataset
    from densekit.training.trainer import RetrievalTrainer

    train_args.check_group_size(data_args.group_size)
    positives, negatives = qrel_configs_from(train_data_args)
    model = BiEncoderRetriever.from_model_args(args=model_args)
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path,
                                              trust_remote_code=model_args.trust_remote_code)
    formatting = dict(format_query=model.format_query, format_passage=model.format_passage,
                      store_cache_dir=train_data_args.store_cache_dir)
    if negatives is not None:  # judged (e.g. mined) negatives: Trove's binary dataset
        dataset = BinaryDataset(data_args=data_args, positive_configs=positives, negative_configs=negatives,
                                **formatting)
    else:  # positives only (a BEIR train split): random corpus negatives
        dataset = PositivesWithNegativesDataset(data_args, positives, **formatting)
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
