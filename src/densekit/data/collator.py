"""RetrievalCollator: turn a list of (query, passages, labels) examples into padded model inputs.

Tokenization, truncation to the query / passage budgets, an appended eos token for last-token pooling
models, and padding to the longest row of the batch. ``tokenize_texts`` and ``pad_token_lists`` are the
two halves, exposed so batched encoding (:mod:`densekit.evaluation.encoding`) tokenizes exactly as
training does.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch
from transformers import BatchEncoding

from densekit.data.data_args import DataArguments
from densekit.errors import ConfigError, InputError
from densekit.modeling.encoding_spec import resolve_max_len, tokenizer_limit
from densekit.modeling.losses.false_negatives import NO_ROW, text_hashes


def tokenize_texts(tokenizer: Any, texts: Sequence[str], max_len: Optional[int],
                   append_eos: bool = False) -> dict[str, list[list[int]]]:
    """Tokenize ``texts`` without padding: ``{"input_ids": [[...], ...], "attention_mask": ..., ...}``.

    ``max_len`` counts every token, special tokens and the appended eos included; ``None`` means the
    tokenizer's own limit (no truncation when it has none). With ``append_eos`` each row is truncated
    one token shorter and then ends with ``eos_token_id`` (not added twice when already there).
    """
    if max_len is None:
        max_len = tokenizer_limit(tokenizer)
    eos_id = getattr(tokenizer, "eos_token_id", None)
    if append_eos and eos_id is None:
        raise ConfigError(
            f"append_eos=True but the tokenizer ({type(tokenizer).__name__}) has no eos token; "
            "set tokenizer.eos_token, or use a pooling that does not need it (cls or mean)."
        )
    budget = None if max_len is None else max_len - (1 if append_eos else 0)
    if budget is not None and budget < 1:
        raise ConfigError(f"max length {max_len} leaves no room for text; use a larger query/passage max length.")
    encoded = tokenizer(
        list(texts), truncation=budget is not None, max_length=budget, padding=False,
        return_attention_mask=True,
    )
    out = {key: list(value) for key, value in encoded.items()}
    if append_eos:
        ids_rows = out["input_ids"]
        for row, ids in enumerate(ids_rows):
            if ids and ids[-1] == eos_id:
                continue
            ids_rows[row] = ids + [eos_id]
            for key, rows in out.items():
                if key == "input_ids":
                    continue
                values = rows[row]
                extra = 1 if key == "attention_mask" else (values[-1] if values else 0)
                rows[row] = values + [extra]
    return out


def _pad_id(tokenizer: Any) -> int:
    """Padding positions are masked out, so their id only has to be a valid token id: the pad token,
    else eos (the seeds set ``pad_token_id = eos_token_id``, which is None for BERT tokenizers), else 0."""
    for candidate in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if candidate is not None:
            return int(candidate)
    return 0


def pad_token_lists(tokenizer: Any, features: dict[str, Sequence[Sequence[int]]],
                    rows: Optional[Sequence[int]] = None) -> BatchEncoding:
    """Pad (a subset ``rows`` of) token lists to the longest row, on the tokenizer's ``padding_side``.

    Returns a ``BatchEncoding`` of int64 tensors with the same keys as ``features``.
    """
    index = range(len(features["input_ids"])) if rows is None else rows
    lengths = [len(features["input_ids"][i]) for i in index]
    width = max(lengths, default=0)
    left = getattr(tokenizer, "padding_side", "right") == "left"
    pad_values = {"input_ids": _pad_id(tokenizer)}
    batch = {}
    for key, lists in features.items():
        array = np.full((len(lengths), width), pad_values.get(key, 0), dtype=np.int64)
        for out_row, (i, length) in enumerate(zip(index, lengths)):
            if length:
                if left:
                    array[out_row, width - length:] = lists[i]
                else:
                    array[out_row, :length] = lists[i]
        batch[key] = torch.from_numpy(array)
    return BatchEncoding(batch)


class RetrievalCollator:
    """Collate examples ``{"query": str, "passage": list[str], "label": list[float]}`` into model inputs.

    Returns ``{"query": BatchEncoding [B, Tq], "passage": BatchEncoding [B*G, Tp], "label": Tensor [B, G]}``
    with only the keys the examples have. Passages of all groups are flattened in order, so query ``i``'s
    group is rows ``i*G .. i*G+G-1``. For in-batch false-negative masking (see
    :mod:`densekit.modeling.losses.false_negatives`) it adds what the loss compares passages by:
    ``passage_row`` ``[B, G]`` (corpus rows, when the examples have them), ``passage_hash`` ``[B, G]``
    (a stable 64-bit hash of every passage text) and ``positive_rows`` ``[B, K]`` (every judged positive
    row of each query, padded with -1, when the examples have them).

    Token budgets: ``data_args.query_max_len`` / ``passage_max_len`` when set, else the model's limit.
    The model's limit is known once the collator is bound to the model it serves (:meth:`bind_model`,
    which :class:`~densekit.RetrievalTrainer` and :class:`~densekit.RetrievalEvaluator` call), so training,
    IR metrics and evaluation truncate the same way (:mod:`densekit.modeling.encoding_spec`);
    ``model_max_length`` gives that limit by hand, and without either the tokenizer's own limit applies.
    """

    def __init__(self, data_args: DataArguments, tokenizer: Any, append_eos: bool = False,
                 model_max_length: Optional[int] = None) -> None:
        self.data_args = data_args
        self.tokenizer = tokenizer
        self.append_eos = bool(append_eos)
        self.model_max_length = model_max_length
        self._model: Any = None

    def bind_model(self, model: Any) -> "RetrievalCollator":
        """Take unset budgets from ``model`` (its ``max_length``, position limit checks included)."""
        self._model = model
        return self

    def max_len(self, kind: str) -> Optional[int]:
        """The resolved token budget of ``kind`` ("query" or "passage")."""
        explicit = getattr(self.data_args, f"{kind}_max_len", None)
        if self._model is not None:
            return resolve_max_len(kind, explicit, self._model, self.tokenizer)
        return explicit or self.model_max_length or tokenizer_limit(self.tokenizer)

    @property
    def query_max_len(self) -> Optional[int]:
        return self.max_len("query")

    @property
    def passage_max_len(self) -> Optional[int]:
        return self.max_len("passage")

    def _tokenize(self, texts: list[str], max_len: Optional[int]) -> BatchEncoding:
        return pad_token_lists(self.tokenizer, tokenize_texts(self.tokenizer, texts, max_len, self.append_eos))

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not examples:
            raise InputError("cannot collate an empty batch", fix="drop empty batches before the collator")
        batch: dict[str, Any] = {}
        if any("query" in ex for ex in examples):
            queries = [ex.get("query") for ex in examples]
            for i, text in enumerate(queries):
                if not isinstance(text, str):
                    raise InputError(f"example {i} has query {text!r}; every example needs a query string")
            batch["query"] = self._tokenize(queries, self.query_max_len)
        if any("passage" in ex for ex in examples):
            groups = [[ex["passage"]] if isinstance(ex.get("passage"), str) else ex.get("passage")
                      for ex in examples]
            sizes = {len(g) if isinstance(g, (list, tuple)) else -1 for g in groups}
            if len(sizes) != 1 or -1 in sizes:
                raise InputError(
                    f"passage groups have sizes {sorted(sizes)}; every example needs a list of the same "
                    "number of passages", fix="set group_size in DataArguments so all groups match")
            flat = [text for group in groups for text in group]
            for i, text in enumerate(flat):
                if not isinstance(text, str):
                    raise InputError(f"passage {i % len(groups[0])} of example {i // len(groups[0])} is {text!r}, "
                                     "not a string")
            batch["passage"] = self._tokenize(flat, self.passage_max_len)
        if any("label" in ex for ex in examples):
            labels = [ex.get("label") for ex in examples]
            if any(lab is None for lab in labels):
                raise InputError("some examples have a label and others do not; give every example labels")
            try:
                batch["label"] = torch.tensor(labels, dtype=torch.float32)
            except (ValueError, TypeError) as err:
                raise InputError(f"labels are not equal-length lists of numbers: {err}") from err
            if "passage" in batch and batch["label"].numel() != batch["passage"]["input_ids"].size(0):
                raise InputError(f"labels have shape {tuple(batch['label'].shape)} but there are "
                                 f"{batch['passage']['input_ids'].size(0)} passages; give one label per passage")
        if any("passage_row" in ex for ex in examples):
            # corpus rows of the passages: IR metrics tell a repeated document from a tie by them, and
            # the loss a judged positive of another query from a true negative
            batch["passage_row"] = torch.tensor([ex["passage_row"] for ex in examples], dtype=torch.int64)
        if "passage" in batch and "query" in batch:
            # the same text under two document ids is the same passage for false-negative masking (only
            # batches that score queries against passages need it)
            batch["passage_hash"] = torch.tensor(text_hashes(flat), dtype=torch.int64).reshape(len(examples), -1)
        if any("positive_rows" in ex for ex in examples):
            batch["positive_rows"] = pad_rows([ex.get("positive_rows", ()) for ex in examples])
        return batch


def pad_rows(row_lists: Sequence[Sequence[int]]) -> torch.Tensor:
    """Lists of corpus rows of different lengths as one int64 ``[B, longest]`` tensor padded with ``NO_ROW``.

    Each example's judged positive rows (``positive_rows``) have their own count (one query has 2,
    another 400); the loss reads the padding as "no row".
    """
    width = max((len(rows) for rows in row_lists), default=0)
    out = torch.full((len(row_lists), width), NO_ROW, dtype=torch.int64)
    for i, rows in enumerate(row_lists):
        if len(rows):
            out[i, :len(rows)] = torch.as_tensor(np.asarray(rows, dtype=np.int64))
    return out
