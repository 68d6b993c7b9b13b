"""``densekit evaluate``: encode, search and score an encoder on a BEIR folder or explicit files."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from densekit.cli.arguments import parse_dataclasses
from densekit.data.data_args import DataArguments
from densekit.data.qrels import MaterializedQRelConfig
from densekit.errors import ConfigError, InputError
from densekit.evaluation.evaluation_args import EvaluationArguments
from densekit.modeling.model_args import ModelArguments


@dataclass
class DatasetArguments:
    """Where the evaluation data is: a BEIR folder and split, or explicit files (which win)."""

    dataset: Optional[str] = field(default=None, metadata={"help": "BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv"})
    split: str = field(default="test", metadata={"help": "qrels split inside the BEIR folder"})
    corpus_path: Optional[list[str]] = field(default=None, metadata={"help": "corpus file(s), overrides --dataset"})
    query_path: Optional[list[str]] = field(default=None, metadata={"help": "query file(s), overrides --dataset"})
    qrel_path: Optional[list[str]] = field(default=None, metadata={"help": "qrel file(s), overrides --dataset"})
    store_cache_dir: Optional[str] = field(default=None, metadata={"help": "keep Arrow copies of text files here"})


def beir_file(folder: Path, *names: str) -> Path:
    """The first of ``names`` (plain or .gz) that exists in ``folder``."""
    for name in names:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise InputError(f"no {' or '.join(names)} in this BEIR folder.", path=folder,
                     fix="point --dataset at a folder with corpus.jsonl, queries.jsonl and qrels/<split>.tsv, "
                         "or give --corpus_path/--query_path/--qrel_path.")


def qrel_config_from(args: DatasetArguments) -> MaterializedQRelConfig:
    """A MaterializedQRelConfig from a BEIR folder and/or explicit file options."""
    folder = Path(args.dataset) if args.dataset else None
    if folder is None and not (args.corpus_path and args.query_path and args.qrel_path):
        raise ConfigError("give --dataset BEIR_FOLDER, or all of --corpus_path, --query_path and --qrel_path.")
    if folder is not None and not folder.is_dir():
        raise InputError("dataset folder not found.", path=folder, fix="check the path given to --dataset.")
    return MaterializedQRelConfig(
        corpus_path=args.corpus_path or beir_file(folder, "corpus.jsonl"),
        query_path=args.query_path or beir_file(folder, "queries.jsonl"),
        qrel_path=args.qrel_path or beir_file(folder, f"qrels/{args.split}.tsv"),
    )


def build_evaluator(model_args: ModelArguments, data_args: DataArguments, eval_args: EvaluationArguments,
                    dataset_args: DatasetArguments):
    """Model, tokenizer, dataset and RetrievalEvaluator from parsed options (shared by evaluate and mine)."""
    from transformers import AutoTokenizer

    from densekit.data.collator import RetrievalCollator
    from densekit.data.datasets import MultiLevelDataset
    from densekit.evaluation.evaluator import RetrievalEvaluator
    from densekit.modeling.retriever import BiEncoderRetriever

    qrel_config = qrel_config_from(dataset_args)
    model = BiEncoderRetriever.from_model_args(args=model_args)
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path,
                                              trust_remote_code=model_args.trust_remote_code)
    dataset = MultiLevelDataset(data_args=data_args, qrel_config=qrel_config, format_query=model.format_query,
                                format_passage=model.format_passage, store_cache_dir=dataset_args.store_cache_dir)
    collator = RetrievalCollator(data_args=data_args, tokenizer=tokenizer, append_eos=model.append_eos_token)
    return RetrievalEvaluator(args=eval_args, model=model, tokenizer=tokenizer, data_collator=collator,
                              eval_dataset=dataset)


def evaluate(model_args: ModelArguments, data_args: DataArguments, eval_args: EvaluationArguments,
             dataset_args: DatasetArguments) -> dict[str, float]:
    """Build model, dataset and evaluator from parsed options and run the evaluation."""
    return build_evaluator(model_args, data_args, eval_args, dataset_args).evaluate()


def run(argv) -> int:
    model_args, data_args, eval_args, dataset_args = parse_dataclasses(
        (ModelArguments, DataArguments, EvaluationArguments, DatasetArguments), argv, prog="densekit evaluate")
    evaluate(model_args, data_args, eval_args, dataset_args)
    return 0
