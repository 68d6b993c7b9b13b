"""``densekit reader``: GC-DPR / DPR's extractive reader on a retriever's results JSON.

    densekit reader train --model_name_or_path MODEL --train_file train_results.json --output_dir reader \\
        [--gold_passages retriever/train.json] --sequence_length 350 --passages_per_question 24 \\
        [--dev_file dev_results.json --eval_top_docs 10 20 40 50]      # + any TrainingArguments (--fp16 ...)
    densekit reader predict --model_name_or_path reader --dev_file dev_results.json --output_dir preds \\
        --eval_top_docs 10 20 40 50 --passages_per_question_predict 50 --max_answer_length 10

GC-DPR's ``train_reader.py`` flags keep their names (``--sequence_length``, ``--passages_per_question``,
``--passages_per_question_predict``, ``--eval_top_docs``, ``--max_answer_length``, ``--dev_batch_size``); its
``--batch_size`` is ``--per_device_train_batch_size`` (questions per batch), its ``--model_file`` is
``--model_name_or_path``. Preprocessing (``preprocess_reader_data.py``) happens on the fly and is cached
(``--reader_cache_dir``, default ``<output_dir>/reader_cache``) in JSON keyed by input, tokenizer and settings.
"""
from __future__ import annotations

import json
import logging
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from densekit.cli.arguments import parse_dataclasses
from densekit.errors import ConfigError

logger = logging.getLogger(__name__)
DEFAULT_SEQUENCE_LENGTH = 350  # GC-DPR's reader setting


@dataclass
class ReaderModelArguments:
    """The reader model and how its inputs are built."""

    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "train: an encoder folder (a BERT, e.g. the bundled MiniLM) or a reader to "
                                        "continue; predict: a reader folder (densekit's or a transformers DPRReader)"})
    sequence_length: Optional[int] = field(
        default=None, metadata={"help": "tokens of [CLS] question [SEP] title [SEP] text (default: the reader's "
                                        f"training value, else {DEFAULT_SEQUENCE_LENGTH})"})
    max_answer_length: int = field(default=10, metadata={"help": "longest answer span, in tokens"})
    reader_cache_dir: Optional[str] = field(
        default=None, metadata={"help": "folder of preprocessed (tokenised) results, reused while valid "
                                        "(default: <output_dir>/reader_cache)"})
    max_questions: Optional[int] = field(default=None, metadata={"help": "use the first N questions of each file"})


@dataclass
class ReaderPredictArguments:
    """Where predictions are read from and how."""

    dev_file: Optional[str] = field(default=None, metadata={"help": "retriever results JSON to answer (and score)"})
    eval_top_docs: list[int] = field(default_factory=lambda: [10, 20, 40, 50],
                                     metadata={"help": "answer from the top k passages, for each k"})
    passages_per_question_predict: int = field(default=50, metadata={"help": "passages read per question"})
    dev_batch_size: int = field(default=32, metadata={"help": "sequences per forward pass when predicting"})


@dataclass
class ReaderTrainDataArguments:
    """Training data: results JSON and how each question's passages are chosen."""

    train_file: Optional[str] = field(default=None, metadata={"help": "retriever results JSON of the train questions"})
    gold_passages: Optional[str] = field(
        default=None, metadata={"help": "DPR retriever JSON (positive_ctxs) giving each question's gold passage: it "
                                        "becomes the positive instead of any retrieved passage with the answer"})
    passages_per_question: int = field(default=24, metadata={"help": "passages per question: 1 positive + negatives"})
    max_positives: int = field(default=20, metadata={"help": "positives kept per question (top-ranked first)"})
    max_negatives: int = field(default=50, metadata={"help": "negatives kept per question (top-ranked first)"})


@dataclass
class PredictOutputArguments:
    output_dir: Optional[str] = field(default=None, metadata={"help": "where predictions.json, metrics.json, "
                                                                        "report.md go"})
    device: Optional[str] = field(default=None, metadata={"help": "cpu, cuda, ... (default: cuda if available)"})


