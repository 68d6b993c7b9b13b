"""IRMetrics against pytrec_eval on groups built like MultiLevelDataset's, and inside a real Trainer.evaluate()."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pytest
import pytrec_eval
import torch
from transformers import EvalPrediction, Trainer, TrainingArguments
from transformers.utils import ModelOutput

from densekit.data.sampling import fill_to
from densekit.errors import ConfigError, InputError
from densekit.evaluation.metrics import parse_measures
from densekit.training.ir_metrics import IRMetrics, first_ids, first_occurrences

ALL_MEASURES = ["nDCG@3", "nDCG@10", "Recall@3", "Recall@10", "MRR@3", "MRR@10", "P@5", "MAP"]


# ------------------------------------------------------------------------------------------ reference
def make_groups(rng: np.random.Generator, rows: int, group: int, *, all_zero_every: int = 5):
    """Rows as MultiLevelDataset builds them: a few judged docs, most relevant first, repeated to fill.

    Each row's distinct documents get distinct (score, label) pairs, with many equal scores across
    labels (ties). Returns the filled [rows, group] scores and labels and, per row, the distinct docs.
    """
    scores = np.zeros((rows, group))
    labels = np.zeros((rows, group))
    distinct = []
    for i in range(rows):
        n = int(rng.integers(1, group + 1))
        grid = [(float(s), lab) for s in range(5) for lab in range(4)]  # 20 (score, label) pairs
        docs = [grid[j] for j in rng.choice(len(grid), size=min(n, len(grid)), replace=False)]
        if all_zero_every and i % all_zero_every == 0:
            docs = [(s, 0) for s, _ in docs]
            docs = list(dict.fromkeys(docs))
        docs.sort(key=lambda d: -d[1])  # most relevant first, as "most_relevant" selection lists them
        filled = fill_to(docs, group)
        scores[i] = [s for s, _ in filled]
        labels[i] = [lab for _, lab in filled]
        distinct.append(docs)
    return scores, labels, distinct


def reference_means(distinct, measures) -> tuple[dict[str, float], int]:
    """pytrec_eval on the distinct documents of each row; rows without a relevant doc are left out.

    Document id = position of the doc's first occurrence (zero-padded), so that trec_eval's tie rule
    (doc id descending) is the one IRMetrics documents. MRR@k = recip_rank of the run cut at k.
    """
    qrels, run = {}, {}
    for i, docs in enumerate(distinct):
        if any(lab >= 1 for _, lab in docs):
            qrels[f"q{i}"] = {f"{j:04d}": lab for j, (_, lab) in enumerate(docs)}
            run[f"q{i}"] = {f"{j:04d}": s for j, (s, _) in enumerate(docs)}
    out = {}
    for m in parse_measures(measures):
        if m.kind == "mrr":
            cut = {q: dict(sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[: m.cutoff])
                   for q, docs in run.items()}  # trec order: score descending, then doc id descending
            per_query = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(cut)
            values = [v["recip_rank"] for v in per_query.values()]
        else:
            key = m.trec_name.replace(".", "_")
            per_query = pytrec_eval.RelevanceEvaluator(qrels, {m.trec_name}).evaluate(run)
            values = [v[key] for v in per_query.values()]
        assert len(values) == len(qrels)
        out[m.name] = float(np.mean(values))
    return out, len(qrels)


def batch(scores, labels) -> EvalPrediction:
    return EvalPrediction(predictions=scores, label_ids=labels)


# ------------------------------------------------------------------------------------------ semantics
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_pytrec_eval_with_ties_fill_repeats_and_all_zero_rows(seed):
    rng = np.random.default_rng(seed)
    scores, labels, distinct = make_groups(rng, rows=40, group=12)
    metric = IRMetrics(measures=ALL_MEASURES)
    got = metric(batch(scores, labels), compute_result=True)
    expected, evaluated = reference_means(distinct, ALL_MEASURES)
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name] == pytest.approx(expected[name], abs=1e-12), name
    assert metric.last_counts == {"evaluated": evaluated, "without_relevant": 40 - evaluated}
    assert metric.last_counts["without_relevant"] >= 8  # every 5th row has only zero labels


def test_fill_repeats_count_once():
    # one relevant doc repeated 4 times ranked first: Recall@2 must be 1, not 2/4 or 4/4 spread
    scores = np.array([[0.9, 0.1, 0.9, 0.1]])
    labels = np.array([[1, 0, 1, 0]])
    got = IRMetrics(measures=["Recall@1", "P@2", "nDCG@4"])(batch(scores, labels))
    assert got == pytest.approx({"Recall@1": 1.0, "P@2": 0.5, "nDCG@4": 1.0})
    kept = IRMetrics(measures=["Recall@1"], deduplicate=False)(batch(scores, labels))
    assert kept["Recall@1"] == pytest.approx(0.5)  # without the rule the copy counts as a second relevant doc


def test_ties_rank_later_positions_first():
    # equal scores: the later position ranks first, so the label-descending order of the dataset gains nothing
    scores = np.zeros((1, 4))
    labels = np.array([[2, 1, 0, 0]])
    got = IRMetrics(measures=["MRR@4", "nDCG@4"], deduplicate=False)(batch(scores, labels))
    assert got["MRR@4"] == pytest.approx(1 / 3)
    ideal = 2 + 1 / np.log2(3)
    assert got["nDCG@4"] == pytest.approx((1 / np.log2(4) + 2 / np.log2(5)) / ideal)


def test_first_occurrences_keeps_earliest_position_of_each_pair():
    scores = np.array([[1.0, 2.0, 1.0, 1.0, 2.0]])
    labels = np.array([[1, 0, 0, 1, 0]])
    assert first_occurrences(scores, labels).tolist() == [[True, True, True, False, False]]


def test_default_measures_are_ndcg_recall_mrr_at_each_k():
    rng = np.random.default_rng(3)
    scores, labels, distinct = make_groups(rng, rows=10, group=8)
    got = IRMetrics(k_values=[2, 5])(batch(scores, labels))
    assert list(got) == ["nDCG@2", "nDCG@5", "Recall@2", "Recall@5", "MRR@2", "MRR@5"]
    expected, _ = reference_means(distinct, list(got))
    assert got == pytest.approx(expected, abs=1e-12)
    assert list(IRMetrics()(batch(scores, labels))) == ["nDCG@10", "nDCG@100", "Recall@10", "Recall@100",
                                                         "MRR@10", "MRR@100"]


# ------------------------------------------------------------------------------------------ accumulation
def test_several_batches_equal_one_big_batch_and_state_resets():
    rng = np.random.default_rng(4)
    scores, labels, _ = make_groups(rng, rows=23, group=10)
    whole = IRMetrics(measures=ALL_MEASURES)(batch(scores, labels), compute_result=True)

    metric = IRMetrics(measures=ALL_MEASURES)
    for start in range(0, 23, 5):
        last = start + 5 >= 23
        part = metric(batch(scores[start:start + 5], labels[start:start + 5]), compute_result=last)
    assert part == pytest.approx(whole, abs=1e-12)
    # state was reset: evaluating only the first batch now gives that batch alone, not a running mean
    first = metric(batch(scores[:5], labels[:5]), compute_result=True)
    alone = IRMetrics(measures=ALL_MEASURES)(batch(scores[:5], labels[:5]))
    assert first == alone
    assert first != pytest.approx(whole)


def test_intermediate_calls_return_the_batch_means():
    rng = np.random.default_rng(5)
    scores, labels, _ = make_groups(rng, rows=6, group=6, all_zero_every=0)
    metric = IRMetrics(measures=["nDCG@5"])
    step = metric(batch(scores[:3], labels[:3]), compute_result=False)
    assert step == IRMetrics(measures=["nDCG@5"])(batch(scores[:3], labels[:3]))
    metric.reset()
    assert metric(batch(scores[3:], labels[3:])) == IRMetrics(measures=["nDCG@5"])(batch(scores[3:], labels[3:]))


def test_torch_numpy_and_tuple_predictions_agree():
    rng = np.random.default_rng(6)
    scores, labels, _ = make_groups(rng, rows=12, group=7)
    reference = IRMetrics()(batch(scores, labels))
    as_tensors = batch(torch.tensor(scores, dtype=torch.float32), torch.tensor(labels, dtype=torch.float32))
    assert IRMetrics()(as_tensors) == pytest.approx(reference, abs=1e-12)
    extra = torch.randn(12, 4)  # e.g. query embeddings returned after the scores
    assert IRMetrics()(batch((torch.tensor(scores), extra), torch.tensor(labels))) == pytest.approx(reference)
    assert IRMetrics()(batch((scores,), (labels,))) == pytest.approx(reference)


def test_all_pairs_score_matrix_uses_each_querys_own_block():
    rng = np.random.default_rng(7)
    scores, labels, _ = make_groups(rng, rows=4, group=5)
    full = rng.normal(size=(4, 20))  # every query against every passage of the batch
    for i in range(4):
        full[i, i * 5:(i + 1) * 5] = scores[i]
    assert IRMetrics()(batch(full, labels)) == IRMetrics()(batch(scores, labels))
    # rows stacked from two processes: each holds [2, 2 x 5] scores
    local = np.concatenate([full[:2, :10], full[2:, 10:]])
    assert IRMetrics()(batch(local, labels)) == IRMetrics()(batch(scores, labels))


def test_label_padding_entries_are_ignored():
    scores = np.array([[0.2, 0.9, 0.5, -100.0]])
    labels = np.array([[1, 0, 0, -100]])
    assert IRMetrics(measures=["MRR@10"])(batch(scores, labels)) == {"MRR@10": pytest.approx(1 / 3)}


# ------------------------------------------------------------------------------------------ errors
def test_bad_inputs_raise_input_error_with_fix():
    ok_scores, ok_labels = np.zeros((2, 3)), np.array([[1, 0, 0], [0, 1, 0]])
    with pytest.raises(InputError, match="whole number"):
        IRMetrics()(batch(ok_scores, ok_labels * 0.5))
    with pytest.raises(InputError, match="NaN"):
        IRMetrics()(batch(np.full((2, 3), np.nan), ok_labels))
    with pytest.raises(InputError, match="do not match"):
        IRMetrics()(batch(np.zeros((2, 4)), ok_labels))
    with pytest.raises(InputError, match="label >= 1") as err:
        IRMetrics()(batch(ok_scores, ok_labels * 0))
    assert err.value.fix
    with pytest.raises(ConfigError):
        IRMetrics(k_values=[10], measures=["MAP"])
    with pytest.raises(ConfigError):
        IRMetrics(k_values=[0])


# ------------------------------------------------------------------------------------------ Trainer
@dataclass
class TinyOutput(ModelOutput):
    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    query: Optional[torch.Tensor] = None


class TinyBiEncoder(torch.nn.Module):
    """Linear query/passage encoder; logits = every query against every passage of the batch."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(dim, dim, bias=False)
        torch.nn.init.eye_(self.proj.weight)

    def forward(self, query=None, passage=None, label=None):
        q = self.proj(query)
        p = self.proj(passage.reshape(-1, passage.shape[-1]))
        logits = q @ p.T
        loss = -torch.log_softmax(logits, dim=1)[:, 0].mean()
        return TinyOutput(loss=loss, logits=logits, query=q)


