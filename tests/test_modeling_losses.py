"""Losses: the registry, and each loss against a hand-written reference formula (values and gradients)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from densekit.errors import ConfigError, InputError
from densekit.modeling.losses import (
    InfoNCELoss, KLDistillationLoss, MarginMSELoss, MultiLevelLoss, RetrievalLoss,
)


def value_and_grad(fn, logits):
    logits = logits.detach().clone().requires_grad_()
    value = fn(logits)
    value.backward()
    return value.detach(), logits.grad


def assert_same(loss_fn, reference_fn, logits):
    value, grad = value_and_grad(loss_fn, logits)
    ref_value, ref_grad = value_and_grad(reference_fn, logits)
    assert torch.allclose(value, ref_value, atol=1e-6, rtol=1e-6), (value, ref_value)
    assert torch.allclose(grad, ref_grad, atol=1e-6, rtol=1e-6)
    assert grad.abs().sum() > 0


# ---------------------------------------------------------------- registry

def test_available_losses_lists_builtin_names_and_aliases():
    names = RetrievalLoss.available_losses()
    for name in ("infonce", "InfoNCELoss", "kl", "margin_mse", "multilevel", "MultiLevelLoss"):
        assert name in names
    assert names == sorted(names)


@pytest.mark.parametrize("name, cls", [("infonce", InfoNCELoss), ("InfoNCE", InfoNCELoss),
                                       ("InfoNCELoss", InfoNCELoss), ("kl", KLDistillationLoss),
                                       ("margin_mse", MarginMSELoss), ("multilevel", MultiLevelLoss)])
def test_find_resolves_class_names_and_aliases_case_insensitively(name, cls):
    assert RetrievalLoss.find(name) is cls


def test_find_unknown_loss_raises_config_error_listing_available_losses():
    with pytest.raises(ConfigError) as info:
        RetrievalLoss.find("no_such_loss")
    assert "no_such_loss" in str(info.value) and "infonce" in str(info.value)


def test_from_model_args_builds_the_named_loss_with_its_temperature():
    loss = RetrievalLoss.from_model_args(SimpleNamespace(loss="InfoNCE", temperature=0.05))
    assert isinstance(loss, InfoNCELoss) and loss.temperature == 0.05
    assert RetrievalLoss.from_model_args(SimpleNamespace(loss=None, temperature=1.0)) is None


@pytest.fixture
def scratch_registry(monkeypatch):
    """Losses defined by a test register into a copy, so they do not leak into other tests."""
    monkeypatch.setattr(RetrievalLoss, "_registry", dict(RetrievalLoss._registry))


def test_subclass_registers_itself_by_name_and_alias(scratch_registry):
    class PinnedTestLoss(RetrievalLoss):
        _alias = "pinned_test_loss"

        def forward(self, logits, label, **kwargs):
            return logits.sum() * 0

    assert RetrievalLoss.find("pinned_test_loss") is PinnedTestLoss
    assert RetrievalLoss.find("PinnedTestLoss") is PinnedTestLoss
    assert "pinned_test_loss" in RetrievalLoss.available_losses()


def test_a_later_class_taking_a_builtin_alias_wins_with_a_warning(scratch_registry):
    with pytest.warns(UserWarning, match="infonce"):
        class MyInfoNCE(RetrievalLoss):
            _alias = "infonce"

    assert RetrievalLoss.find("InfoNCE") is MyInfoNCE
    assert RetrievalLoss.find("InfoNCELoss") is InfoNCELoss


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_non_positive_temperature_is_a_config_error(temperature):
    with pytest.raises(ConfigError):
        InfoNCELoss(temperature=temperature)


def test_logits_not_laid_out_group_after_group_need_group_offsets():
    with pytest.raises(ConfigError, match="group_offsets"):
        InfoNCELoss()(torch.randn(2, 7), torch.tensor([[1, 0, 0], [1, 0, 0]]))


# ---------------------------------------------------------------- InfoNCE

def infonce_reference(logits, positive_columns, temperature, excluded=()):
    """-log softmax of the positive column, written out row by row."""
    total = 0.0
    for i, pos in enumerate(positive_columns):
        row = logits[i] / temperature
        keep = [j for j in range(logits.shape[1]) if (i, j) not in excluded]
        log_denominator = torch.logsumexp(row[keep], dim=0)
        total = total + (log_denominator - row[pos])
    return total / len(positive_columns)


def test_infonce_matches_reference_with_hard_negatives_and_positive_not_first():
    torch.manual_seed(0)
    Q, G, T = 4, 3, 0.1
    logits = torch.randn(Q, Q * G)
    label = torch.zeros(Q, G)
    positions = [0, 2, 1, 0]
    for i, p in enumerate(positions):
        label[i, p] = 1
    positive_columns = [i * G + p for i, p in enumerate(positions)]
    assert_same(lambda x: InfoNCELoss(temperature=T)(x, label),
                lambda x: infonce_reference(x, positive_columns, T), logits)


def test_infonce_gradient_is_softmax_minus_one_hot_over_queries_and_temperature():
    torch.manual_seed(1)
    Q, G, T = 3, 2, 0.5
    logits = torch.randn(Q, Q * G)
    label = torch.tensor([[1, 0]] * Q)
    _, grad = value_and_grad(lambda x: InfoNCELoss(temperature=T)(x, label), logits)
    expected = torch.softmax(logits / T, dim=1)
    expected[torch.arange(Q), torch.arange(Q) * G] -= 1
    assert torch.allclose(grad, expected / (Q * T), atol=1e-6)


def test_infonce_excludes_a_second_positive_of_the_group_from_the_softmax():
    torch.manual_seed(2)
    Q, G = 2, 3
    logits = torch.randn(Q, Q * G)
    label = torch.tensor([[1, 1, 0], [0, 0, 1]])
    assert_same(lambda x: InfoNCELoss()(x, label),
                lambda x: infonce_reference(x, [0, 5], 1.0, excluded={(0, 1)}), logits)


def test_infonce_without_label_takes_first_passage_of_each_group():
    torch.manual_seed(3)
    logits = torch.randn(3, 6)
    assert_same(lambda x: InfoNCELoss()(x, None), lambda x: infonce_reference(x, [0, 2, 4], 1.0), logits)


def test_infonce_with_group_offsets_scores_local_queries_against_global_passages():
    torch.manual_seed(4)
    logits = torch.randn(2, 8)  # 2 local queries (global rows 2, 3) against 4 * 2 gathered passages
    label = torch.tensor([[1, 0], [1, 0]])
    offsets = torch.tensor([4, 6])
    assert_same(lambda x: InfoNCELoss()(x, label, group_offsets=offsets),
                lambda x: infonce_reference(x, [4, 6], 1.0), logits)


def test_infonce_group_without_positive_is_an_input_error():
    with pytest.raises(InputError, match="no passage with a label > 0"):
        InfoNCELoss()(torch.randn(2, 4), torch.tensor([[1, 0], [0, 0]]))


# ---------------------------------------------------------------- KL distillation

def kl_reference(logits, teacher, G, T, teacher_T):
    total = 0.0
    for i in range(logits.shape[0]):
        s = logits[i, i * G:(i + 1) * G] / T
        t = teacher[i] / teacher_T
        log_ps = s - torch.logsumexp(s, 0)
        pt = torch.exp(t) / torch.exp(t).sum()
        total = total + sum(pt[j] * (math.log(pt[j]) - log_ps[j]) for j in range(G))
    return total / logits.shape[0]


def test_kl_distillation_matches_reference_with_both_temperatures():
    torch.manual_seed(5)
    Q, G = 3, 4
    logits, teacher = torch.randn(Q, Q * G), torch.randn(Q, G) * 3
    assert_same(lambda x: KLDistillationLoss(temperature=0.5, teacher_temperature=2.0)(x, teacher),
                lambda x: kl_reference(x, teacher, G, 0.5, 2.0), logits)


def test_kl_distillation_is_zero_when_student_equals_teacher():
    teacher = torch.tensor([[2.0, 1.0, -1.0]])
    assert float(KLDistillationLoss()(teacher.clone(), teacher)) == pytest.approx(0.0, abs=1e-7)


# ---------------------------------------------------------------- Margin-MSE

def margin_mse_reference(logits, teacher, G):
    terms = []
    for i in range(logits.shape[0]):
        s = logits[i, i * G:(i + 1) * G]
        for j in range(1, G):
            terms.append(((s[0] - s[j]) - (teacher[i, 0] - teacher[i, j])) ** 2)
    return sum(terms) / len(terms)


@pytest.mark.parametrize("G", [2, 3])
def test_margin_mse_matches_reference(G):
    torch.manual_seed(6)
    Q = 3
    logits, teacher = torch.randn(Q, Q * G), torch.randn(Q, G) * 4
    assert_same(lambda x: MarginMSELoss()(x, teacher), lambda x: margin_mse_reference(x, teacher, G), logits)


def test_margin_mse_needs_a_negative_in_each_group():
    with pytest.raises(ConfigError, match="at least 2"):
        MarginMSELoss()(torch.randn(2, 2), torch.randn(2, 1))


# ---------------------------------------------------------------- multi-level

def multilevel_reference(logits, grades, G, T):
    total, rows = 0.0, 0
    for i in range(logits.shape[0]):
        y = grades[i].clamp_min(0)
        if y.sum() == 0:
            continue
        s = logits[i, i * G:(i + 1) * G] / T
        log_p = s - torch.logsumexp(s, 0)
        total = total - sum((y[j] / y.sum()) * log_p[j] for j in range(G))
        rows += 1
    return total / rows


def test_multilevel_matches_reference_and_skips_groups_without_relevant_passages():
    torch.manual_seed(7)
    Q, G = 4, 3
    logits = torch.randn(Q, Q * G)
    grades = torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.0, 0.0], [2.0, 2.0, 1.0], [0.0, -1.0, 1.0]])
    assert_same(lambda x: MultiLevelLoss(temperature=0.7)(x, grades),
                lambda x: multilevel_reference(x, grades, G, 0.7), logits)


def test_multilevel_with_one_binary_positive_equals_infonce_over_the_group():
    torch.manual_seed(8)
    group_logits = torch.randn(2, 3)
    logits = torch.block_diag(group_logits[0:1], group_logits[1:2])  # [2, 6]
    label = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    expected = torch.nn.functional.cross_entropy(group_logits, torch.tensor([0, 1]))
    assert torch.allclose(MultiLevelLoss()(logits, label), expected, atol=1e-6)


def test_multilevel_batch_without_any_label_gives_zero_loss_that_still_backpropagates():
    logits = torch.randn(2, 4, requires_grad=True)
    loss = MultiLevelLoss()(logits, torch.zeros(2, 2))
    loss.backward()
    assert float(loss.detach()) == 0.0 and logits.grad is not None
