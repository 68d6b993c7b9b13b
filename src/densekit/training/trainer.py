"""RetrievalTrainer: ``transformers.Trainer`` for a :class:`~densekit.modeling.retriever.BiEncoderRetriever`.

Used exactly like ``transformers.Trainer`` (the seed's ``RetrievalTrainer(args=..., model=...,
tokenizer=..., data_collator=..., train_dataset=...).train()``). What it changes, and why:

* **loss**: the retriever computes it (its ``forward`` returns ``RetrieverOutput.loss``), with negatives
  gathered from every device and multiplied by ``world_size`` so DDP's gradient average is the
  full-batch gradient; the loss *reported* is divided back, so it stays the effective loss.
* **gradient cache** (``args.grad_cache``): ``training_step`` runs
  :func:`densekit.modeling.grad_cache.grad_cache_step` with the retriever's own encode and loss
  functions, so the batch can be far larger than memory; gradient accumulation, bf16/fp16 autocast and
  fp16 loss scaling behave as in a normal step.
* **dropout**: BERT-family encoders get seeded dropout (:mod:`densekit.modeling.seeded_dropout`): masks
  from a fused hash instead of torch's generator, cheaper in every training step, and per row in
  gradient-cached steps, whose chunks then run on all CPU cores at once. Outside training, and with
  gradient checkpointing, the model's dropout is torch's as before.
* **eval**: ``prediction_step`` returns ``(loss, scores [B, G], label [B, G])``: each query scored
  against its own group, what :class:`~densekit.training.ir_metrics.IRMetrics` ranks.
* **saving**: checkpoints are written by ``BiEncoderRetriever.save_pretrained`` (safetensors, the
  Hugging Face layout, ``densekit_config.json``, the tokenizer), plus the sentence-transformers files
  when the pooling allows, so both ``BiEncoderRetriever.from_pretrained(dir)`` and
  ``SentenceTransformer(dir)`` load the trained model.
* **epochs**: a dataset with ``set_epoch`` is told the epoch when each one starts, so seeded sampling
  (negatives, random group selection) changes from epoch to epoch and is reproducible.
* ``tokenizer=`` is accepted and passed on as ``processing_class`` (transformers 5 renamed it).
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Optional

import torch
from transformers import Trainer, TrainerCallback

from densekit import distributed
from densekit.errors import ConfigError, InputError
from densekit.modeling.grad_cache import grad_cache_step
from densekit.modeling.retriever import BiEncoderRetriever
from densekit.modeling.seeded_dropout import is_seedable, make_seedable, seeded_stream
from densekit.training.training_args import RetrievalTrainingArguments

logger = logging.getLogger(__name__)

MODEL_INPUTS = ("query", "passage", "label")
TRAINING_ARGS_NAME = "training_args.bin"


class SetEpochCallback(TrainerCallback):
    """Call ``dataset.set_epoch(epoch)`` at the start of every epoch, for datasets that have it."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):  # noqa: D401 - Trainer hook
        dataset = self.trainer.train_dataset
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(int((state.epoch or 0) + 1e-6))
        return control


