"""DPR's reader objective: passage selection cross-entropy + marginal likelihood of the answer spans.

Per question, passage 0 is the positive and the others are negatives:

- selection: cross-entropy of the ``[CLS]`` relevance logits over the question's passages, target 0;
- span: ``-log sum_k p_start(s_k) * p_end(e_k)`` over every occurrence ``(s_k, e_k)`` of an answer in the
  positive passage (DPR's ``_calc_mml``), with start and end distributions softmaxed over the sequence.

Why the marginal over occurrences: the same answer string often occurs more than once in a passage and the
data do not say which occurrence the question was written on; maximising their summed probability lets the
model pick. Two deliberate differences from DPR, both in its spirit: padding positions (and padded passages
of questions with too few negatives) are masked out of the softmaxes, and the loss is the mean over the
batch's questions instead of their sum, so the learning rate does not depend on the batch size.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

NEG = -1e4  # large negative logit for masked positions (fp16-safe)


def reader_loss(start_logits: torch.Tensor, end_logits: torch.Tensor, relevance_logits: torch.Tensor, *,
                attention_mask: torch.Tensor, passage_mask: Optional[torch.Tensor], start_positions: torch.Tensor,
                end_positions: torch.Tensor, span_mask: torch.Tensor) -> torch.Tensor:
    """Mean over questions of selection + span loss.

    Shapes: logits ``[N, M, L]`` (relevance ``[N, M]``), ``attention_mask [N, M, L]``, ``passage_mask [N, M]``
    (False for padding passages), ``start/end_positions [N, S]`` positions in the positive's sequence,
    ``span_mask [N, S]`` (False for padding spans; every question has at least one span).
    """
    relevance = relevance_logits.float()
    if passage_mask is not None:
        relevance = relevance.masked_fill(~passage_mask.bool(), NEG)
    targets = torch.zeros(relevance.shape[0], dtype=torch.long, device=relevance.device)
    selection = F.cross_entropy(relevance, targets)

    valid = attention_mask[:, 0].bool()
    start_lp = F.log_softmax(start_logits[:, 0].float().masked_fill(~valid, NEG), dim=-1)
    end_lp = F.log_softmax(end_logits[:, 0].float().masked_fill(~valid, NEG), dim=-1)
    span_lp = start_lp.gather(1, start_positions) + end_lp.gather(1, end_positions)
    span_lp = span_lp.masked_fill(~span_mask.bool(), float("-inf"))
    span = -torch.logsumexp(span_lp, dim=1).mean()
    return selection + span