def test_trainer_evaluate_reports_metrics_over_all_batches(tmp_path):
    rng = np.random.default_rng(8)
    dim, group, rows = 6, 8, 11
    dataset, distinct = [], []
    for i in range(rows):
        n = int(rng.integers(2, group + 1))
        docs = [(rng.normal(size=dim), int(rng.integers(0, 3))) for _ in range(n)]
        docs[0] = (docs[0][0], 1 + i % 2)
        docs.sort(key=lambda d: -d[1])
        query = rng.normal(size=dim)
        filled = fill_to(docs, group)
        dataset.append({
            "query": torch.tensor(query, dtype=torch.float32),
            "passage": torch.tensor(np.stack([v for v, _ in filled]), dtype=torch.float32),
            "label": torch.tensor([float(lab) for _, lab in filled]),
        })
        q32 = torch.tensor(query, dtype=torch.float32)
        distinct.append([(float(q32 @ torch.tensor(v, dtype=torch.float32)), lab) for v, lab in docs])

    def collate(features):
        return {key: torch.stack([f[key] for f in features]) for key in features[0]}

    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=4, batch_eval_metrics=True,
                             label_names=["label"], report_to=[], use_cpu=True)
    metric = IRMetrics(k_values=[3, 10])
    trainer = Trainer(model=TinyBiEncoder(dim), args=args, eval_dataset=dataset, data_collator=collate,
                      compute_metrics=metric)
    result = trainer.evaluate()
    expected, evaluated = reference_means(distinct, ["nDCG@3", "nDCG@10", "Recall@3", "Recall@10",
                                                     "MRR@3", "MRR@10"])
    for name, value in expected.items():
        assert result[f"eval_{name}"] == pytest.approx(value, abs=1e-6), name
    assert metric.last_counts == {"evaluated": rows, "without_relevant": 0} and evaluated == rows
    again = trainer.evaluate()  # a second evaluation starts from a clean state
    assert {k: again[k] for k in result if k.startswith("eval_") and "@" in k} == pytest.approx(
        {k: result[k] for k in result if k.startswith("eval_") and "@" in k})