def _cache_dir(model_args: ReaderModelArguments, output_dir: str) -> str:
    return model_args.reader_cache_dir or str(Path(output_dir) / "reader_cache")


def _require_model(model_args: ReaderModelArguments) -> str:
    if not model_args.model_name_or_path:
        raise ConfigError("--model_name_or_path is required: a local model folder.")
    path = Path(model_args.model_name_or_path)
    if not (path / "config.json").is_file():
        raise ConfigError(f"--model_name_or_path {path}: no config.json there; give a local model folder.")
    return str(path)


def _saved_sequence_length(model_dir: str) -> Optional[int]:
    marker = Path(model_dir) / "densekit_reader.json"
    if marker.is_file():
        return json.loads(marker.read_text(encoding="utf-8")).get("sequence_length")
    return None


def _load(model_dir: str, seed: Optional[int] = None) -> tuple[Any, Any]:
    from transformers import AutoTokenizer

    from densekit.reader.model import ReaderModel
    from densekit.reader.preprocess import check_fast_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, use_fast=True)
    check_fast_tokenizer(tokenizer)
    return ReaderModel.from_pretrained(model_dir, seed=seed), tokenizer


def run_predict(model: Any, tokenizer: Any, model_args: ReaderModelArguments, predict_args: ReaderPredictArguments,
                output_dir: str, sequence_length: int, model_name: str, cache_dir: str) -> dict[str, Any]:
    """Preprocess (cached) ``--dev_file`` and write predictions and EM per k into ``output_dir``."""
    from densekit.reader.predict import predict, summary_line
    from densekit.reader.preprocess import PreprocessSettings, preprocess

    started = time.time()
    settings = PreprocessSettings(sequence_length=sequence_length, is_train=False,
                                  max_passages=predict_args.passages_per_question_predict,
                                  max_questions=model_args.max_questions)
    data, reused = preprocess(predict_args.dev_file, tokenizer, settings, cache_dir=cache_dir)
    metrics = predict(model, tokenizer, data, output_dir, top_docs=predict_args.eval_top_docs,
                      max_answer_length=model_args.max_answer_length, batch_size=predict_args.dev_batch_size,
                      passages_per_question_predict=predict_args.passages_per_question_predict,
                      info={"results_file": str(predict_args.dev_file), "model": model_name,
                            "preprocessed_cache_reused": reused})
    print(summary_line(metrics, time.time() - started) + f"; written to {output_dir}")
    return metrics


