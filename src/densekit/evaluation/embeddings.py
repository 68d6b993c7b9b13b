"""Embeddings of a corpus or query set, through the shared cache when there is one.

This is the one place that decides whether vectors come from the cache or from the encoder. The key of
every lookup is made at the moment of use from the encoding spec and the model's current weights
(:func:`densekit.modeling.encoding_spec.embedding_key`), so a model changed in place since the last call
is never served its old vectors.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from densekit.cache import EmbeddingCache
from densekit.modeling.encoding_spec import EncodingSpec, Weights, embedding_key, weights_by_kind, weights_fingerprint

logger = logging.getLogger(__name__)

EncodeFn = Callable[[Sequence[str], EncodingSpec], np.ndarray]


class Embedder:
    """Encodes text sets with one model, via the cache when ``cache`` is given.

    ``encode_fn(texts, spec) -> np.ndarray`` does the actual encoding (batched, length-sorted, with
    progress) under ``spec`` (token budget, eos). ``rows_encoded`` counts the texts that went through the
    encoder; the rest came from the cache.
    """

    def __init__(self, encode_fn: EncodeFn, model: torch.nn.Module, cache: Optional[EmbeddingCache] = None,
                 block_size: int = 16_384) -> None:
        self.encode_fn = encode_fn
        self.model = model
        self.block_size = cache.block_size if cache is not None else block_size
        self.cache = cache
        self.rows_encoded = 0

    def weights(self) -> Optional[dict[str, str]]:
        """The model's weights fingerprint of each kind now (None without a cache: nothing is looked up)."""
        return weights_by_kind(self.model) if self.cache is not None else None

    def _encode(self, texts: Sequence[str], spec: EncodingSpec) -> np.ndarray:
        self.rows_encoded += len(texts)
        return self.encode_fn(texts, spec)

    def embed(self, ids: Sequence[str], texts: Sequence[str], spec: EncodingSpec, name: Optional[str] = None,
              on_block: Optional[Callable[[int, np.ndarray], None]] = None,
              weights: Optional[Weights] = None) -> Optional[np.ndarray]:
        """Embeddings of ``texts`` (rows aligned with ``ids``) under ``spec``.

        With ``on_block`` the vectors are handed over block by block and not kept (streaming search;
        returns None); otherwise the full matrix is returned. ``weights`` is a fingerprint of the model
        taken by the caller for this call (hashed here when not given).
        """
        if self.cache is None:
            if on_block is None:
                return self._encode(texts, spec)
            for start in range(0, len(texts), self.block_size):
                on_block(start, self._encode(texts[start:start + self.block_size], spec))
            return None
        key = embedding_key(spec, self.model, ids, texts, weights=weights or weights_fingerprint(self.model, spec.kind))
        entry = self.cache.entry(key, name=name)
        if entry.is_complete():
            logger.info("%s embeddings: reusing cache %s", spec.kind, entry.path)
            if on_block is None:
                return entry.load()[1]
            for start, block in entry.iter_blocks():
                on_block(start, block)
            return None
        entry.build(ids, lambda a, b: self._encode(texts[a:b], spec), on_block=on_block)
        return None if on_block is not None else entry.load()[1]