# ------------------------------------------------------------------------------------------ document ids
def test_document_ids_count_different_documents_with_equal_scores_and_a_repeat_once():
    # positions 0 and 1: two different relevant documents, same score and label -> both count;
    # position 2 repeats document 7 (the group was filled) -> counted once
    scores = np.array([[0.5, 0.5, 0.5, 0.1]])
    labels = np.array([[1, 1, 1, 0]])
    ids = np.array([[7, 8, 7, 9]])
    got = IRMetrics(measures=["Recall@2", "P@2", "nDCG@4"])(batch(scores, (labels, ids)))
    assert got == pytest.approx({"Recall@2": 1.0, "P@2": 1.0, "nDCG@4": 1.0})
    # without ids the fallback merges the two documents (equal score and label): one relevant, not two
    merged = IRMetrics(measures=["P@2"])(batch(scores, labels))
    assert merged["P@2"] == pytest.approx(0.5)
    # ids as strings (doc ids) and as torch tensors behave the same
    as_str = np.array([["d7", "d8", "d7", "d9"]])
    assert IRMetrics(measures=["P@2"])(batch(scores, (labels, as_str)))["P@2"] == pytest.approx(1.0)
    as_torch = (torch.tensor(labels), torch.tensor(ids))
    assert IRMetrics(measures=["P@2"])(batch(torch.tensor(scores), as_torch))["P@2"] == pytest.approx(1.0)


