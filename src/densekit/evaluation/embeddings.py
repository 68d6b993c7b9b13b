"""Embeddings of a corpus or query set, through the shared cache when there is one.

This is the one place that decides whether vectors come from the cache or from the encoder, so evaluate,
mine and encode agree on keys and nobody encodes the same file twice.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, is_dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from densekit.cache import EmbeddingCache, fingerprint, texts_fingerprint

logger = logging.getLogger(__name__)

# ModelArguments fields that change no vector (they matter to training only).
_TRAINING_ONLY_FIELDS = {"loss", "temperature"}


def weights_fingerprint(retriever: torch.nn.Module) -> str:
    """Hash of every parameter and buffer (names, shapes, dtypes, bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(retriever.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of a tokenizer's full definition (vocabulary, normalization, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Truncation and padding are per-call state the tokenizer keeps from its last use; the lengths
        # that matter are part of the model key already.
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
        definition = json.dumps(state, sort_keys=True)
    else:
        definition = json.dumps([type(tokenizer).__name__, sorted(tokenizer.get_vocab().items())])
    return hashlib.sha256(definition.encode("utf-8")).hexdigest()[:24]


def model_fingerprint(retriever: torch.nn.Module, max_len: Optional[int], append_eos: bool,
                      weights: Optional[str] = None) -> str:
    """Hash of the weights and of every option that changes the vectors a model produces for one input kind."""
    encoder = getattr(retriever, "encoder", retriever)
    # The resolved settings (pooling, normalize, prefixes, template...), not the raw arguments: a pooling
    # left unset may come from the checkpoint's sentence-transformers files.
    resolved = encoder.densekit_config() if hasattr(encoder, "densekit_config") else {}
    args = getattr(encoder, "args", None)
    options = {}
    if is_dataclass(args):
        options = {k: v for k, v in asdict(args).items() if k not in _TRAINING_ONLY_FIELDS and k != "model_name_or_path"}
    encoder_class = type(encoder).__name__
    return fingerprint(weights or weights_fingerprint(retriever), encoder_class, resolved, options, max_len, append_eos)


class Embedder:
    """Encodes text sets with one model, via the cache when ``cache`` is given.

    ``encode_fn(texts, kind) -> np.ndarray`` does the actual encoding (batched, length-sorted, with
    progress); ``model_keys`` maps each kind ("query", "passage") to its model fingerprint, since query and
    passage lengths (and prefixes) differ.
    """

    def __init__(self, encode_fn: Callable[[Sequence[str], str], np.ndarray], model_keys: dict[str, str],
                 cache: Optional[EmbeddingCache] = None, block_size: int = 16_384) -> None:
        self.encode_fn = encode_fn
        self.block_size = cache.block_size if cache is not None else block_size
        self.model_keys = model_keys
        self.cache = cache
        self.rows_encoded = 0  # how many texts went through the encoder (the rest came from the cache)

    def _encode(self, texts: Sequence[str], kind: str) -> np.ndarray:
        self.rows_encoded += len(texts)
        return self.encode_fn(texts, kind)

    def embed(self, ids: Sequence[str], texts: Sequence[str], kind: str, name: Optional[str] = None,
              on_block: Optional[Callable[[int, np.ndarray], None]] = None) -> Optional[np.ndarray]:
        """Embeddings of ``texts`` (rows aligned with ``ids``).

        With ``on_block`` the vectors are handed over block by block and not kept (streaming search;
        returns None); otherwise the full matrix is returned (memory-mapped when it comes from the cache).
        """
        if self.cache is None:
            if on_block is None:
                return self._encode(texts, kind)
            for start in range(0, len(texts), self.block_size):
                on_block(start, self._encode(texts[start:start + self.block_size], kind))
            return None
        key = fingerprint(kind, self.model_keys[kind], texts_fingerprint(ids, texts))
        entry = self.cache.entry(key, name=name)
        if entry.is_complete():
            logger.info("%s embeddings: reusing cache %s", kind, entry.path)
            if on_block is not None:
                for start, block in entry.iter_blocks():
                    on_block(start, block)
                return None
            return entry.load()[1]
        entry.build(ids, lambda a, b: self._encode(texts[a:b], kind), on_block=on_block)
        return None if on_block is not None else entry.load()[1]
