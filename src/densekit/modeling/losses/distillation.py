"""KL distillation: match the student's softmax over each query's group to a teacher's."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from densekit.errors import ConfigError
from densekit.modeling.losses.base import RetrievalLoss, check_label, group_columns, resolve_temperature


class KLDistillationLoss(RetrievalLoss):
    """Listwise distillation: KL divergence from the teacher's to the student's group distribution.

    What it optimizes: for each query, the teacher's scores over its group of ``G`` passages (in
    ``label``, e.g. cross-encoder logits) become a distribution ``p_t = softmax(label / T_teacher)``;
    the student's scores over the same passages become ``p_s = softmax(s / T)``. The loss is
    ``KL(p_t || p_s) = sum_j p_t[j] * (log p_t[j] - log p_s[j])``, averaged over queries. Only the
    group's passages take part: in-batch passages of other queries have no teacher score. (Hinton et al.
    2015, "Distilling the Knowledge in a Neural Network"; used for dense retrievers by e.g. RocketQAv2,
    Ren et al. 2021, and Trove's distillation recipes.)

    Inputs:
        logits: ``[Q, P]`` student scores; the group columns are picked as in every RetrievalLoss.
        label: ``[Q, G]`` teacher scores (any real numbers, not probabilities).
        group_offsets: optional ``[Q]`` first column of each query's group.

    ``temperature`` (student; default ``ModelArguments.temperature`` or 1.0) and ``teacher_temperature``
    (default 1.0) divide the scores before the softmax.

    Example::

        >>> import torch
        >>> from densekit.modeling.losses import RetrievalLoss
        >>> loss_fn = RetrievalLoss.find("kl")(teacher_temperature=2.0)
        >>> student = torch.randn(2, 8)                  # 2 queries x groups of 4
        >>> teacher = torch.randn(2, 4) * 5               # cross-encoder scores of each group
        >>> float(loss_fn(student, teacher)) >= 0
        True
    """

    _alias = ("kl", "distillation", "kl_distillation")

    def __init__(self, args: Any = None, *, temperature: float | None = None,
                 teacher_temperature: float | None = None, **kwargs: Any) -> None:
        super().__init__(args, **kwargs)
        self.temperature = resolve_temperature(args, temperature)
        self.teacher_temperature = float(teacher_temperature if teacher_temperature is not None
                                         else getattr(args, "teacher_temperature", None) or 1.0)
        if not self.teacher_temperature > 0:
            raise ConfigError(f"teacher_temperature must be > 0, got {self.teacher_temperature}")

    def forward(self, logits: torch.Tensor, label: torch.Tensor,
                group_offsets: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        check_label(logits, label)
        student = logits.gather(1, group_columns(logits, label.shape[1], group_offsets))
        log_p_student = F.log_softmax(student.float() / self.temperature, dim=1)
        log_p_teacher = F.log_softmax(label.to(log_p_student).detach() / self.teacher_temperature, dim=1)
        per_query = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1)
        return per_query.mean()