def test_document_ids_match_pytrec_eval_on_the_distinct_documents():
    rng = np.random.default_rng(9)
    scores, labels, distinct = make_groups(rng, rows=30, group=10)
    ids = np.zeros(labels.shape, dtype=np.int64)
    for i, docs in enumerate(distinct):  # fill_to repeats the row's distinct documents in order
        ids[i] = [1000 * i + j % len(docs) for j in range(labels.shape[1])]
    got = IRMetrics(measures=ALL_MEASURES)(batch(scores, (labels, ids)))
    expected, _ = reference_means(distinct, ALL_MEASURES)
    assert got == pytest.approx(expected, abs=1e-12)


def test_first_ids_keeps_the_earliest_present_entry_of_each_document():
    ids = np.array([[3, 3, 4, 3], [5, 5, 5, 6]])
    present = np.array([[False, True, True, True], [True, True, True, True]])
    assert first_ids(ids, present).tolist() == [[False, True, True, False], [True, False, False, True]]


def test_document_ids_of_the_wrong_shape_are_refused():
    with pytest.raises(InputError, match="Document ids"):
        IRMetrics()(batch(np.zeros((1, 3)), (np.array([[1, 0, 0]]), np.array([[1, 2]]))))


class IdsTrainer(Trainer):
    """A Trainer whose prediction_step returns ``(label, passage ids)`` as labels, as RetrievalTrainer can."""

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        ids = inputs.pop("passage_id")
        with torch.no_grad():
            out = model(**inputs)
        group = inputs["label"].shape[1]
        rows = torch.arange(out.logits.shape[0])
        scores = out.logits.reshape(len(rows), len(rows), group)[rows, rows]
        return out.loss.detach(), scores, (inputs["label"], ids)


@pytest.mark.parametrize("batch_eval_metrics", [True, False])
def test_trainer_passes_document_ids_through_evaluation(tmp_path, batch_eval_metrics):
    # every passage vector is the same: a (collapsed) model scores all documents alike; ids keep them apart
    dim, group, rows = 4, 4, 5
    dataset = []
    for _ in range(rows):
        dataset.append({"query": torch.ones(dim), "passage": torch.ones(group, dim),
                        "label": torch.tensor([1.0, 1.0, 0.0, 1.0]),
                        "passage_id": torch.tensor([10, 11, 12, 10])})  # the last entry repeats the first

    def collate(features):
        return {key: torch.stack([f[key] for f in features]) for key in features[0]}

    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=2,
                             batch_eval_metrics=batch_eval_metrics, label_names=["label"], report_to=[], use_cpu=True,
                             remove_unused_columns=False)
    metric = IRMetrics(measures=["Recall@4", "P@3"])
    trainer = IdsTrainer(model=TinyBiEncoder(dim), args=args, eval_dataset=dataset, data_collator=collate,
                         compute_metrics=metric)
    result = trainer.evaluate()
    # two distinct relevant documents (10, 11) among three distinct ones, all tied
    assert result["eval_Recall@4"] == pytest.approx(1.0)
    assert result["eval_P@3"] == pytest.approx(2 / 3)
    assert metric.last_counts == {"evaluated": rows, "without_relevant": 0}