def train(model_args: ReaderModelArguments, train_args: Any, data_args: ReaderTrainDataArguments,
          predict_args: ReaderPredictArguments, command: Optional[str] = None) -> dict[str, Any]:
    """Preprocess (cached), train with :class:`~densekit.reader.training.ReaderTrainer`, save the reader in
    ``output_dir``, and with ``--dev_file`` predict into ``output_dir/predictions``. Returns train metrics
    (plus ``EM@k`` of the dev predictions)."""
    from densekit.reader.preprocess import PreprocessSettings, preprocess
    from densekit.reader.training import ReaderCollator, ReaderTrainDataset, ReaderTrainer, latest_checkpoint

    model_dir = _require_model(model_args)
    if not data_args.train_file:
        raise ConfigError("--train_file is required: the retriever results JSON of the training questions.")
    sequence_length = model_args.sequence_length or _saved_sequence_length(model_dir) or DEFAULT_SEQUENCE_LENGTH
    model, tokenizer = _load(model_dir, seed=train_args.seed)
    cache_dir = _cache_dir(model_args, train_args.output_dir)
    settings = PreprocessSettings(sequence_length=sequence_length, is_train=True,
                                  max_positives=data_args.max_positives, max_negatives=data_args.max_negatives,
                                  max_questions=model_args.max_questions)
    data, reused = preprocess(data_args.train_file, tokenizer, settings, cache_dir=cache_dir,
                              gold_path=data_args.gold_passages)
    if not data.questions:
        raise ConfigError(f"{data_args.train_file}: no question has a passage with a locatable answer span "
                          f"({data.stats}); nothing to train on.")
    dataset = ReaderTrainDataset(data, tokenizer, data_args.passages_per_question, seed=train_args.seed)
    collator = ReaderCollator(pad_token_id=tokenizer.pad_token_id or 0,
                              passages_per_question=data_args.passages_per_question)
    metadata = {"sequence_length": sequence_length, "passages_per_question": data_args.passages_per_question,
                "max_answer_length": model_args.max_answer_length, "base_model": model_dir,
                "train_file": str(data_args.train_file), "gold_passages": data_args.gold_passages,
                "train_questions": len(dataset), "command": command}
    trainer = ReaderTrainer(model=model, args=train_args, train_dataset=dataset, data_collator=collator,
                            processing_class=tokenizer, reader_metadata=metadata)
    resume = train_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() == "true":
        resume = latest_checkpoint(train_args.output_dir)
        if resume is None:
            raise ConfigError(f"--resume_from_checkpoint true: no checkpoint-N folder in {train_args.output_dir}.")
    elif isinstance(resume, str) and resume.lower() in ("false", ""):
        resume = None
    started = time.time()
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()
    metrics = dict(result.metrics)
    print(f"densekit reader train: {len(dataset)} questions ({data.stats.get('questions_without_positive', 0)} "
          f"without a positive left out; preprocessed data {'reused' if reused else 'built'}), "
          f"{result.global_step} steps, loss {result.training_loss:.4f}, {time.time() - started:.0f}s; "
          f"reader saved to {train_args.output_dir}")
    if predict_args.dev_file and trainer.is_world_process_zero():
        metrics.update(run_predict(model, tokenizer, model_args, predict_args,
                                   str(Path(train_args.output_dir) / "predictions"), sequence_length,
                                   train_args.output_dir, cache_dir))
    return metrics


def predict(model_args: ReaderModelArguments, predict_args: ReaderPredictArguments,
            out: PredictOutputArguments) -> dict[str, Any]:
    """Load a reader and answer ``--dev_file``; returns the metrics."""
    import torch

    model_dir = _require_model(model_args)
    if not predict_args.dev_file:
        raise ConfigError("--dev_file is required: the retriever results JSON to answer.")
    if not out.output_dir:
        raise ConfigError("--output_dir is required.")
    model, tokenizer = _load(model_dir)
    device = out.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    sequence_length = model_args.sequence_length or _saved_sequence_length(model_dir) or DEFAULT_SEQUENCE_LENGTH
    return run_predict(model, tokenizer, model_args, predict_args, out.output_dir, sequence_length, model_dir,
                       _cache_dir(model_args, out.output_dir))


USAGE = "usage: densekit reader {train,predict} [options]   (densekit reader train --help)"


def run(argv: Sequence[str]) -> int:
    from densekit.reader.training import ReaderTrainingArguments

    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    action, rest = argv[0], argv[1:]
    if action == "train":
        model_args, train_args, data_args, predict_args = parse_dataclasses(
            (ReaderModelArguments, ReaderTrainingArguments, ReaderTrainDataArguments, ReaderPredictArguments), rest,
            prog="densekit reader train")
        train(model_args, train_args, data_args, predict_args,
              command=shlex.join(["densekit", "reader", "train", *rest]))
        return 0
    if action == "predict":
        model_args, predict_args, out = parse_dataclasses(
            (ReaderModelArguments, ReaderPredictArguments, PredictOutputArguments), rest,
            prog="densekit reader predict")
        predict(model_args, predict_args, out)
        return 0
    raise ConfigError(f"unknown reader action {action!r}; {USAGE}")
