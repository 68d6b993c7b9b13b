"""IRMetrics: nDCG / Recall / MRR of an eval set during training, batch by batch, for ``transformers.Trainer``.

Scoring a whole corpus at every eval step is too slow, so (as in Trove) each dev query comes with a
fixed group of judged documents (a :class:`~densekit.data.datasets.MultiLevelDataset` with, say,
``group_size=100``) and the metrics rank only that group: a reranking approximation of the real numbers.

Use it as ``Trainer(..., compute_metrics=IRMetrics(k_values=[10, 100]))`` with
``TrainingArguments(batch_eval_metrics=True, label_names=["label"])``. The Trainer (transformers 5.x,
``Trainer.evaluation_loop``) then calls ``metric(EvalPrediction(predictions=logits, label_ids=labels),
compute_result=is_last_batch)`` after every eval batch, with torch tensors still on the device, and keeps
only what the last call returns. Each call turns the batch into a small search result and scores it with
:func:`densekit.evaluation.metrics.compute_metrics` (trec_eval semantics, checked against pytrec_eval);
the per-query values are summed, so the final mean is exactly the mean over all queries of the eval set.

How a batch is read:

* ``predictions``: the scores, or a tuple whose first element they are (models also return embeddings).
  Either one row per query over its own group, ``[B, G]``, or every query against every passage of the
  batch, ``[B, B * G]`` (what :class:`~densekit.modeling.retriever.BiEncoderRetriever` returns); in the
  latter, row ``i`` keeps its own block of columns ``(i mod b) * G ...``, which also holds after the
  Trainer stacks the rows gathered from several processes.
* ``label_ids``: the graded labels ``[B, G]``; whole numbers (trec_eval reads judgments as integers).
  ``-100``, the Trainer's padding value, marks a missing entry. Or a pair ``(labels, doc_ids)``: the
  labels and, beside them, an id of each document of the group ``[B, G]`` (corpus row numbers, or any
  integers or strings that are equal exactly when the documents are), what a ``prediction_step``
  returning ``(label, passage ids)`` as its labels gives.

Semantics:

* Relevant means label >= 1; nDCG uses the label as gain, with the ideal ranking of the group's labels.
* Repeats: a dataset fills the group of a query with few judged documents by repeating them, and a
  repeat must not count twice (it would double the relevant documents). With document ids, an entry
  whose id appears earlier in its row is dropped, and only such an entry: two different documents with
  equal scores both count, as trec_eval counts them. Without ids (a batch of scores and labels only)
  the documents are not visible, so the fallback drops an entry whose (score, label) pair exactly equals
  an earlier one of its row (in eval mode the same text gets bit-identical scores); it also merges
  different documents that a collapsed model scores exactly alike, and logs a warning once that ids
  are missing. ``deduplicate=False`` turns de-duplication off.
* Ties: trec_eval's rule (score descending, then document id descending) with document id = position
  in the group, so among equal scores the later position ranks first. ``MultiLevelDataset`` lists the
  most relevant documents first, so ties are resolved pessimistically: a model that scores everything
  alike gets no credit for the dataset's ordering.
* Queries whose group has no relevant document are left out of the mean (they would add the same 0
  whatever the model does); ``last_counts`` tells how many were evaluated and how many left out.
  pytrec_eval would instead score such a query 0 when its zero labels are given as judgments.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np

from densekit.errors import ConfigError, InputError
from densekit.evaluation.metrics import Measure, compute_metrics, parse_measures

logger = logging.getLogger(__name__)

#: transformers pads labels and predictions gathered from several processes with this value.
LABEL_PADDING = -100

DEFAULT_K_VALUES: tuple[int, ...] = (10, 100)


def default_measures(k_values: Iterable[int]) -> list[Measure]:
    """nDCG@k, Recall@k and MRR@k for each cutoff k."""
    cutoffs = list(k_values)
    return [Measure(kind, k) for kind in ("ndcg", "recall", "mrr") for k in cutoffs]


class IRMetrics:
    """Stateful ``compute_metrics`` for ``transformers.Trainer`` with ``batch_eval_metrics=True``.

    Args:
        k_values: cutoffs for the default measures nDCG@k, Recall@k, MRR@k (default 10 and 100).
        measures: measure names instead (any spelling :func:`~densekit.evaluation.metrics.parse_measures`
            accepts, e.g. ``["nDCG@10", "P@5", "MAP"]``); give either this or ``k_values``.
        deduplicate: count a document repeated within a query's group once: by document id when the
            labels come with ids, else by equal (score, label) (see the module docstring).

    Calling it with ``compute_result=True`` returns ``{"nDCG@10": mean, ...}`` over every query seen
    since the last result and starts afresh; other calls return the means of that batch alone. Call
    :meth:`reset` to discard a half-finished evaluation.
    """

    def __init__(
        self,
        k_values: Union[int, Sequence[int], None] = None,
        measures: Union[str, Iterable[Union[str, Measure]], None] = None,
        deduplicate: bool = True,
    ) -> None:
        if k_values is not None and measures is not None:
            raise ConfigError("IRMetrics takes either k_values or measures, not both.")
        if measures is not None:
            self.measures = parse_measures(measures)
        else:
            cutoffs = [k_values] if isinstance(k_values, int) else list(k_values or DEFAULT_K_VALUES)
            if not cutoffs or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1
                                  for k in cutoffs):
                raise ConfigError(f"k_values must be positive integers, got {k_values!r}.")
            self.measures = default_measures(int(k) for k in cutoffs)
        self.deduplicate = deduplicate
        self._warned_no_ids = False
        self.last_counts: dict[str, int] = {"evaluated": 0, "without_relevant": 0}
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self._sums = {m.name: 0.0 for m in self.measures}
        self._evaluated = 0
        self._without_relevant = 0

    def __call__(self, eval_pred: Any, compute_result: bool = True) -> dict[str, float]:
        """Add one eval batch; with ``compute_result`` return the means over all batches and reset.

        ``compute_result`` defaults to True so that the object also works without
        ``batch_eval_metrics`` (one call with every prediction of the eval set) when rows are ``[N, G]``.
        """
        scores, labels = read_eval_prediction(eval_pred)
        doc_ids = read_document_ids(eval_pred, labels.shape)
        if self.deduplicate and doc_ids is None and not self._warned_no_ids:
            self._warned_no_ids = True
            logger.warning("IRMetrics: the eval labels come without document ids, so repeated documents are "
                           "recognised by equal (score, label); pass labels as (labels, doc_ids) to count "
                           "every distinct document exactly.")
        batch_sums, evaluated, skipped = self._score_batch(scores, labels, doc_ids)
        for name, value in batch_sums.items():
            self._sums[name] += value
        self._evaluated += evaluated
        self._without_relevant += skipped
        if not compute_result:
            return {name: value / evaluated for name, value in batch_sums.items()} if evaluated else {}
        return self.result()

    def result(self) -> dict[str, float]:
        """Means over every query added since the last reset, then reset."""
        evaluated, skipped = self._evaluated, self._without_relevant
        sums = self._sums
        self.reset()
        self.last_counts = {"evaluated": evaluated, "without_relevant": skipped}
        if evaluated == 0:
            raise InputError(
                f"None of the {skipped} eval queries has a document with label >= 1 in its group, so no IR "
                "metric can be computed.",
                fix="give every eval query its positives (e.g. MultiLevelDataset with "
                    "passage_selection_strategy='most_relevant' and the dev qrels of positives).",
            )
        return {name: total / evaluated for name, total in sums.items()}

    def _score_batch(self, scores: np.ndarray, labels: np.ndarray,
                     doc_ids: Optional[np.ndarray] = None) -> tuple[dict[str, float], int, int]:
        """Sum of each measure over the batch's queries with a relevant document, and the two counts."""
        keep = labels != LABEL_PADDING
        if self.deduplicate:
            keep &= first_ids(doc_ids, keep) if doc_ids is not None else first_occurrences(scores, labels)
        relevant = keep & (labels >= 1)
        has_relevant = relevant.any(axis=1)
        evaluated = int(has_relevant.sum())
        skipped = len(labels) - evaluated
        if evaluated == 0:
            return {}, 0, skipped
        group = labels.shape[1]
        width = len(str(group - 1))
        doc_ids = [str(j).zfill(width) for j in range(group)]  # string order = position order
        query_ids = [str(i) for i in range(len(labels))]
        doc_indices = np.where(keep, np.arange(group), -1)
        qrels = {
            query_ids[i]: {doc_ids[j]: int(labels[i, j]) for j in np.flatnonzero(relevant[i]).tolist()}
            for i in np.flatnonzero(has_relevant).tolist()
        }
        results = compute_metrics(qrels, query_ids, doc_indices, np.where(keep, scores, 0.0), doc_ids,
                                  self.measures)
        sums = {name: float(sum(values.values())) for name, values in results.per_query.items()}
        return sums, evaluated, skipped


