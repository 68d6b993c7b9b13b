"""Multi-positive InfoNCE: every labeled positive of a query's group counts as a positive."""
from __future__ import annotations

from typing import Any

import torch

from densekit.modeling.losses.base import RetrievalLoss, check_mask, resolve_temperature
from densekit.modeling.losses.infonce import group_positives


class MultiPositiveInfoNCELoss(RetrievalLoss):
    """InfoNCE with a set of positives per query, for collections with many judged positives per query.

    Why: with one sampled positive per step, plain InfoNCE on a query with 40 relevant documents treats
    the other relevant documents of its group as absent and learns from one at a time; here every
    labeled positive of the group pulls the query up at once, and none of them is a negative.

    Formula (the probability mass of the positive set; Khosla et al. 2020 call it ``L_in``): for query
    ``q`` with positive columns ``P(q)`` (label > 0 in its own group) and the columns ``U(q)`` its mask
    leaves in (all columns without a mask)::

        loss(q) = -log( sum_{p in P(q)} exp(s(q,p)/T) / sum_{j in U(q)} exp(s(q,j)/T) )

    and the loss is the mean over queries. ``P(q)`` is always in ``U(q)`` (positives are never masked).
    With a single positive per group it is exactly :class:`~densekit.modeling.losses.infonce.InfoNCELoss`.

    Inputs are InfoNCE's: ``logits [Q, P]``, ``label [Q, G]`` (every label > 0 is a positive; ``None``:
    the first passage of each group), ``group_offsets`` and ``mask`` (bool ``[Q, P]``, True = left out).
    Temperature as for InfoNCE.
    """

    _alias = ("multi_positive_infonce", "multipositive", "multi_positive")
    accepts_mask = True

    def __init__(self, args: Any = None, *, temperature: float | None = None, **kwargs: Any) -> None:
        super().__init__(args, **kwargs)
        self.temperature = resolve_temperature(args, temperature)

    def forward(self, logits: torch.Tensor, label: torch.Tensor | None = None,
                group_offsets: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                **kwargs: Any) -> torch.Tensor:
        columns, positive_in_group = group_positives(logits, label, group_offsets)
        positive = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
        positive.scatter_(1, columns, positive_in_group)
        mask = check_mask(logits, mask)
        kept = ~mask | positive if mask is not None else torch.ones_like(positive)
        scores = logits.float() / self.temperature
        minus_inf = torch.tensor(float("-inf"), device=scores.device)
        log_positive = torch.logsumexp(torch.where(positive, scores, minus_inf), dim=1)
        log_all = torch.logsumexp(torch.where(kept, scores, minus_inf), dim=1)
        return (log_all - log_positive).mean()
