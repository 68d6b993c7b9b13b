"""Full-corpus dev evaluation during training, as metrics the Trainer can pick the best checkpoint by.

Why: the Trainer's own evaluation (``prediction_step`` + :class:`~densekit.training.ir_metrics.IRMetrics`)
only re-ranks each query's annotated group, an approximation that can rise while real retrieval gets
worse. :class:`RetrievalEvaluationCallback` runs :meth:`RetrievalEvaluator.evaluate` (every judged dev
query against the whole dev corpus, exact search) each time the Trainer evaluates, and writes the results
into the metrics dict of that evaluation as ``eval_nDCG@10``, ``eval_Recall@100`` ...

Why a callback on ``on_evaluate``: ``Trainer._evaluate`` returns the very dict it hands to
``on_evaluate``, and ``_determine_best_metric`` (``metric_for_best_model="nDCG@10"`` is looked up as
``eval_nDCG@10``), ``save_strategy="best"``, ``load_best_model_at_end`` and ``EarlyStoppingCallback`` all
read that dict afterwards. So nothing in the Trainer has to change. Two consequences:

* the callback must run before ``EarlyStoppingCallback`` (callbacks run in list order): list it first, or
  call :func:`put_retrieval_evaluation_first` on the trainer's ``callback_handler``;
* the Trainer logged the evaluation before ``on_evaluate``; the callback adds its values to that entry of
  ``state.log_history`` (so ``trainer_state.json`` has them) and logs one line itself.

For ``densekit train``, :class:`DevEvaluationArguments` (``--eval_dataset``, ``--early_stopping_patience`` ...)
and :func:`dev_evaluation_callbacks` build the dev dataset and the callbacks, in the right order.

Vectors are never stale: the evaluator's cache keys include the weights at the moment of use, and the
evaluator this callback builds has no cache at all (each evaluation sees new weights; cached entries would
only fill the disk). The evaluator restores the model's train mode and device after each call.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from transformers import EarlyStoppingCallback, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from densekit.data.data_args import DataArguments
from densekit.data.datasets import MultiLevelDataset
from densekit.data.qrels import MaterializedQRelConfig
from densekit.errors import ConfigError
from densekit.evaluation.evaluation_args import EvaluationArguments
from densekit.evaluation.evaluator import RetrievalEvaluator
from densekit.evaluation.metrics import parse_measures

logger = logging.getLogger(__name__)

RESULTS_FOLDER = "retrieval_eval"  # under the training output_dir: step-N/{run.trec,metrics.json,report.md}


class RetrievalEvaluationCallback(TrainerCallback):
    """Add full-corpus retrieval metrics to every Trainer evaluation.

    Args:
        evaluator_or_dataset: a :class:`MultiLevelDataset` (the dev split: judged queries and the corpus
            to search), or a ready :class:`RetrievalEvaluator` whose model is the one being trained.
        tokenizer: for a dataset; default: the trainer's ``processing_class``.
        measures: for a dataset; default: EvaluationArguments' defaults. The measure named by
            ``metric_for_best_model`` is always added.
        search_topk: documents retrieved per query (for a dataset; default 100: enough for Recall@100).
        metric_key_prefix: the prefix of the keys (``eval`` as in ``Trainer.evaluate``).

    With a dataset, results of each evaluation are written to ``output_dir/retrieval_eval/step-N/``.
    ``history`` keeps ``(global_step, metrics)`` of every evaluation of this run.
    """

    def __init__(self, evaluator_or_dataset: Union[RetrievalEvaluator, MultiLevelDataset], *,
                 tokenizer: Any = None, measures: Optional[list[str]] = None, search_topk: int = 100,
                 metric_key_prefix: str = "eval") -> None:
        if isinstance(evaluator_or_dataset, RetrievalEvaluator):
            if not evaluator_or_dataset.args.broadcast_output:
                raise ConfigError("the evaluator has broadcast_output=False; every process needs the dev metrics "
                                  "to agree on the best checkpoint and on early stopping. Set it to True.")
            self.evaluator: Optional[RetrievalEvaluator] = evaluator_or_dataset
            self.dataset = evaluator_or_dataset.eval_dataset
            if self.dataset is None:
                raise ConfigError("the RetrievalEvaluator given has no eval_dataset; pass the dev "
                                  "MultiLevelDataset to it (eval_dataset=...) or give the dataset here.")
        elif isinstance(evaluator_or_dataset, MultiLevelDataset):
            self.evaluator = None
            self.dataset = evaluator_or_dataset
        else:
            raise ConfigError(f"RetrievalEvaluationCallback needs a MultiLevelDataset (dev split) or a "
                              f"RetrievalEvaluator, got {type(evaluator_or_dataset).__name__}: full-corpus "
                              "evaluation ranks the whole corpus for every judged query.")
        if measures is not None:
            parse_measures(measures)  # an unknown name fails now, not at the first evaluation
        if search_topk < 1:
            raise ConfigError(f"search_topk must be >= 1, got {search_topk}.")
        self.tokenizer = tokenizer
        self.measures = list(measures) if measures is not None else None
        self.search_topk = search_topk
        self.prefix = metric_key_prefix
        self.history: list[tuple[int, dict[str, float]]] = []
        self._built: Optional[RetrievalEvaluator] = None

    # ------------------------------------------------------------------------------------- hooks
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> TrainerControl:
        """Refuse, before the first step, a ``metric_for_best_model`` measure the evaluator does not compute."""
        measure = best_metric_measure(args)
        if measure is not None and self.evaluator is not None:
            computed = {m.name for m in parse_measures(self.evaluator.args.measures)}
            if measure not in computed:
                raise ConfigError(f"metric_for_best_model={args.metric_for_best_model!r} is {measure}, which the "
                                  f"evaluator does not compute ({', '.join(sorted(computed))}); add it to its "
                                  "EvaluationArguments.measures.")
        return control

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    metrics: Optional[dict[str, float]] = None, model: Optional[torch.nn.Module] = None,
                    processing_class: Any = None, **kwargs: Any) -> TrainerControl:
        """Run the full-corpus evaluation and put its values into ``metrics`` (read by the Trainer next)."""
        if metrics is None:
            return control
        evaluator = self._evaluator_for(args, state, model, processing_class)
        scores = evaluator.evaluate(self.dataset)
        added = {f"{self.prefix}_{name}": float(value) for name, value in scores.items()}
        alias = _best_metric_alias(args, scores)  # e.g. "ndcg@10" spelled otherwise than "nDCG@10"
        if alias is not None:
            added[alias[0]] = alias[1]
        metrics.update(added)
        _add_to_log_history(state, added, self.prefix)
        self.history.append((state.global_step, dict(scores)))
        if state.is_world_process_zero:
            shown = ", ".join(f"{name} {value:.4f}" for name, value in scores.items())
            logger.info("step %d: full-corpus dev evaluation (%d queries, %d documents): %s", state.global_step,
                        len(self.dataset.query_ids), len(self.dataset.corpus), shown)
        return control

    # ---------------------------------------------------------------------------------- evaluator
    def _evaluator_for(self, args: TrainingArguments, state: TrainerState, model: Optional[torch.nn.Module],
                       processing_class: Any) -> RetrievalEvaluator:
        """The evaluator for this evaluation, made on first use from the trainer's model and settings."""
        if model is None:
            raise ConfigError("RetrievalEvaluationCallback got no model from the Trainer.")
        model = getattr(model, "module", model)  # DataParallel / DDP wrappers hold the retriever in .module
        if self.evaluator is not None:
            if self.evaluator.model is not model:
                raise ConfigError("the RetrievalEvaluator given to RetrievalEvaluationCallback holds another model "
                                  "than the one being trained; build it with the trainer's model, or give the "
                                  "dev MultiLevelDataset instead.")
            return self.evaluator
        if self._built is None or self._built.model is not model:
            tokenizer = self.tokenizer if self.tokenizer is not None else processing_class
            if tokenizer is None:
                raise ConfigError("RetrievalEvaluationCallback needs the tokenizer: pass tokenizer= to it or to "
                                  "the trainer.")
            self._built = RetrievalEvaluator(args=self._evaluation_args(args), model=model, tokenizer=tokenizer,
                                             eval_dataset=self.dataset)
        self._built.args.output_dir = os.path.join(args.output_dir, RESULTS_FOLDER, f"step-{state.global_step}")
        return self._built

    def _evaluation_args(self, args: TrainingArguments) -> EvaluationArguments:
        """Evaluation settings from the training ones: batch size, device choice, progress bars; no cache.

        Built inside a running Trainer, a ``TrainingArguments`` would reset accelerate's shared state (the
        Trainer's Accelerator then fails at the next step); ``use_configured_state`` makes it reuse that state.
        """
        from accelerate.state import PartialState

        measures = list(self.measures) if self.measures is not None else _default_measures()
        measure = best_metric_measure(args)
        if measure is not None and measure not in {m.name for m in parse_measures(measures)}:
            measures.append(measure)
        return EvaluationArguments(
            output_dir=os.path.join(args.output_dir, RESULTS_FOLDER),
            per_device_eval_batch_size=args.per_device_eval_batch_size,
            search_topk=self.search_topk, measures=measures, encoding_cache_dir=None, broadcast_output=True,
            report_to="none", disable_tqdm=args.disable_tqdm, use_cpu=args.use_cpu,
            accelerator_config={"use_configured_state": bool(PartialState._shared_state)},
        )


