"""``densekit train``: fine-tune a bi-encoder with contrastive loss from a BEIR folder or explicit files.

Options are those of ``ModelArguments``, ``DataArguments``, ``RetrievalTrainingArguments`` and
``TrainDataArguments`` below, as flags or in a YAML/JSON file given first::

    densekit train --model_name_or_path MODEL --dataset scifact --split train --output_dir out \\
        --group_size 4 --per_device_train_batch_size 64 --grad_cache --query_chunk_size 16 --bf16
    densekit train train.yaml --learning_rate 2e-5      # flags after the file override it
    densekit train ... --dataset nfcorpus scifact --multi_dataset_sampling round_robin \
        --loss multi_positive_infonce --positives_per_query 4 --unique_passages_per_batch true

In-batch false negatives (judged positives of a query, copies of its positive) are left out of its
negatives by default (``--mask_false_negatives false`` turns that off).

The model is saved to ``--output_dir`` (densekit + Hugging Face + sentence-transformers layout).
"""
from __future__ import annotations

import argparse
import dataclasses
import shlex
from dataclasses import dataclass, field
from typing import Optional

from densekit.cli.arguments import parse_dataclasses
from densekit.cli.evaluate import DatasetArguments, qrel_config_from
from densekit.data.data_args import DataArguments
from densekit.data.qrels import MaterializedQRelConfig
from densekit.errors import ConfigError
from densekit.modeling.model_args import ModelArguments
from densekit.training.retrieval_eval import DevEvaluationArguments
from densekit.training.training_args import RetrievalTrainingArguments


@dataclass
class TrainDataArguments(DatasetArguments):
    """Where the training data is: :class:`DatasetArguments` (train split by default) plus negatives.

    ``--dataset`` takes one BEIR folder or several; with several, every batch comes from one of them
    (``--multi_dataset_sampling``), so in-batch negatives and false-negative masking stay within one
    collection. ``--split`` gives one split for all of them or one per dataset.
    """

    dataset: Optional[list[str]] = field(
        default=None, metadata={"help": "BEIR folder(s): corpus.jsonl, queries.jsonl, qrels/<split>.tsv. Several "
                                        "folders: each batch is drawn from one of them"})
    split: list[str] = field(default_factory=lambda: ["train"],
                             metadata={"help": "qrels split inside the BEIR folder (one, or one per --dataset)"})
    multi_dataset_sampling: str = field(
        default="proportional",
        metadata={"help": "With several --dataset: which dataset each batch comes from. proportional: all "
                          "datasets' batches shuffled together (each query once per epoch); round_robin: one "
                          "batch of each dataset in turn"})
    positives_per_query: int = field(
        default=1, metadata={"help": "Judged positives in each query's group (labels 1), the rest negatives; "
                                     "above 1 for --loss multi_positive_infonce on data with many positives"})
    negative_qrel_path: Optional[list[str]] = field(
        default=None, metadata={"help": "qrel file(s) whose documents are hard negatives (e.g. mined ones); "
                                        "without it negatives are drawn at random from the corpus, distinct "
                                        "and never a positive (so --short_negatives does not apply)"})
    min_positive_score: float = field(default=1.0, metadata={"help": "judgments >= this are positives"})
    teacher_scores: Optional[list[str]] = field(
        default=None, metadata={"help": "teacher_scores.tsv / filtered_teacher_scores.tsv from densekit rescore: "
                                        "groups are labelled with these scores, for --loss kl or margin_mse (with "
                                        "--passage_selection_strategy random each epoch sees other passages)"})

    def __post_init__(self) -> None:
        # a YAML file or a Python caller may give one folder / split as a plain string
        if isinstance(self.dataset, str):
            self.dataset = [self.dataset]
        if isinstance(self.split, str):
            self.split = [self.split]
        from densekit.data.datasets import MultiSourceDataset

        if self.multi_dataset_sampling not in MultiSourceDataset.SAMPLINGS:
            raise ConfigError(f"--multi_dataset_sampling {self.multi_dataset_sampling!r} is unknown; use one of "
                              f"{', '.join(MultiSourceDataset.SAMPLINGS)}.")
        count = len(self.dataset or ())
        if len(self.split) != 1 and len(self.split) != count:
            raise ConfigError(f"--split gives {len(self.split)} splits for {count} --dataset folder(s); give one "
                              "split for all or one per dataset.")
        if self.teacher_scores and (self.negative_qrel_path or count > 1 or self.positives_per_query > 1):
            raise ConfigError("--teacher_scores labels each group with the teacher's scores: it replaces "
                              "--negative_qrel_path and --positives_per_query, and reads one dataset.")
        if count > 1 and (self.corpus_path or self.query_path or self.qrel_path or self.negative_qrel_path):
            raise ConfigError("--corpus_path/--query_path/--qrel_path/--negative_qrel_path describe one dataset; "
                              "with several --dataset folders use the folders alone.")

    def per_dataset(self) -> list["TrainDataArguments"]:
        """One TrainDataArguments per dataset folder (one for explicit files), each with its split."""
        folders = self.dataset or [None]
        splits = self.split * len(folders) if len(self.split) == 1 else self.split
        return [dataclasses.replace(self, dataset=None if folder is None else [folder], split=[split])
                for folder, split in zip(folders, splits)]


