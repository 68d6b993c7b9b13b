"""InfoNCE: contrastive cross-entropy of each query's positive against in-batch and hard negatives."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from densekit.errors import InputError
from densekit.modeling.losses.base import (
    RetrievalLoss, check_label, check_mask, group_columns, resolve_temperature,
)


class InfoNCELoss(RetrievalLoss):
    """InfoNCE / DPR's negative log-likelihood with in-batch and hard negatives.

    What it optimizes: for every query ``q`` with positive ``p+`` the loss is
    ``-log( exp(s(q,p+)/T) / sum_p exp(s(q,p)/T) )``, the sum running over **every** passage column of
    ``logits``: the query's own hard negatives and all other queries' passages (in-batch negatives). The
    result is the mean over queries. A lower temperature ``T`` sharpens the softmax; with cosine scores a
    value around 0.01-0.05 is usual, with unnormalized dot products 1.0 (van den Oord et al. 2018,
    "Representation Learning with Contrastive Predictive Coding"; Karpukhin et al. 2020, "Dense Passage
    Retrieval for Open-Domain Question Answering").

    Inputs:
        logits: ``[Q, P]`` scores of every query against every passage in the (global) batch.
        label: ``[Q, G]`` relevance of the query's own group. The positive is the first passage holding
            the group's highest label (binary data: the ``label == 1`` one; Trove's datasets put it
            first). Other passages of the group with a label > 0 are left out of the softmax: a second
            positive is not a negative. A group with no label > 0 is an error. ``None`` means "first
            passage of each group is the positive", with ``G = P // Q``.
        group_offsets: optional ``[Q]`` first column of each query's group (default ``i * G``).
        mask: optional bool ``[Q, P]``: True columns are left out of that query's softmax (in-batch false
            negatives, :mod:`densekit.modeling.losses.false_negatives`); the positive never is. The loss
            then equals InfoNCE computed with those columns removed.

    Temperature comes from the ``temperature`` argument, else ``ModelArguments.temperature``, else 1.0.

    Example::

        >>> import torch
        >>> from densekit.modeling.losses import RetrievalLoss
        >>> loss_fn = RetrievalLoss.find("infonce")(temperature=0.05)
        >>> logits = torch.randn(2, 6)                  # 2 queries x (2 queries * group of 3)
        >>> label = torch.tensor([[1, 0, 0], [1, 0, 0]])  # positive first, two hard negatives
        >>> loss_fn(logits, label).shape
        torch.Size([])
    """

    _alias = ("infonce", "contrastive")
    accepts_mask = True

    def __init__(self, args: Any = None, *, temperature: float | None = None, **kwargs: Any) -> None:
        super().__init__(args, **kwargs)
        self.temperature = resolve_temperature(args, temperature)

    def forward(self, logits: torch.Tensor, label: torch.Tensor | None = None,
                group_offsets: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                **kwargs: Any) -> torch.Tensor:
        columns, positive_in_group = group_positives(logits, label, group_offsets)
        n_queries = logits.shape[0]
        # first passage holding the group's highest label (argmax returns the first maximum)
        chosen = label_or_first(logits, label).argmax(dim=1)
        target = columns.gather(1, chosen[:, None]).squeeze(1)

        other_positive = positive_in_group.clone()
        other_positive[torch.arange(n_queries, device=columns.device), chosen] = False
        excluded = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
        excluded.scatter_(1, columns, other_positive)
        mask = check_mask(logits, mask)
        if mask is not None:
            excluded |= mask
        excluded[torch.arange(n_queries, device=logits.device), target] = False  # never the positive
        scores = logits.float() / self.temperature
        if bool(excluded.any()):
            scores = scores.masked_fill(excluded, float("-inf"))
        return F.cross_entropy(scores, target)


def label_or_first(logits: torch.Tensor, label: torch.Tensor | None) -> torch.Tensor:
    """``label`` on ``logits``' device, or, without one, "the first passage of each group is the positive"
    with ``G = P // Q``."""
    if label is not None:
        return label.to(logits.device)
    n_queries, n_passages = logits.shape
    group_size = max(n_passages // max(n_queries, 1), 1)
    label = torch.zeros(n_queries, group_size, device=logits.device)
    label[:, 0] = 1
    return label


def group_positives(logits: torch.Tensor, label: torch.Tensor | None,
                    group_offsets: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(columns [Q, G], positive [Q, G])``: each query's group columns and which hold a label > 0.

    A group without any label > 0 is an InputError: a contrastive loss has nothing to pull up then.
    """
    label = label_or_first(logits, label)
    check_label(logits, label)
    columns = group_columns(logits, label.shape[1], group_offsets)
    positive_in_group = label > 0
    missing = ~positive_in_group.any(dim=1)
    if bool(missing.any()):
        row = int(missing.nonzero()[0])
        raise InputError(
            f"query row {row} of the batch has no passage with a label > 0 in its group, so InfoNCE "
            "has no positive to pull up",
            fix="keep at least one positive per query (e.g. MaterializedQRelConfig min_score=1), "
                "or use a loss for graded labels such as 'multilevel'",
        )
    return columns, positive_in_group
