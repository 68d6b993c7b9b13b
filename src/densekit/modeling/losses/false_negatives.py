"""In-batch false negatives: which passage columns must not count as negatives of which query.

Why: with in-batch negatives every passage of the batch is a negative of every other query. On a
collection whose topics overlap (NFCorpus: ~42 judged positives per query) many of those "negatives"
are judged positives of the query, or the very same document as its positive sampled for another
query; contrastive training then pushes the query away from its own relevant documents.

:func:`false_negative_mask` says, for every query ``i`` and passage column ``j`` of the score matrix,
whether ``j`` is left out of query ``i``'s softmax. Column ``j`` is masked for query ``i`` when ``j`` is
not one of query ``i``'s own labeled positives (label > 0 in its own group) and

* its corpus row is a judged positive of query ``i`` (``positive_rows``), or
* its corpus row is the row of one of query ``i``'s own labeled positives (the same document twice), or
* its text is the text of one of query ``i``'s own labeled positives (``passage_hash``: the same text
  under another document id).

Nothing else is masked: a hard negative or another query's passage that is neither judged relevant to
``i`` nor a copy of ``i``'s positive stays a negative, and the own positives are never masked. Losses
read the mask as "logit -> -inf" (:class:`~densekit.modeling.losses.infonce.InfoNCELoss`,
:class:`~densekit.modeling.losses.multi_positive.MultiPositiveInfoNCELoss`).
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Optional

import torch

from densekit.errors import ConfigError
from densekit.modeling.losses.base import group_columns

#: Pad value of ``positive_rows`` (and of unknown passage rows): matches nothing.
NO_ROW = -1


def text_hash(text: str) -> int:
    """A stable signed 64-bit hash of ``text`` (same in every process and run, unlike ``hash``)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def text_hashes(texts: Iterable[str]) -> list[int]:
    """:func:`text_hash` of every text, in order."""
    return [text_hash(text) for text in texts]


def false_negative_mask(label: torch.Tensor, passage_row: Optional[torch.Tensor] = None,
                        positive_rows: Optional[torch.Tensor] = None,
                        passage_hash: Optional[torch.Tensor] = None,
                        group_offsets: Optional[torch.Tensor] = None,
                        num_passages: Optional[int] = None) -> torch.Tensor:
    """Bool ``[Q, P]``: True where passage column ``j`` must not be a negative of query ``i`` (module doc).

    Args:
        label: ``[Q, G]`` labels of each query's own group; label > 0 marks its own positives.
        passage_row: ``[P]`` corpus row of every passage column (``NO_ROW`` where unknown).
        positive_rows: ``[Q, K]`` corpus rows of every judged positive of each query, padded with
            ``NO_ROW``; ``None``: only the own labeled positives' rows are compared.
        passage_hash: ``[P]`` :func:`text_hash` of every passage column; ``None``: no text comparison.
        group_offsets: ``[Q]`` first column of each query's group (default ``i * G``).
        num_passages: ``P``, needed only when neither ``passage_row`` nor ``passage_hash`` is given.
    """
    n_queries, group_size = label.shape
    known = passage_row if passage_row is not None else passage_hash
    n_passages = int(known.numel()) if known is not None else num_passages
    if n_passages is None:
        raise ConfigError("false_negative_mask needs passage_row, passage_hash or num_passages.")
    device = label.device
    columns = group_columns(torch.empty(n_queries, n_passages, device=device), group_size, group_offsets)
    own_positive = label > 0
    mask = torch.zeros(n_queries, n_passages, dtype=torch.bool, device=device)
    if passage_row is not None:
        mask |= _row_matches(passage_row.reshape(-1).to(device).long(), columns, own_positive,
                             None if positive_rows is None else positive_rows.to(device).long())
    if passage_hash is not None:
        # hashes -> dense text ids (equal text, equal id), then compared exactly like rows
        _, text_ids = torch.unique(passage_hash.reshape(-1).to(device).long(), return_inverse=True)
        mask |= _row_matches(text_ids, columns, own_positive, None)
    own_columns = torch.zeros_like(mask)
    own_columns.scatter_(1, columns, own_positive)
    return mask & ~own_columns


def _row_matches(rows: torch.Tensor, columns: torch.Tensor, own_positive: torch.Tensor,
                 positive_rows: Optional[torch.Tensor]) -> torch.Tensor:
    """``[Q, P]``: column ``j``'s row is among query ``i``'s positive rows (judged, or its own positives').

    Pairs (query, row) are encoded as one int64 key and looked up with ``torch.isin`` (sort based), so
    memory is ``O(Q * (P + K))``, not ``O(Q * P * K)``: a query may have hundreds of judged positives.
    """
    n_queries = columns.shape[0]
    own_rows = torch.where(own_positive, rows[columns], torch.full_like(columns, NO_ROW))
    wanted = own_rows if positive_rows is None else torch.cat([own_rows, positive_rows.reshape(n_queries, -1)], 1)
    base = int(max(int(rows.max()), int(wanted.max()), 0)) + 1
    query_index = torch.arange(n_queries, device=rows.device)[:, None]
    wanted_keys = (query_index * base + wanted)[wanted >= 0]
    candidate = query_index * base + rows[None, :]
    return torch.isin(candidate, wanted_keys) & (rows >= 0)[None, :]
