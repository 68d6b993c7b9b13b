"""RetrievalTrainingArguments: ``transformers.TrainingArguments`` plus what retrieval training adds.

Everything of ``TrainingArguments`` (learning rate, save frequency, ``--bf16`` ...) works as usual. Added:
which ranks log (``trove_logging_mode``, Trove's name), in-batch false-negative masking
(``mask_false_negatives``, on by default), batches without a repeated passage
(``unique_passages_per_batch``) and the gradient cache (GC-DPR's ``--grad_cache``,
``--q_chunk_size``, ``--ctx_chunk_size``, here ``query_chunk_size`` / ``passage_chunk_size``). Two
defaults change because retrieval batches are dicts of tokenized queries and passages:
``remove_unused_columns=False`` (the Trainer would otherwise drop dataset columns the model's ``forward``
does not name) and ``report_to="none"`` (no tracker unless asked). Settings are checked once, here, so a
chunk larger than the batch fails at start-up, not after the first epoch's data loading.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Literal, Optional, get_args

import torch
from transformers import TrainingArguments

from densekit.errors import ConfigError

LoggingMode = Literal["local_main_process", "main_process", "all"]
LOGGING_MODES: tuple[str, ...] = get_args(LoggingMode)


@dataclass
class RetrievalTrainingArguments(TrainingArguments):
    """``TrainingArguments`` for bi-encoder training.

    Example::

        RetrievalTrainingArguments(output_dir="./my_model", learning_rate=1e-5,
                                   per_device_train_batch_size=512, grad_cache=True,
                                   query_chunk_size=64, passage_chunk_size=32)
    """

    resume_from_checkpoint: Optional[str] = field(
        default=None,
        metadata={"help": "A checkpoint folder (output_dir/checkpoint-N) to continue from, or true for the latest "
                          "complete checkpoint in output_dir."},
    )
    trove_logging_mode: LoggingMode = field(
        default="local_main_process",
        metadata={"help": "Which processes print densekit's logs: local_main_process (one per node), "
                          "main_process (rank 0 only) or all."},
    )
    grad_cache: bool = field(
        default=False,
        metadata={"help": "Gradient cache: encode the batch in chunks and back-propagate chunk by chunk, so the "
                          "batch (and its in-batch negatives) can be far larger than memory allows."},
    )
    query_chunk_size: Optional[int] = field(
        default=None, metadata={"help": "Queries per chunk with --grad_cache (default: the whole batch)."}
    )
    passage_chunk_size: Optional[int] = field(
        default=None, metadata={"help": "Passages per chunk with --grad_cache (default: the whole batch)."}
    )
    grad_cache_workers: Optional[int] = field(
        default=None,
        metadata={"help": "CPU option. Parts each --grad_cache chunk is split into and encoded at once, one CPU "
                          "core each (models on the CPU only, BERT family, without DDP; needs seeded dropout, set "
                          "up automatically on the CPU). On a GPU chunks run one after another with torch's "
                          "dropout, and a value above 1 is an error. Default: one per torch thread (parts of >= 8 "
                          "rows) where possible, else 1. Memory stays one chunk, plus one parameter-sized "
                          "gradient sum per worker."},
    )
    mask_false_negatives: bool = field(
        default=True,
        metadata={"help": "Leave in-batch false negatives out of each query's softmax (InfoNCE and "
                          "multi_positive_infonce): passages judged positive for the query (by corpus row, from the "
                          "training qrels) and copies of its own positive (same row or same text) that sit in other "
                          "queries' groups. True negatives are never masked; false turns masking off."},
    )
    unique_passages_per_batch: bool = field(
        default=False,
        metadata={"help": "Form training batches (seeded by --data_seed/--seed and the epoch) in which no corpus "
                          "document appears in two queries' groups; a query whose documents collide waits for a "
                          "later batch. Under DDP this holds for the global batch of all devices."},
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: retrieval batches are dicts the model reads whole."}
    )
    report_to: None | str | list[str] = field(
        default="none", metadata={"help": "Trackers to report to (wandb, tensorboard ...); default none."}
    )

    def __post_init__(self) -> None:
        if self.trove_logging_mode not in LOGGING_MODES:
            raise ConfigError(f"trove_logging_mode={self.trove_logging_mode!r} is unknown; choose one of "
                              f"{', '.join(LOGGING_MODES)}.")
        if self.remove_unused_columns:
            raise ConfigError("remove_unused_columns=True would strip the query/passage/label columns the "
                              "retriever reads; leave it False.")
        self._check_schedule()
        for name in ("query_chunk_size", "passage_chunk_size", "grad_cache_workers"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value < 1):
                raise ConfigError(f"{name} must be a positive number of rows, got {value!r}.")
        if self.query_chunk_size is not None and self.query_chunk_size > self.per_device_train_batch_size:
            raise ConfigError(
                f"query_chunk_size={self.query_chunk_size} is larger than per_device_train_batch_size="
                f"{self.per_device_train_batch_size}; a chunk is a slice of the batch. Lower query_chunk_size "
                f"to at most {self.per_device_train_batch_size} or raise the batch size."
            )
        if (self.query_chunk_size or self.passage_chunk_size or self.grad_cache_workers) and not self.grad_cache:
            raise ConfigError("query_chunk_size/passage_chunk_size/grad_cache_workers only apply with "
                              "grad_cache=True; set grad_cache=True or drop them.")
        adapt_to_cpu(self)
        super().__post_init__()

    def _check_schedule(self) -> None:
        """Refuse a run that would train nothing or diverge at once, before the model loads.

        ``num_train_epochs=0`` (without ``max_steps``) otherwise ends at once with "loss 0.0000" and saves
        the untrained model as if trained; a negative learning rate is torch's traceback after the output
        folder was made; a batch size of 0 fails in the data loader.
        """
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        if not math.isfinite(self.learning_rate) or self.learning_rate < 0:
            raise ConfigError(f"learning_rate must be a number >= 0, got {self.learning_rate!r}.")
        if self.max_steps is None or self.max_steps <= 0:
            if not math.isfinite(self.num_train_epochs) or self.num_train_epochs <= 0:
                raise ConfigError(f"num_train_epochs={self.num_train_epochs!r} trains for no step; give "
                                  "num_train_epochs > 0, or max_steps > 0 (which then decides the length).")

    def check_group_size(self, group_size: int) -> None:
        """Refuse a passage chunk larger than the per-device passages (batch x group size)."""
        if self.grad_cache and self.passage_chunk_size is not None:
            passages = self.per_device_train_batch_size * group_size
            if self.passage_chunk_size > passages:
                raise ConfigError(
                    f"passage_chunk_size={self.passage_chunk_size} is larger than the {passages} passages of a "
                    f"batch (per_device_train_batch_size {self.per_device_train_batch_size} x group_size "
                    f"{group_size}); lower passage_chunk_size to at most {passages}."
                )

    def logs_here(self) -> bool:
        """Whether this process prints densekit's logs, by ``trove_logging_mode``."""
        if self.trove_logging_mode == "all":
            return True
        if self.trove_logging_mode == "main_process":
            return self.process_index == 0
        return self.local_process_index == 0

    def apply_logging_mode(self) -> None:
        """Silence densekit's logger (below WARNING) on processes that should not log."""
        logging.getLogger("densekit").setLevel(logging.INFO if self.logs_here() else logging.WARNING)


def adapt_to_cpu(args: TrainingArguments) -> None:
    """Before ``TrainingArguments.__post_init__``, on a machine without CUDA: no pinned memory (it only warns
    there), fp16 refused with what to do instead, and bf16 run as CPU autocast (transformers refuses ``--bf16``
    without a GPU unless ``use_cpu`` is set; AVX512-BF16/AMX CPUs train about 2x faster with it)."""
    if torch.cuda.is_available():
        return
    args.dataloader_pin_memory = False
    if args.fp16:
        raise ConfigError("fp16 mixed precision needs a CUDA GPU and none is visible; on CPU use "
                          "bf16=True (--bf16) or drop fp16.")
    if args.bf16 and not args.use_cpu:
        args.use_cpu = True
