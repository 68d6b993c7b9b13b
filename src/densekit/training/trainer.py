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
* **dropout**: on the CPU, BERT-family encoders get seeded dropout (:mod:`densekit.modeling.seeded_dropout`):
  masks from a fused hash instead of torch's generator, cheaper in every training step, and per row in
  gradient-cached steps, whose chunks then run on all CPU cores at once. This is decided at every step by
  where the parameters are (:func:`densekit.modeling.fast_inference.cpu_tricks_apply`): on a GPU the
  model keeps torch's dropout and fused SDPA attention, and the gradient cache replays torch's CPU and
  CUDA generator states instead. Outside training, and with gradient checkpointing, the model's dropout
  is torch's as before.
* **eval**: ``prediction_step`` returns ``(loss, scores [B, G], label [B, G])``: each query scored
  against its own group, what :class:`~densekit.training.ir_metrics.IRMetrics` ranks.
* **saving**: checkpoints are written by ``BiEncoderRetriever.save_pretrained`` (safetensors, the
  Hugging Face layout, ``densekit_config.json``, the tokenizer), plus the sentence-transformers files
  when the pooling allows, so both ``BiEncoderRetriever.from_pretrained(dir)`` and
  ``SentenceTransformer(dir)`` load the trained model.
* **resuming** (``train(resume_from_checkpoint=...)``): the retriever's weights are read back from the
  checkpoint folder by :meth:`BiEncoderRetriever.load_checkpoint_weights` (strict: a checkpoint of another
  model is a ConfigError, never a partial load); optimizer, scheduler, RNG states and the data position are
  restored by ``transformers.Trainer``, so the run continues as if it had not stopped. ``True`` (or the
  string ``"true"``, as the command line gives it) means the latest *complete* checkpoint in ``output_dir``:
  one killed while being written is skipped.
* **false negatives** (``mask_false_negatives``, on by default): the batch's passage rows, text hashes
  and each query's judged positive rows go to the loss, which leaves in-batch false negatives out of the
  softmax (:mod:`densekit.modeling.losses.false_negatives`), in the plain and the gradient-cached step.
* **batches** (``unique_passages_per_batch``, or a dataset with several ``sources``): a seeded
  :class:`~densekit.data.sampling.GroupBatchSampler` forms batches without a repeated passage and from
  one source each, the same for every rank's slice of the global batch; resuming replays its order.
* **epochs**: a dataset with ``set_epoch`` is told the epoch when each one starts, so seeded sampling
  (negatives, random group selection) changes from epoch to epoch and is reproducible.
* ``tokenizer=`` is accepted and passed on as ``processing_class`` (transformers 5 renamed it).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from typing import Any, Optional, Union

from functools import partial

import torch
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import seed_worker

from densekit import distributed
from densekit.data.sampling import GroupBatchSampler
from densekit.errors import ConfigError, InputError
from densekit.modeling.fast_inference import cpu_tricks_apply
from densekit.modeling.grad_cache import grad_cache_step
from densekit.modeling.retriever import BiEncoderRetriever
from densekit.modeling.seeded_dropout import make_seedable, restore_torch_dropout, seeded_stream
from densekit.training.training_args import RetrievalTrainingArguments

logger = logging.getLogger(__name__)