def read_eval_prediction(eval_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels of one batch as float64 / float arrays of the same shape ``[B, G]``.

    Accepts an ``EvalPrediction`` (or any object with ``predictions`` and ``label_ids``, or a
    ``(predictions, label_ids)`` pair), torch tensors or numpy arrays, and tuple predictions.
    """
    if hasattr(eval_pred, "predictions"):
        predictions, label_ids = eval_pred.predictions, eval_pred.label_ids
    else:
        predictions, label_ids = eval_pred
    if isinstance(predictions, (tuple, list)):
        if not predictions:
            raise InputError("The model returned no predictions to score.",
                             fix="make forward return the query x passage scores after the loss.")
        predictions = predictions[0]
    if isinstance(label_ids, (tuple, list)):
        if len(label_ids) not in (1, 2):
            raise InputError(f"Got {len(label_ids)} label arrays, expected the graded labels and optionally "
                             "the document ids.", fix='set TrainingArguments(label_names=["label"]).')
        label_ids = label_ids[0]
    if predictions is None or label_ids is None:
        raise InputError("IRMetrics needs both the model's scores and the labels.",
                         fix='set TrainingArguments(label_names=["label"]) and do not use prediction_loss_only.')
    scores = _to_numpy(predictions).astype(np.float64)
    labels = _to_numpy(label_ids).astype(np.float64)
    if labels.ndim != 2 or scores.ndim != 2:
        raise InputError(
            f"Scores {scores.shape} and labels {labels.shape} must both be matrices (queries x documents).",
            fix="use a MultiLevelDataset (one query and a fixed-size group of labelled documents per example).")
    rows, group = labels.shape
    if scores.shape[0] != rows or group == 0 or scores.shape[1] % group:
        raise InputError(
            f"Scores {scores.shape} do not match labels {labels.shape}: expected [{rows}, {group}] (each query "
            f"against its own group) or [{rows}, {rows} x {group}] (against every passage of the batch).",
            fix="return the query x passage score matrix as the first output after the loss.")
    if scores.shape[1] != group:  # every query against every passage: keep each query's own block
        start = (np.arange(rows) * group) % scores.shape[1]
        scores = np.take_along_axis(scores, start[:, None] + np.arange(group), axis=1)
    _check_values(scores, labels)
    return scores, labels


def read_document_ids(eval_pred: Any, shape: tuple[int, ...]) -> Optional[np.ndarray]:
    """The document ids ``[B, G]`` that came as second label array, or None when there are none."""
    label_ids = eval_pred.label_ids if hasattr(eval_pred, "label_ids") else eval_pred[1]
    if not isinstance(label_ids, (tuple, list)) or len(label_ids) != 2 or label_ids[1] is None:
        return None
    doc_ids = label_ids[1]
    # integer ids stay integers (row numbers above 2**24 would collide as float32)
    doc_ids = doc_ids.detach().cpu().numpy() if hasattr(doc_ids, "detach") else np.asarray(doc_ids)
    if doc_ids.shape != tuple(shape):
        raise InputError(f"Document ids {doc_ids.shape} do not match labels {tuple(shape)}; give one id per "
                         "document of each group.", fix="return (label, passage ids) of the same shape as labels.")
    return doc_ids


def first_ids(doc_ids: np.ndarray, present: np.ndarray) -> np.ndarray:
    """True for each present entry whose document id does not appear earlier (among present ones) in its row."""
    first = np.zeros(doc_ids.shape, dtype=bool)
    for i, row in enumerate(doc_ids.tolist()):
        seen = set()
        for j, doc in enumerate(row):
            if present[i, j] and doc not in seen:
                seen.add(doc)
                first[i, j] = True
    return first


def first_occurrences(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """True for each entry whose (score, label) pair does not appear earlier in its row."""
    rows, group = labels.shape
    row_ids = np.repeat(np.arange(rows), group)
    order = np.lexsort((np.tile(np.arange(group), rows), labels.ravel(), scores.ravel(), row_ids))
    s, lab, r = scores.ravel()[order], labels.ravel()[order], row_ids[order]
    repeat = np.zeros(order.size, dtype=bool)
    repeat[1:] = (s[1:] == s[:-1]) & (lab[1:] == lab[:-1]) & (r[1:] == r[:-1])
    first = np.empty(order.size, dtype=bool)
    first[order] = ~repeat  # stable column order inside equal pairs: the earliest position is kept
    return first.reshape(rows, group)


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor, possibly on GPU or in bfloat16
        value = value.detach().float().cpu().numpy()
    return np.asarray(value)


def _check_values(scores: np.ndarray, labels: np.ndarray) -> None:
    present = labels != LABEL_PADDING
    if not np.isfinite(labels).all():
        row = int(np.nonzero(~np.isfinite(labels))[0][0])
        raise InputError(f"Label NaN or infinite in row {row} of the eval batch.",
                         fix="check the eval dataset's labels (qrels scores and score_transform).")
    fractional = present & (labels != np.round(labels))
    if fractional.any():
        row, col = (int(x[0]) for x in np.nonzero(fractional))
        raise InputError(
            f"Label {labels[row, col]} (row {row}, position {col} of the eval batch) is not a whole number; "
            "graded relevance must be an integer, as in trec_eval.",
            fix="use integer qrels scores for the eval set (score_transform must give whole numbers).")
    bad = present & ~np.isfinite(scores)
    if bad.any():
        row = int(np.nonzero(bad)[0][0])
        raise InputError(f"The model gave a NaN or infinite score in row {row} of the eval batch.",
                         fix="check the model for diverged weights (learning rate, fp16 overflow).")


__all__ = ["DEFAULT_K_VALUES", "IRMetrics", "default_measures", "first_ids", "first_occurrences",
           "read_document_ids", "read_eval_prediction"]
