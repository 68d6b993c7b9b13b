"""Margin-MSE: regress the student's positive-negative score margin onto the teacher's."""
from __future__ import annotations

from typing import Any

import torch

from densekit.errors import ConfigError
from densekit.modeling.losses.base import RetrievalLoss, check_label, group_columns


class MarginMSELoss(RetrievalLoss):
    """Margin-MSE distillation (Hofstaetter et al. 2020, "Improving Efficient Neural Ranking Models
    with Cross-Architecture Knowledge Distillation", arXiv:2010.02666).

    What it optimizes: the student need not reproduce the teacher's scores, only their differences.
    With the first passage of each group as the positive ``p+`` and every other group passage ``p-_j``
    as a negative, the loss is the mean over queries and negatives of
    ``((s(q,p+) - s(q,p-_j)) - (t(q,p+) - t(q,p-_j)))**2``. With group size 2 this is exactly the
    paper's triple loss; larger groups average over all (positive, negative) pairs. Scores are used
    as they are (no temperature): the margins live on the teacher's scale. In-batch passages of other
    queries have no teacher score and do not take part.

    Inputs:
        logits: ``[Q, P]`` student scores; group columns picked as in every RetrievalLoss.
        label: ``[Q, G]`` teacher scores, positive first, ``G >= 2``.
        group_offsets: optional ``[Q]`` first column of each query's group.

    Example::

        >>> import torch
        >>> from densekit.modeling.losses import RetrievalLoss
        >>> loss_fn = RetrievalLoss.find("margin_mse")()
        >>> student = torch.tensor([[3.0, 1.0]])          # one query, (positive, negative)
        >>> teacher = torch.tensor([[9.0, 7.0]])          # same margin (2.0) on a different scale
        >>> float(loss_fn(student, teacher))
        0.0
    """

    _alias = ("margin_mse", "marginmse")

    def forward(self, logits: torch.Tensor, label: torch.Tensor,
                group_offsets: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        check_label(logits, label)
        if label.shape[1] < 2:
            raise ConfigError("margin_mse needs groups of at least 2 passages (a positive and a negative); "
                              "Fix: set DataArguments.group_size >= 2")
        student = logits.gather(1, group_columns(logits, label.shape[1], group_offsets)).float()
        teacher = label.to(student).detach()
        student_margin = student[:, :1] - student[:, 1:]
        teacher_margin = teacher[:, :1] - teacher[:, 1:]
        return ((student_margin - teacher_margin) ** 2).mean()