def qrel_configs_from(args: TrainDataArguments) -> tuple[MaterializedQRelConfig, Optional[MaterializedQRelConfig]]:
    """Positive and (optional) hard-negative configs of ONE dataset, from a BEIR folder and/or explicit files."""
    if len(args.dataset or ()) > 1:
        raise ConfigError("qrel_configs_from reads one dataset; call it on each of args.per_dataset().")
    single = argparse.Namespace(**{f.name: getattr(args, f.name) for f in dataclasses.fields(args)})
    single.dataset = args.dataset[0] if args.dataset else None
    single.split = args.split[0]
    positives = dataclasses.replace(qrel_config_from(single), min_score=args.min_positive_score)
    negatives = None
    if args.negative_qrel_path:
        negatives = MaterializedQRelConfig(qrel_path=args.negative_qrel_path, corpus_path=positives.corpus_path,
                                           query_path=positives.query_path, score_transform=0)
    return positives, negatives


def train(model_args: ModelArguments, data_args: DataArguments, train_args: RetrievalTrainingArguments,
          train_data_args: TrainDataArguments, dev_args: Optional[DevEvaluationArguments] = None,
          command: Optional[str] = None) -> dict[str, float]:
    """Build model, dataset, collator and trainer from parsed options, train, save; returns train metrics.

    With ``dev_args.eval_dataset`` the dev split is ranked in full at each evaluation (eval_nDCG@10 ... for
    ``--metric_for_best_model``, ``--load_best_model_at_end``, early stopping). The output folder records
    what was read (``training_provenance.json``: data files' SHA-256, the negative pool's fingerprint, the
    command), which the model card of an exported model shows.
    """
    from transformers import AutoTokenizer

    from densekit.data.qrels import as_path_list
    from densekit.model_card import write_training_provenance
    from densekit.training.retrieval_eval import dev_evaluation_callbacks

    from densekit.data.collator import RetrievalCollator
    from densekit.data.datasets import BinaryDataset, MultiSourceDataset
    from densekit.modeling.retriever import BiEncoderRetriever
    from densekit.training.trainer import RetrievalTrainer

    train_args.check_group_size(data_args.group_size)
    if train_data_args.teacher_scores:
        from densekit.modeling.losses import RetrievalLoss

        if RetrievalLoss.find(model_args.loss).__name__ not in ("KLDistillationLoss", "MarginMSELoss"):
            raise ConfigError(f"--teacher_scores gives graded targets; train them with --loss kl or --loss "
                              f"margin_mse, not {model_args.loss!r}.")
    configs = [qrel_configs_from(one) for one in train_data_args.per_dataset()]
    model = BiEncoderRetriever.from_model_args(args=model_args)
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_path,
                                              trust_remote_code=model_args.trust_remote_code)
    formatting = dict(format_query=model.format_query, format_passage=model.format_passage,
                      store_cache_dir=train_data_args.store_cache_dir)
    if train_data_args.teacher_scores:
        # distillation: each group is passages with the teacher's scores as labels (KL / margin-MSE targets)
        from densekit.data.datasets import MultiLevelDataset

        positives = configs[0][0]
        teacher = MaterializedQRelConfig(qrel_path=train_data_args.teacher_scores, corpus_path=positives.corpus_path,
                                         query_path=positives.query_path)
        datasets = [MultiLevelDataset(data_args=data_args, qrel_config=teacher, **formatting)]
    else:
        # judged (e.g. mined) negatives, or, without them (a BEIR train split), random corpus negatives
        datasets = [BinaryDataset(data_args=data_args, positive_configs=positives, negative_configs=negatives,
                                  num_positives=train_data_args.positives_per_query, **formatting)
                    for positives, negatives in configs]
    dataset = datasets[0] if len(datasets) == 1 else \
        MultiSourceDataset(datasets, sampling=train_data_args.multi_dataset_sampling)
    dev_args = dev_args or DevEvaluationArguments()
    dev_config = qrel_config_from(DatasetArguments(dataset=dev_args.eval_dataset, split=dev_args.eval_split)) \
        if dev_args.eval_dataset else None
    dev_dataset, callbacks = dev_evaluation_callbacks(dev_args, train_args, dev_config, data_args, **formatting)
    collator = RetrievalCollator(data_args=data_args, tokenizer=tokenizer, append_eos=model.append_eos_token,
                                 model_max_length=model.max_length)
    trainer = RetrievalTrainer(args=train_args, model=model, tokenizer=tokenizer, data_collator=collator,
                               train_dataset=dataset, eval_dataset=dev_dataset, callbacks=callbacks)
    if trainer.is_world_process_zero():
        files = list(dict.fromkeys(path for positives, _ in configs for path in (
            *as_path_list(positives.corpus_path), *as_path_list(positives.query_path),
            *as_path_list(positives.qrel_path))))
        write_training_provenance(train_args.output_dir, data_files=files, command=command,
                                  base_model=model_args.model_name_or_path,
                                  negative_files=(train_data_args.negative_qrel_path or [])
                                  + (train_data_args.teacher_scores or []))
    result = trainer.train(resume_from_checkpoint=train_args.resume_from_checkpoint)
    trainer.save_model()
    if trainer.is_world_process_zero():
        from densekit.training.report import write_training_report

        settings = {"query_max_len": collator.query_max_len, "passage_max_len": collator.passage_max_len,
                    "append_eos": collator.append_eos, **model.encoder.densekit_config(),
                    "loss": model_args.loss, "temperature": model_args.temperature,
                    "group_size": data_args.group_size, "positives_per_query": train_data_args.positives_per_query,
                    "batch_size": train_args.per_device_train_batch_size, "learning_rate": train_args.learning_rate,
                    "epochs": train_args.num_train_epochs, "grad_cache": train_args.grad_cache,
                    "mask_false_negatives": train_args.mask_false_negatives, "seed": train_args.seed,
                    "command": command}
        write_training_report(train_args.output_dir, log_history=trainer.state.log_history, settings=settings,
                              metrics=dict(result.metrics))
        print(f"densekit train: {len(dataset)} queries, {result.global_step} steps, "
              f"loss {result.training_loss:.4f}; model saved to {train_args.output_dir}")
    return dict(result.metrics)


def run(argv) -> int:
    model_args, data_args, train_args, train_data_args, dev_args = parse_dataclasses(
        (ModelArguments, DataArguments, RetrievalTrainingArguments, TrainDataArguments, DevEvaluationArguments),
        argv, prog="densekit train")
    train(model_args, data_args, train_args, train_data_args, dev_args, command=shlex.join(["densekit", "train", *argv]))
    return 0