class RetrievalTrainer(Trainer):
    """``transformers.Trainer`` that trains, evaluates and saves a ``BiEncoderRetriever``.

    Takes every ``Trainer`` argument; ``tokenizer`` is an alias of ``processing_class``.
    """

    def __init__(self, *args: Any, tokenizer: Any = None, **kwargs: Any) -> None:
        if tokenizer is not None:
            if kwargs.get("processing_class") is not None:
                raise ConfigError("give either tokenizer= or processing_class=, not both.")
            kwargs["processing_class"] = tokenizer
        super().__init__(*args, **kwargs)
        if isinstance(self.args, RetrievalTrainingArguments):
            self.args.apply_logging_mode()
            group_size = _group_size(self.data_collator, self.train_dataset)
            if group_size is not None:
                self.args.check_group_size(group_size)
        elif getattr(self.args, "grad_cache", False):
            raise ConfigError("grad_cache needs RetrievalTrainingArguments.")
        self.add_callback(SetEpochCallback(self))
        if isinstance(self.model, torch.nn.Module):
            make_seedable(self.model)  # seeded dropout where the architecture allows; unchanged outside blocks

    # ---------------------------------------------------------------------------------------- training
    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        """The retriever's own loss (scaled by world size under torch.distributed, see module doc)."""
        with self._training_dropout(model):
            outputs = model(**_model_inputs(inputs))
        if outputs.loss is None:
            raise ConfigError("the model returned no loss: the batch needs both 'query' and 'passage' "
                              "(RetrievalCollator output) and ModelArguments.loss must name a loss.")
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def _training_dropout(self, model: torch.nn.Module) -> contextlib.AbstractContextManager:
        """Seeded dropout for a plain training forward (one fused pass, ~12x cheaper than torch's masks;
        the seed is drawn from torch's generator, so runs stay reproducible), where the model allows it."""
        if not model.training or not is_seedable(self.accelerator.unwrap_model(model)):
            return contextlib.nullcontext()
        return seeded_stream(int(torch.randint(0, 2**62, ())))

    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: Any = None) -> torch.Tensor:
        """One (micro-)batch: the usual step, or the gradient-cached one; returns the effective loss."""
        if getattr(self.args, "grad_cache", False):
            loss = self._grad_cache_training_step(model, inputs)
        else:
            loss = super().training_step(model, inputs, num_items_in_batch)
        return loss / distributed.world_size()

    def _grad_cache_training_step(self, model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        """Gradient-cached step: chunked encoding, loss on the whole batch, chunk-by-chunk backward.

        The chunk passes call the (possibly DDP-wrapped) ``model`` so DDP hooks and accelerate's
        autocast apply; the loss is the retriever's ``compute_loss`` (gather + world-size scale),
        divided by the number of accumulated micro-batches like the Trainer's own step.
        """
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        inputs = self._prepare_inputs(inputs)
        if "query" not in inputs or "passage" not in inputs:
            raise ConfigError("grad_cache training needs batches with 'query' and 'passage' (RetrievalCollator).")
        retriever = self.accelerator.unwrap_model(model)
        label = inputs.get("label")
        accumulation = getattr(self, "current_gradient_accumulation_steps", None) or \
            self.args.gradient_accumulation_steps

        def encode_query(chunk: dict) -> torch.Tensor:
            return model(query=chunk).query

        def encode_passage(chunk: dict) -> torch.Tensor:
            return model(passage=chunk).passage

        def loss_fn(query_reps: torch.Tensor, passage_reps: torch.Tensor) -> torch.Tensor:
            return retriever.compute_loss(query_reps, passage_reps, label) / accumulation

        autocast_dtype = torch.bfloat16 if self.args.bf16 else (torch.float16 if self.args.fp16 else None)
        loss = grad_cache_step(
            encode_query, dict(inputs["query"]), dict(inputs["passage"]), loss_fn,
            passage_encode_fn=encode_passage,
            query_chunk_size=self.args.query_chunk_size, passage_chunk_size=self.args.passage_chunk_size,
            model=model, scaler=getattr(self.accelerator, "scaler", None), autocast_dtype=autocast_dtype,
            workers=self.args.grad_cache_workers,
        )
        return loss.to(self.args.device)

    # -------------------------------------------------------------------------------------- evaluation
    def prediction_step(self, model: torch.nn.Module, inputs: dict[str, Any], prediction_loss_only: bool,
                        ignore_keys: Optional[list[str]] = None) -> tuple:
        """``(loss, scores [B, G], label [B, G])``: each query against its own group of passages.

        The loss is left out (``None``) for a batch where some query has no positive (a dev group of
        judged negatives only), which InfoNCE cannot score; the metrics are computed all the same.
        """
        inputs = self._prepare_inputs(_model_inputs(inputs))
        label = inputs.get("label")
        retriever = self.accelerator.unwrap_model(model)
        loss = None
        with torch.no_grad(), self.compute_loss_context_manager():
            try:
                outputs = model(**inputs)
                if outputs.loss is not None:
                    loss = outputs.loss.detach().float() / distributed.world_size()
            except InputError as err:  # no positive in a group: no loss, but still ranks
                logger.debug("eval loss skipped for a batch: %s", err)
                outputs = model(query=inputs.get("query"), passage=inputs.get("passage"))
        if prediction_loss_only:
            return loss, None, None
        if outputs.query is None or outputs.passage is None:
            raise ConfigError("evaluation batches need both 'query' and 'passage'.")
        scores = retriever.group_scores(outputs.query, outputs.passage).detach().float()
        return loss, scores, (label.detach() if label is not None else None)

    # ------------------------------------------------------------------------------------------ saving
    def _save(self, output_dir: Optional[str] = None, state_dict: Optional[dict] = None) -> None:
        """Write the retriever as densekit + Hugging Face checkpoint, and as a sentence-transformers folder."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        retriever = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if not isinstance(retriever, BiEncoderRetriever):
            return super()._save(output_dir, state_dict=state_dict)
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        tokenizer = self.processing_class or getattr(self.data_collator, "tokenizer", None)
        kwargs: dict[str, Any] = {}
        if state_dict is not None:  # deepspeed / FSDP gathered weights: the encoder's own keys
            prefix = "encoder.model."
            kwargs["state_dict"] = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        retriever.save_pretrained(output_dir, tokenizer=tokenizer, **kwargs)
        if not retriever.save_sentence_transformers_config(output_dir):
            logger.info("%s: no sentence-transformers files written (pooling %r or LoRA adapters); load it with "
                        "BiEncoderRetriever.from_pretrained.", output_dir, getattr(retriever.encoder, "pooling", None))
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))


def _model_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """Only the keys ``BiEncoderRetriever.forward`` takes (datasets may add ids and such)."""
    return {key: inputs[key] for key in MODEL_INPUTS if key in inputs}


def _group_size(collator: Any, dataset: Any) -> Optional[int]:
    """Passages per query, when the collator or the dataset says (for the passage chunk check)."""
    for owner in (dataset, collator):
        data_args = getattr(owner, "data_args", None)
        size = getattr(data_args, "group_size", None)
        if isinstance(size, int):
            return size
    return None