# ------------------------------------------------------------------------------------------ helpers
def _default_measures() -> list[str]:
    """EvaluationArguments' default measures (one list for ``densekit evaluate`` and dev evaluation)."""
    field = next(f for f in dataclasses.fields(EvaluationArguments) if f.name == "measures")
    return list(field.default_factory())


def best_metric_measure(args: TrainingArguments) -> Optional[str]:
    """The canonical name of the IR measure ``metric_for_best_model`` names (``eval_ndcg_cut.10`` ->
    ``nDCG@10``), or None when it names something else (``loss``) or nothing."""
    name = getattr(args, "metric_for_best_model", None)
    if not name:
        return None
    name = name[len("eval_"):] if name.startswith("eval_") else name
    try:
        measures = parse_measures(name)
    except ConfigError:
        return None
    return measures[0].name if len(measures) == 1 else None


def _best_metric_alias(args: TrainingArguments, scores: dict[str, float]) -> Optional[tuple[str, float]]:
    """The key the Trainer will look up for ``metric_for_best_model`` and its value, when it is one of ours."""
    measure = best_metric_measure(args)
    if measure is None or measure not in scores:
        return None
    key = args.metric_for_best_model
    return (key if key.startswith("eval_") else f"eval_{key}"), float(scores[measure])


def _add_to_log_history(state: TrainerState, added: dict[str, float], prefix: str) -> None:
    """Merge ``added`` into the log entry the Trainer just wrote for this evaluation (or append one)."""
    last = state.log_history[-1] if state.log_history else None
    if last is not None and last.get("step") == state.global_step and any(k.startswith(f"{prefix}_") for k in last):
        last.update(added)
    else:
        state.log_history.append({**added, "step": state.global_step})