MODEL_INPUTS = ("query", "passage", "label")
#: Batch keys the loss compares passages by to leave in-batch false negatives out (``mask_false_negatives``).
FALSE_NEGATIVE_INPUTS = ("passage_row", "positive_rows", "passage_hash")
TRAINING_ARGS_NAME = "training_args.bin"
TRAINER_STATE_NAME = "trainer_state.json"  # transformers.Trainer writes it last into a checkpoint folder
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


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
        from densekit.training.retrieval_eval import put_retrieval_evaluation_first

        put_retrieval_evaluation_first(self.callback_handler)  # dev metrics in place before early stopping reads them
        if hasattr(self.data_collator, "bind_model") and isinstance(self.model, torch.nn.Module):
            # unset token budgets come from the model, as in evaluation (one encoding spec)
            self.data_collator.bind_model(self.model)

    # ---------------------------------------------------------------------------------------- training
    def train(self, resume_from_checkpoint: Union[str, bool, None] = None, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.train``; ``resume_from_checkpoint=True`` or ``"true"`` resumes from the latest complete
        checkpoint in ``output_dir`` (see the module doc), a folder resumes from that folder."""
        return super().train(self._checkpoint_to_resume(resume_from_checkpoint), *args, **kwargs)

    def _checkpoint_to_resume(self, value: Union[str, bool, None]) -> Optional[str]:
        """The folder to resume from, or None. The command line gives strings ("true", "false", a path)."""
        if isinstance(value, str) and value.lower() in ("true", "false") and not os.path.isdir(value):
            value = value.lower() == "true"
        if value is None or value is False:
            return None
        if value is True:
            return latest_checkpoint(self.args.output_dir)
        if not os.path.isdir(value):
            raise ConfigError(f"resume_from_checkpoint={value!r} is not a folder; give a checkpoint folder "
                              f"(output_dir/checkpoint-N) or true for the latest one in output_dir.")
        if not checkpoint_is_complete(value):
            raise ConfigError(f"checkpoint {value} is incomplete (no readable {TRAINER_STATE_NAME}: the run "
                              f"stopped while writing it); resume from an earlier checkpoint.")
        return str(value)

    def _uses_seeded_dropout(self, model: torch.nn.Module) -> bool:
        """Whether this step's dropout is seeded, preparing the model for what the answer is.

        Decided at every step by where the parameters are now (the Trainer moves the model after
        construction, and nothing stops a model from moving between steps): on the CPU the model is made
        seedable where its architecture allows; elsewhere torch's dropout and fused SDPA attention are put
        back (:func:`~densekit.modeling.seeded_dropout.restore_torch_dropout`), since the seeded masks are
        computed on the CPU.
        """
        retriever = self.accelerator.unwrap_model(model)
        if cpu_tricks_apply(retriever):
            return make_seedable(retriever)
        restore_torch_dropout(retriever)
        return False

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        """The retriever's own loss (scaled by world size under torch.distributed, see module doc)."""
        with self._training_dropout(model):
            outputs = model(**self._model_inputs(inputs))
        if outputs.loss is None:
            raise ConfigError("the model returned no loss: the batch needs both 'query' and 'passage' "
                              "(RetrievalCollator output) and ModelArguments.loss must name a loss.")
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def _training_dropout(self, model: torch.nn.Module) -> contextlib.AbstractContextManager:
        """Seeded dropout for a plain training forward (one fused pass, ~12x cheaper than torch's masks;
        the seed is drawn from torch's generator, so runs stay reproducible), where the model allows it."""
        if not model.training or not self._uses_seeded_dropout(model):
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
        self._uses_seeded_dropout(model)  # grad_cache_step then seeds rows, or replays torch's RNG states
        label = inputs.get("label")
        masking = {key: value for key, value in self._model_inputs(inputs).items() if key in FALSE_NEGATIVE_INPUTS}
        accumulation = getattr(self, "current_gradient_accumulation_steps", None) or \
            self.args.gradient_accumulation_steps

        def encode_query(chunk: dict) -> torch.Tensor:
            return model(query=chunk).query

        def encode_passage(chunk: dict) -> torch.Tensor:
            return model(passage=chunk).passage

        def loss_fn(query_reps: torch.Tensor, passage_reps: torch.Tensor) -> torch.Tensor:
            return retriever.compute_loss(query_reps, passage_reps, label, **masking) / accumulation

        autocast_dtype = torch.bfloat16 if self.args.bf16 else (torch.float16 if self.args.fp16 else None)
        loss = grad_cache_step(
            encode_query, dict(inputs["query"]), dict(inputs["passage"]), loss_fn,
            passage_encode_fn=encode_passage,
            query_chunk_size=self.args.query_chunk_size, passage_chunk_size=self.args.passage_chunk_size,
            model=model, scaler=getattr(self.accelerator, "scaler", None), autocast_dtype=autocast_dtype,
            workers=self.args.grad_cache_workers,
        )
        return loss.to(self.args.device)

    def _model_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The batch keys the retriever's ``forward`` takes: the model inputs, plus the passages' rows,
        hashes and the queries' positive rows unless ``mask_false_negatives`` is off."""
        keys = MODEL_INPUTS + (FALSE_NEGATIVE_INPUTS if getattr(self.args, "mask_false_negatives", True) else ())
        return {key: inputs[key] for key in keys if key in inputs}

    # ------------------------------------------------------------------------------------ data loading
    def get_train_dataloader(self) -> DataLoader:
        """``Trainer``'s loader, or one driven by :class:`~densekit.data.sampling.GroupBatchSampler` when
        batches must repeat no passage (``unique_passages_per_batch``) or come from one source each
        (a :class:`~densekit.data.datasets.MultiSourceDataset`)."""
        sampler = self._group_batch_sampler()
        if sampler is None:
            return super().get_train_dataloader()
        workers = self.args.dataloader_num_workers
        loader = DataLoader(
            self.train_dataset, batch_sampler=sampler, collate_fn=self.data_collator, num_workers=workers,
            pin_memory=self.args.dataloader_pin_memory,
            persistent_workers=self.args.dataloader_persistent_workers and workers > 0,
            prefetch_factor=self.args.dataloader_prefetch_factor if workers > 0 else None,
            worker_init_fn=partial(seed_worker, num_workers=workers, rank=self.args.process_index),
        )
        loader = self.accelerator.prepare(loader)
        # the sampler already yields this rank's slice of each global batch: accelerate's shard wrapper
        # must pass batches through, not deal them out again (as transformers does for its rank-aware sampler)
        wrapper = getattr(loader, "batch_sampler", None)
        if wrapper is not None and getattr(wrapper, "batch_sampler", None) is sampler:
            wrapper.num_processes, wrapper.process_index = 1, 0
        return loader

    def _group_batch_sampler(self) -> Optional[GroupBatchSampler]:
        """The batch sampler the training data needs, or None for the Trainer's own random sampler."""
        dataset = self.train_dataset
        several = len(getattr(dataset, "sources", None) or ()) > 1
        unique = bool(getattr(self.args, "unique_passages_per_batch", False))
        if dataset is None or not (several or unique):
            return None
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return GroupBatchSampler(dataset, self.args.per_device_train_batch_size, seed=seed, unique_passages=unique,
                                 num_replicas=self.args.world_size, rank=self.args.process_index,
                                 drop_last=self.args.dataloader_drop_last)

    # -------------------------------------------------------------------------------------- evaluation
    def prediction_step(self, model: torch.nn.Module, inputs: dict[str, Any], prediction_loss_only: bool,
                        ignore_keys: Optional[list[str]] = None) -> tuple:
        """``(loss, scores [B, G], labels)``: each query against its own group of passages.

        ``labels`` is ``label [B, G]``, or ``(label, passage_row [B, G])`` when the batch carries the
        passages' corpus rows, so :class:`IRMetrics` tells a repeated document from two tied ones. The loss is left out (``None``) for a batch where some query has no positive (a dev group of
        judged negatives only), which InfoNCE cannot score; the metrics are computed all the same.
        """
        inputs = self._prepare_inputs(inputs)
        rows = inputs.get("passage_row")
        inputs = self._model_inputs(inputs)
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
        labels = label.detach() if label is not None else None
        if labels is not None and rows is not None:
            labels = (labels, rows)
        return loss, scores, labels

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
            logger.info("%s: no sentence-transformers files written (pooling %r, LoRA adapters or untied towers); "
                        "load it with BiEncoderRetriever.from_pretrained.", output_dir,
                        getattr(retriever.encoder, "pooling", None))
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    # --------------------------------------------------------------------------------------- resuming
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Optional[torch.nn.Module] = None) -> None:
        """Resume: read the retriever's weights back from a densekit checkpoint folder.

        Why not transformers' own: it loads ``model.safetensors`` into the retriever's ``state_dict`` names
        non-strictly, but :meth:`_save` writes the encoder model's names, so nothing would match and
        training would go on from the base weights with the checkpoint's optimizer state.
        DeepSpeed / FSDP checkpoints keep their own loaders (strict by :meth:`_issue_warnings_after_load`).
        """
        retriever = self._retriever(model)
        if retriever is None or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        logger.info("Loading the retriever's weights from %s.", resume_from_checkpoint)
        retriever.load_checkpoint_weights(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        """``load_best_model_at_end``: the best checkpoint's weights, read as :meth:`_load_from_checkpoint` does."""
        retriever = self._retriever(None)
        if retriever is None or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_best_model()
        logger.info("Loading the best model from %s (score: %s).", self.state.best_model_checkpoint,
                    self.state.best_metric)
        retriever.load_checkpoint_weights(self.state.best_model_checkpoint)

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        """Loaders left to transformers (DeepSpeed, FSDP): for a retriever, a key that does not match is an
        error, not a warning (and a BiEncoderRetriever has no ``_keys_to_ignore_on_save`` to consult)."""
        if self._retriever(None) is None:
            return super()._issue_warnings_after_load(load_result)
        if load_result.missing_keys or load_result.unexpected_keys:
            raise ConfigError(f"the checkpoint does not match the model: missing {load_result.missing_keys[:5]}, "
                              f"unexpected {load_result.unexpected_keys[:5]}; resume from a checkpoint of the "
                              "same model.")

    def _retriever(self, model: Optional[torch.nn.Module]) -> Optional[BiEncoderRetriever]:
        """The BiEncoderRetriever inside ``model`` (default: the trainer's), or None for another model."""
        unwrapped = self.accelerator.unwrap_model(model if model is not None else self.model)
        return unwrapped if isinstance(unwrapped, BiEncoderRetriever) else None


def checkpoint_is_complete(folder: str) -> bool:
    """Whether ``folder`` is a whole checkpoint: transformers writes ``trainer_state.json`` last, so a
    folder with a readable one was not interrupted while being written (checkpoints are not atomic)."""
    try:
        with open(os.path.join(folder, TRAINER_STATE_NAME), encoding="utf-8") as handle:
            json.load(handle)
    except (OSError, ValueError):
        return False
    return True


def latest_checkpoint(output_dir: str) -> str:
    """The complete ``checkpoint-N`` folder of ``output_dir`` with the highest N; ConfigError if none."""
    steps = {}
    if os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            match = CHECKPOINT_PATTERN.match(name)
            if match and os.path.isdir(os.path.join(output_dir, name)):
                steps[int(match.group(1))] = os.path.join(output_dir, name)
    for step in sorted(steps, reverse=True):
        if checkpoint_is_complete(steps[step]):
            return steps[step]
        logger.warning("%s is incomplete (the run stopped while writing it); skipping it.", steps[step])
    raise ConfigError(f"resume_from_checkpoint=true, but {output_dir} holds no complete checkpoint-N folder; "
                      "start without resume_from_checkpoint, or give a checkpoint folder.")


def _group_size(collator: Any, dataset: Any) -> Optional[int]:
    """Passages per query, when the collator or the dataset says (for the passage chunk check)."""
    for owner in (dataset, collator):
        data_args = getattr(owner, "data_args", None)
        size = getattr(data_args, "group_size", None)
        if isinstance(size, int):
            return size
    return None
