"""Batched encoding of many texts into a float32 matrix, with as little padding as possible.

Texts are tokenized once in bulk (the fast tokenizer is much quicker on a list than one by one), sorted
by token count so that each batch holds texts of similar length, padded per batch, encoded under
``torch.inference_mode``, and put back in input order. On a corpus with mixed lengths this cuts the
padded tokens the model has to process several-fold against batching in file order.

``iter_encode_blocks`` does the same per fixed-size block and yields each block as soon as it is done,
so a caller can stream a corpus larger than memory to disk; ``encode_texts`` returns everything at once.
"""
from __future__ import annotations

import contextlib
import itertools
from typing import Any, Iterable, Iterator, Literal, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from densekit.data.collator import pad_token_lists, tokenize_texts
from densekit.errors import ConfigError, InputError

Kind = Literal["query", "passage"]


def _encode_fn(retriever: Any, kind: str):
    if kind == "query":
        return retriever.encode_query
    if kind == "passage":
        return retriever.encode_passage
    raise ConfigError(f"kind={kind!r} is unknown; use 'query' or 'passage'.")


def _device_of(retriever: Any) -> torch.device:
    for parameter in retriever.parameters():
        return parameter.device
    return torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Dropout off while encoding (embeddings must be deterministic); the previous mode comes back after."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _check_texts(texts: Sequence[str], start: int) -> None:
    for offset, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"text {start + offset} is {type(text).__name__} {text!r}, not a string",
                             fix="pass a sequence of strings (format titles and texts first)")


def _encode_block(encode: Any, retriever: Any, tokenizer: Any, block: list[str], *, batch_size: int,
                  max_len: Optional[int], append_eos: bool, device: torch.device, bar: Any) -> np.ndarray:
    """Tokenize one block, encode it longest-first in batches, return rows in the block's order."""
    features = tokenize_texts(tokenizer, block, max_len, append_eos)
    lengths = np.fromiter((len(ids) for ids in features["input_ids"]), dtype=np.int64, count=len(block))
    order = np.argsort(-lengths, kind="stable")  # longest first: an out-of-memory shows up at once
    out: Optional[np.ndarray] = None
    with _eval_mode(retriever), torch.inference_mode():
        for lo in range(0, len(order), batch_size):
            rows = order[lo:lo + batch_size]
            batch = pad_token_lists(tokenizer, features, rows.tolist()).to(device)
            embs = encode(batch).float().cpu().numpy()
            if out is None:
                out = np.empty((len(block), embs.shape[1]), dtype=np.float32)
            out[rows] = embs
            bar.update(len(rows))
    assert out is not None
    return out


def iter_encode_blocks(
    retriever: Any,
    tokenizer: Any,
    texts: Iterable[str],
    *,
    kind: Kind,
    block_size: int = 65_536,
    batch_size: int = 64,
    max_len: Optional[int] = None,
    append_eos: Optional[bool] = None,
    device: Optional[str | torch.device] = None,
    show_progress: bool = True,
    desc: Optional[str] = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, embeddings)`` for consecutive blocks of ``block_size`` texts (the last may be shorter).

    ``texts`` may be any iterable (a generator over a corpus store too); it is read one block at a time.
    ``embeddings`` is float32 ``[n_block, d]`` in input order: rows ``start .. start+n_block-1`` of the
    full result. Sorting by length happens within a block. ``max_len`` defaults to the retriever's
    ``max_length`` (then the tokenizer's limit), ``append_eos`` to the retriever's ``append_eos_token``,
    ``device`` to the retriever's. One progress bar counts texts over all blocks. Inference mode and
    eval mode are on only while a block is encoded, never while the caller holds a block.
    """
    encode = _encode_fn(retriever, kind)
    if batch_size < 1 or block_size < 1:
        raise ConfigError(f"batch_size and block_size must be positive, got {batch_size} and {block_size}.")
    if max_len is None:
        from densekit.modeling.encoding_spec import tower_of

        max_len = getattr(tower_of(retriever, kind), "max_length", None)
    if append_eos is None:
        append_eos = bool(getattr(retriever, "append_eos_token", False))
    device = torch.device(device) if device is not None else _device_of(retriever)
    total = len(texts) if hasattr(texts, "__len__") else None
    iterator = iter(texts)
    start = 0
    with tqdm(total=total, desc=desc or f"encode {kind}", unit="text", disable=not show_progress) as bar:
        while True:
            block = list(itertools.islice(iterator, block_size))
            if not block:
                return
            _check_texts(block, start)
            yield start, _encode_block(encode, retriever, tokenizer, block, batch_size=batch_size,
                                       max_len=max_len, append_eos=append_eos, device=device, bar=bar)
            start += len(block)


def encode_texts(
    retriever: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    kind: Kind,
    batch_size: int = 64,
    max_len: Optional[int] = None,
    append_eos: Optional[bool] = None,
    device: Optional[str | torch.device] = None,
    show_progress: bool = True,
    desc: Optional[str] = None,
) -> np.ndarray:
    """Encode ``texts`` (already formatted) into a float32 ``[len(texts), d]`` array in input order.

    ``kind`` picks ``encode_query`` or ``encode_passage``; see :func:`iter_encode_blocks` for defaults.
    """
    blocks = [emb for _, emb in iter_encode_blocks(
        retriever, tokenizer, texts, kind=kind, block_size=max(len(texts), 1), batch_size=batch_size,
        max_len=max_len, append_eos=append_eos, device=device, show_progress=show_progress, desc=desc,
    )]
    if not blocks:
        raise InputError("no texts to encode", fix="pass at least one text")
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