def put_retrieval_evaluation_first(callback_handler: Any) -> None:
    """Move every :class:`RetrievalEvaluationCallback` of a Trainer's ``callback_handler`` to the front.

    Why: ``on_evaluate`` callbacks run in list order, and ``EarlyStoppingCallback`` listed earlier would read
    the metrics before the dev evaluation has added them (and silently not stop).
    """
    callbacks = callback_handler.callbacks
    ours = [cb for cb in callbacks if isinstance(cb, RetrievalEvaluationCallback)]
    callbacks[:] = ours + [cb for cb in callbacks if not isinstance(cb, RetrievalEvaluationCallback)]


# ------------------------------------------------------------------------------------ command line
@dataclass
class DevEvaluationArguments:
    """``densekit train`` options of the full-corpus dev evaluation and of early stopping.

    When and how often to evaluate and which checkpoint wins are the Trainer's own options
    (``--eval_strategy steps --eval_steps 500 --load_best_model_at_end --metric_for_best_model nDCG@10``).
    """

    eval_dataset: Optional[str] = field(default=None, metadata={
        "help": "BEIR folder of the dev set, ranked in full (every judged query against the whole corpus) at "
                "each evaluation; gives eval_nDCG@10 etc. for --metric_for_best_model"})
    eval_split: str = field(default="dev", metadata={"help": "qrels split of --eval_dataset"})
    eval_measures: Optional[list[str]] = field(default=None, metadata={
        "help": "measures of the dev evaluation (default: nDCG@10 Recall@100 MRR@10 MAP; "
                "--metric_for_best_model's measure is always added)"})
    eval_search_topk: int = field(default=100, metadata={"help": "documents retrieved per dev query"})
    early_stopping_patience: Optional[int] = field(default=None, metadata={
        "help": "stop after this many evaluations without improving --metric_for_best_model (needs "
                "--load_best_model_at_end)"})
    early_stopping_threshold: float = field(default=0.0, metadata={
        "help": "how much --metric_for_best_model must improve to count as an improvement"})


