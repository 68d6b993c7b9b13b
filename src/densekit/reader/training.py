"""Reader training batches and the ``transformers.Trainer`` that runs DPR's reader objective.

Each training item is one question with ``passages_per_question`` sequences: a positive (drawn at random
among the question's positives, as DPR does in training) first, then negatives drawn at random among its
negatives. A question with fewer negatives gets padding passages, which the loss masks out. Why the Trainer:
mixed precision, gradient accumulation, checkpoints, ``--resume_from_checkpoint``, logging and schedules
come from it unchanged; this module adds only the batches, checkpoint saving in the reader's layout
(:meth:`ReaderModel.save_pretrained`, so every ``checkpoint-N`` also loads in ``transformers.DPRReader``) and
the matching strict reload on resume.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from transformers import Trainer, TrainingArguments

from densekit.errors import ConfigError
from densekit.reader.model import ReaderModel
from densekit.reader.preprocess import ReaderData, build_sequence
from densekit.training.training_args import adapt_to_cpu

logger = logging.getLogger(__name__)


@dataclass
class ReaderTrainingArguments(TrainingArguments):
    """``TrainingArguments`` with the reader's defaults: batches are built by the collator from whole
    questions (``remove_unused_columns=False``), no tracker unless asked (``report_to="none"``),
    ``--resume_from_checkpoint`` (a folder, or ``true`` for the latest checkpoint in ``output_dir``), and the
    retriever's CPU handling (:func:`densekit.training.training_args.adapt_to_cpu`: no pinned memory, bf16 as
    CPU autocast, fp16 refused)."""

    output_dir: str = field(default="./densekit_reader", metadata={"help": "Where checkpoints and the model go."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep False: batches are the collator's."})
    report_to: None | str | list[str] = field(
        default="none", metadata={"help": "Trackers to report to (wandb, tensorboard ...); default none."})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "Questions per batch (each with "
                                                                          "passages_per_question sequences)."})
    learning_rate: float = field(default=3e-5, metadata={"help": "Peak learning rate."})
    resume_from_checkpoint: Optional[str] = field(
        default=None, metadata={"help": "A checkpoint folder (output_dir/checkpoint-N) to continue from, or true for "
                                        "the latest checkpoint in output_dir."})

    def __post_init__(self) -> None:
        adapt_to_cpu(self)
        super().__post_init__()


class ReaderTrainDataset(torch.utils.data.Dataset):
    """One item per training question: ``passages_per_question`` sequences, the positive first."""

    def __init__(self, data: ReaderData, tokenizer: Any, passages_per_question: int, seed: int = 42) -> None:
        if passages_per_question < 1:
            raise ConfigError(f"--passages_per_question must be at least 1, got {passages_per_question}.")
        if not data.settings.is_train:
            raise ConfigError("ReaderTrainDataset needs data preprocessed for training (is_train=True).")
        self.data, self.tokenizer = data, tokenizer
        self.passages_per_question, self.seed = passages_per_question, seed
        self.sequence_length = data.settings.sequence_length
        self.draws = np.zeros(len(data.questions), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.data.questions)

    def __getitem__(self, index: int) -> dict[str, Any]:
        question = self.data.questions[index]
        # a fresh draw each time an item is read, reproducible for a given seed and read count
        rng = np.random.default_rng([self.seed, index, int(self.draws[index])])
        self.draws[index] += 1
        positive = question.positives[int(rng.integers(len(question.positives)))]
        count = min(len(question.negatives), self.passages_per_question - 1)
        negatives = [question.negatives[i] for i in rng.permutation(len(question.negatives))[:count]]
        sequences, positive_start = [], 0
        for j, ref in enumerate([positive, *negatives]):
            ids, text_start, _ = build_sequence(self.tokenizer, question.question_ids, self.data.passages[ref.passage],
                                                self.sequence_length)
            sequences.append(ids)
            if j == 0:
                positive_start = text_start
        return {"sequences": sequences, "spans": [(positive_start + s, positive_start + e) for s, e in positive.spans]}


@dataclass
class ReaderCollator:
    """Pads items to ``[questions, passages_per_question, longest sequence]`` tensors plus span positions."""

    pad_token_id: int
    passages_per_question: int

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        n, m = len(items), self.passages_per_question
        length = max(len(seq) for item in items for seq in item["sequences"])
        spans = max(len(item["spans"]) for item in items)
        input_ids = torch.full((n, m, length), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((n, m, length), dtype=torch.long)
        passage_mask = torch.zeros((n, m), dtype=torch.bool)
        starts = torch.zeros((n, spans), dtype=torch.long)
        ends = torch.zeros((n, spans), dtype=torch.long)
        span_mask = torch.zeros((n, spans), dtype=torch.bool)
        for i, item in enumerate(items):
            for j, seq in enumerate(item["sequences"]):
                input_ids[i, j, :len(seq)] = torch.tensor(seq)
                attention[i, j, :len(seq)] = 1
                passage_mask[i, j] = True
            for k, (s, e) in enumerate(item["spans"]):
                starts[i, k], ends[i, k], span_mask[i, k] = s, e, True
        attention[:, :, 0] = 1  # padding passages: one visible token, so attention never sees an all-masked row
        return {"input_ids": input_ids, "attention_mask": attention, "passage_mask": passage_mask,
                "start_positions": starts, "end_positions": ends, "span_mask": span_mask}


class ReaderTrainer(Trainer):
    """``Trainer`` whose checkpoints are reader folders (DPRReader layout for BERT) and reload strictly."""

    def __init__(self, *args: Any, reader_metadata: Optional[dict] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reader_metadata = reader_metadata or {}

    def _save(self, output_dir: Optional[str] = None, state_dict: Optional[dict] = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if not isinstance(model, ReaderModel):
            return super()._save(output_dir, state_dict=state_dict)
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        model.save_pretrained(output_dir, tokenizer=self.processing_class, **self.reader_metadata)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Optional[torch.nn.Module] = None) -> None:
        """Resume: the reader's weights, read strictly from the checkpoint folder (optimizer, scheduler and
        RNG states are restored by the Trainer as usual)."""
        target = model if model is not None else self.model
        target = self.accelerator.unwrap_model(target, keep_torch_compile=False)
        if not isinstance(target, ReaderModel):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        logger.info("Loading the reader's weights from %s.", resume_from_checkpoint)
        target.load_weights(resume_from_checkpoint)


def latest_checkpoint(output_dir: str) -> Optional[str]:
    """The newest ``checkpoint-N`` folder of ``output_dir`` (for ``--resume_from_checkpoint true``)."""
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
