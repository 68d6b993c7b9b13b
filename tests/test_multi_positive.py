"""Multi-positive InfoNCE against its reference formula, and BinaryDataset groups with several positives."""
from __future__ import annotations

import math

import pytest
import torch

from densekit.data.data_args import DataArguments
from densekit.data.datasets import BinaryDataset
from densekit.errors import ConfigError, InputError
from densekit.modeling.losses import InfoNCELoss, MultiPositiveInfoNCELoss, RetrievalLoss
from tests.test_data_binary_dataset import conf, ids_of, plain_passage, write_collection

T = 0.2


def reference(logits, label, mask=None):
    """mean_q -log( sum_{p in P(q)} exp(s_qp/T) / sum_{j unmasked or in P(q)} exp(s_qj/T) ), in plain floats."""
    n_queries, group = label.shape
    total = 0.0
    for i in range(n_queries):
        positives = {i * group + g for g in range(group) if label[i, g] > 0}
        kept = [j for j in range(logits.shape[1]) if j in positives or mask is None or not mask[i, j]]
        numerator = sum(math.exp(float(logits[i, j]) / T) for j in positives)
        denominator = sum(math.exp(float(logits[i, j]) / T) for j in kept)
        total += -math.log(numerator / denominator)
    return total / n_queries


def test_registered_under_its_alias():
    assert RetrievalLoss.find("multi_positive_infonce") is MultiPositiveInfoNCELoss
    assert "multi_positive_infonce" in RetrievalLoss.available_losses()


def test_equals_the_reference_formula_with_and_without_a_mask():
    torch.manual_seed(1)
    logits = torch.randn(3, 12)
    label = torch.tensor([[1.0, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]])
    loss = MultiPositiveInfoNCELoss(temperature=T)
    assert loss(logits, label).item() == pytest.approx(reference(logits, label), abs=1e-5)
    mask = torch.rand(3, 12) < 0.4
    mask[0, 0] = mask[2, 9] = True  # masks on own positives are ignored
    assert loss(logits, label, mask=mask).item() == pytest.approx(reference(logits, label, mask), abs=1e-5)


def test_gradient_matches_the_formulas_autograd():
    torch.manual_seed(2)
    logits = torch.randn(2, 6, requires_grad=True)
    label = torch.tensor([[1.0, 1, 0], [1, 0, 0]])
    grad, = torch.autograd.grad(MultiPositiveInfoNCELoss(temperature=T)(logits, label), logits)
    scores = logits / T
    positive = torch.zeros(2, 6, dtype=torch.bool)
    positive[0, 0] = positive[0, 1] = positive[1, 3] = True
    manual = -(torch.log((scores.exp() * positive).sum(1)) - torch.log(scores.exp().sum(1))).mean()
    ref_grad, = torch.autograd.grad(manual, logits)
    assert torch.allclose(grad, ref_grad, atol=1e-6)


def test_one_positive_per_group_is_infonce():
    torch.manual_seed(3)
    logits, label = torch.randn(4, 12), torch.tensor([[1.0, 0, 0]] * 4)
    assert torch.allclose(MultiPositiveInfoNCELoss(temperature=T)(logits, label),
                          InfoNCELoss(temperature=T)(logits, label), atol=1e-6)


def test_a_group_without_positive_is_an_input_error():
    with pytest.raises(InputError):
        MultiPositiveInfoNCELoss(temperature=T)(torch.randn(2, 4), torch.tensor([[1.0, 0], [0, 0]]))


# --------------------------------------------------------------------------------------------- dataset
MANY = {"q1": {"a": 1, "b": 1, "c": 1, "n1": 0, "n2": 0, "n3": 0, "n4": 0},
        "q2": {"d": 1, "m1": 0, "m2": 0, "m3": 0, "m4": 0}}


def make(tmp_path, **kw):
    folder = write_collection(tmp_path, MANY)
    return BinaryDataset(DataArguments(group_size=4, sampling_seed=7), conf(folder, min_score=1),
                         conf(folder, max_score=1), format_passage=plain_passage, **kw)


def test_groups_hold_up_to_num_positives_positives_labeled_one(tmp_path):
    ds = make(tmp_path, num_positives=2)
    for epoch in range(5):
        ds.set_epoch(epoch)
        first, second = ds[0], ds[1]
        assert first["label"] == [1.0, 1.0, 0.0, 0.0]
        assert set(ids_of(first)[:2]) <= {"a", "b", "c"} and len(set(ids_of(first)[:2])) == 2
        assert set(ids_of(first)[2:]) <= {"n1", "n2", "n3", "n4"}
        # one positive only: it is used, and the group is filled with negatives
        assert second["label"] == [1.0, 0.0, 0.0, 0.0] and ids_of(second)[0] == "d"
        assert sorted(first["positive_rows"]) == sorted(ds.corpus.indices_of(["a", "b", "c"]).tolist())
        assert list(ds.group_rows(0, epoch)) == first["passage_row"]


def test_default_is_one_positive_and_bad_counts_are_refused(tmp_path):
    assert make(tmp_path)[0]["label"] == [1.0, 0.0, 0.0, 0.0]
    for bad in (0, 5, True):
        with pytest.raises(ConfigError, match="num_positives"):
            make(tmp_path, num_positives=bad)