def dev_evaluation_callbacks(dev_args: DevEvaluationArguments, train_args: TrainingArguments,
                             qrel_config: Optional[MaterializedQRelConfig], data_args: DataArguments,
                             format_query: Any = None, format_passage: Any = None,
                             store_cache_dir: Optional[str] = None) -> tuple[Optional[MultiLevelDataset], list]:
    """The dev dataset and the callbacks (dev evaluation first, then early stopping) for a training run.

    ``qrel_config`` is the dev split's config (None without ``--eval_dataset``). Settings that cannot work
    together fail here, before the model trains: a dev set that is never evaluated, a best-model measure
    without a dev set (transformers' KeyError at the first evaluation otherwise), early stopping without a
    best model. The dataset is also the Trainer's ``eval_dataset`` (the Trainer requires one to evaluate).
    """
    measure = best_metric_measure(train_args)
    if qrel_config is None:
        if measure is not None:
            raise ConfigError(f"--metric_for_best_model {train_args.metric_for_best_model} is a retrieval measure: "
                              "give the dev set to rank with --eval_dataset BEIR_FOLDER (and --eval_split).")
        if dev_args.early_stopping_patience is not None:
            raise ConfigError("--early_stopping_patience needs an evaluation: give --eval_dataset and --eval_strategy.")
        return None, []
    if str(getattr(train_args.eval_strategy, "value", train_args.eval_strategy)) == "no":
        raise ConfigError("--eval_dataset is given but --eval_strategy is no: add --eval_strategy steps "
                          "--eval_steps N (or epoch) so the dev set is evaluated during training.")
    callbacks: list = []
    dataset = MultiLevelDataset(data_args=data_args, qrel_config=qrel_config, format_query=format_query,
                                format_passage=format_passage, store_cache_dir=store_cache_dir)
    callbacks.append(RetrievalEvaluationCallback(dataset, measures=dev_args.eval_measures,
                                                 search_topk=dev_args.eval_search_topk))
    if dev_args.early_stopping_patience is not None:
        if dev_args.early_stopping_patience < 1:
            raise ConfigError(f"--early_stopping_patience must be >= 1, got {dev_args.early_stopping_patience}.")
        if not train_args.load_best_model_at_end or not train_args.metric_for_best_model:
            raise ConfigError("--early_stopping_patience needs --load_best_model_at_end true and "
                              "--metric_for_best_model (e.g. nDCG@10).")
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=dev_args.early_stopping_patience,
                                               early_stopping_threshold=dev_args.early_stopping_threshold))
    return dataset, callbacks
