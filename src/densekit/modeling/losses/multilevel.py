"""Listwise softmax cross-entropy with graded relevance labels as the target distribution."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from densekit.modeling.losses.base import RetrievalLoss, check_label, group_columns, resolve_temperature


class MultiLevelLoss(RetrievalLoss):
    """Softmax cross-entropy over each query's group with graded labels normalized into the target.

    What it optimizes: labels ``y_j >= 0`` (e.g. 0/1/2/3 from qrels) become a target distribution
    ``y_j / sum_k y_k`` over the query's group; the loss is the cross-entropy
    ``-sum_j (y_j / sum_k y_k) * log softmax(s / T)_j``, averaged over queries whose group has any label
    above 0 (the others carry no signal and are skipped). It is ListNet's top-one loss with linear label
    normalization (Cao et al. 2007, "Learning to Rank: From Pairwise Approach to Listwise Approach"),
    shown by Bruch et al. 2019 ("An Analysis of the Softmax Cross Entropy Loss for Learning-to-Rank with
    Binary Relevance") to bound NDCG. Higher grades get proportionally more probability mass; with
    binary labels and one positive it is InfoNCE restricted to the group. Negative labels count as 0.
    In-batch passages of other queries are unlabeled and do not take part.

    Inputs:
        logits: ``[Q, P]`` scores; group columns picked as in every RetrievalLoss.
        label: ``[Q, G]`` graded relevance of the group's passages.
        group_offsets: optional ``[Q]`` first column of each query's group.

    Example::

        >>> import torch
        >>> from densekit.modeling.losses import RetrievalLoss
        >>> loss_fn = RetrievalLoss.find("multilevel")()
        >>> logits = torch.randn(2, 6)
        >>> label = torch.tensor([[3, 1, 0], [2, 2, 0]])
        >>> loss_fn(logits, label).shape
        torch.Size([])
    """

    _alias = ("multilevel", "listnet", "graded_softmax")

    def __init__(self, args: Any = None, *, temperature: float | None = None, **kwargs: Any) -> None:
        super().__init__(args, **kwargs)
        self.temperature = resolve_temperature(args, temperature)

    def forward(self, logits: torch.Tensor, label: torch.Tensor,
                group_offsets: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        check_label(logits, label)
        scores = logits.gather(1, group_columns(logits, label.shape[1], group_offsets)).float()
        grades = label.to(scores).detach().clamp_min(0)
        totals = grades.sum(dim=1)
        labelled = totals > 0
        if not bool(labelled.any()):
            return scores.sum() * 0.0  # keeps the graph (and DDP) intact, contributes nothing
        target = grades[labelled] / totals[labelled, None]
        log_probs = F.log_softmax(scores[labelled] / self.temperature, dim=1)
        return -(target * log_probs).sum(dim=1).mean()
