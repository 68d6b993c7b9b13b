"""How texts of one kind become vectors, resolved once: the encoding spec, and the cache key made from it.

Why one place: the token budget, the eos handling, the formatting, the pooling and the tokenizer used to be
worked out separately by the collator, the evaluator, ``densekit encode`` and the cache key, and they did
not always agree (training truncated the bundled MiniLM at the tokenizer's 512 tokens while evaluation
used its sentence-transformers config's 256). Every consumer now asks :func:`encoding_spec` and gets the
same answer for the same model, tokenizer and data arguments.

Why keys are computed at the moment of use (:func:`embedding_key`): a spec describes settings, not weights,
and weights change in place (a training step, ``load_state_dict``). Hashing the weights each time a set of
vectors is looked up costs a fraction of a second for a MiniLM and makes a stale vector impossible to serve.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any, Mapping, Optional, Sequence, Union

import torch

from densekit.cache import fingerprint, texts_fingerprint
from densekit.errors import ConfigError

KINDS = ("query", "passage")
NO_LIMIT = 1_000_000  # transformers' sentinel for "no length limit known" is far above this
# ModelArguments fields that change no vector (they matter to training only), or that name a location.
_NOT_ENCODING_FIELDS = {"loss", "temperature", "model_name_or_path", "query_model_name_or_path",
                        "passage_model_name_or_path"}
# Tokenizer init arguments that name files or locations: the same tokenizer elsewhere is the same tokenizer.
_TOKENIZER_PATH_FIELDS = {"name_or_path", "_name_or_path", "tokenizer_file", "vocab_file", "merges_file",
                          "special_tokens_map_file", "model_max_length", "auto_map", "processor_class"}


def tokenizer_limit(tokenizer: Any) -> Optional[int]:
    """The tokenizer's own length limit (``model_max_length``), None when it declares none."""
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, (int, float)) and 0 < limit < NO_LIMIT else None


def tower_of(model: Any, kind: str) -> Any:
    """The module that embeds ``kind``: a retriever's or encoder's tower (its only encoder when shared,
    the query or passage tower when untied), else ``model`` itself."""
    tower = getattr(model, "tower", None)
    return tower(kind) if callable(tower) else model


def _shared(model: Any) -> bool:
    return tower_of(model, "query") is tower_of(model, "passage")


def _position_limit(model: Any) -> Optional[int]:
    encoder = getattr(model, "encoder", model)
    config = getattr(encoder, "config", None)
    positions = getattr(config, "max_position_embeddings", None)
    return positions if isinstance(positions, int) and 0 < positions < NO_LIMIT else None


def resolve_max_len(kind: str, explicit: Optional[int], model: Any, tokenizer: Any) -> Optional[int]:
    """The token budget of one kind: the explicit value (DataArguments), else the model's own limit
    (``max_length``: ModelArguments, then the sentence-transformers config, then the checkpoint), else the
    tokenizer's limit. An explicit value beyond the model's position embeddings is a ConfigError."""
    name = f"{kind}_max_len"
    if model is not None:
        model = tower_of(model, kind)
    positions = _position_limit(model) if model is not None else None
    if explicit and positions and explicit > positions:
        raise ConfigError(f"{name}={explicit} is longer than the model accepts ({positions} positions); "
                          f"use at most {positions}.")
    model_limit = getattr(model, "max_length", None) if model is not None else None
    return explicit or model_limit or tokenizer_limit(tokenizer)


def tokenizer_fingerprint(tokenizer: Any, with_class: bool = True) -> str:
    """Hash of everything in a tokenizer that changes token ids: its definition (vocabulary, normalizer,
    pre-tokenizer, special tokens), its init options (a slow tokenizer's ``do_lower_case`` lives there) and
    its truncation side. Per-call state (the last call's truncation/padding) and file locations are left
    out, so the same tokenizer loaded twice, or from another folder, has the same fingerprint. Without
    ``with_class``, two classes that tokenize alike (DPR's question and context tokenizers) compare equal."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
        definition: Any = state
    else:
        vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
        definition = sorted(vocab.items())
    init = {key: value for key, value in (getattr(tokenizer, "init_kwargs", None) or {}).items()
            if key not in _TOKENIZER_PATH_FIELDS}
    extra = {"class": type(tokenizer).__name__ if with_class else None, "init": init,
             "truncation_side": getattr(tokenizer, "truncation_side", "right"),
             "special": getattr(tokenizer, "all_special_tokens", [])}
    text = json.dumps([definition, extra], sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


#: A weights fingerprint, or one per kind (untied towers: each kind is keyed by its own tower's weights).
Weights = Union[str, Mapping[str, str]]


def weights_fingerprint(model: torch.nn.Module, kind: Optional[str] = None) -> str:
    """Hash of every parameter and buffer (names, shapes, dtypes, bytes) as they are right now; with
    ``kind``, of the tower that embeds that kind only (the whole model when the encoder is shared)."""
    module = tower_of(model, kind) if kind is not None and not _shared(model) else model
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weights_by_kind(model: torch.nn.Module) -> dict[str, str]:
    """:func:`weights_fingerprint` of each kind, hashing a shared encoder once."""
    if _shared(model):
        digest = weights_fingerprint(model)
        return {kind: digest for kind in KINDS}
    return {kind: weights_fingerprint(model, kind) for kind in KINDS}


@dataclass(frozen=True)
class EncodingSpec:
    """How texts of one kind (query or passage) become vectors with one model and tokenizer.

    ``encoder`` holds the encoder's resolved settings (class, pooling, normalization, prefixes, passage
    template: ``densekit_config()``) and ``options`` the remaining model arguments that can change a vector;
    ``tokenizer`` is :func:`tokenizer_fingerprint`. The weights are not part of the spec: they are hashed
    when a key is made (:func:`embedding_key`).
    """

    kind: str
    max_len: Optional[int]
    append_eos: bool
    encoder: str  # JSON of the encoder's resolved settings (a frozen dataclass cannot hold a dict)
    options: str  # JSON of the other vector-changing model arguments
    tokenizer: str

    def describe(self) -> dict[str, Any]:
        """What reports print: the budget, eos handling and the encoder's settings, readable."""
        return {"max_len": self.max_len, "append_eos": self.append_eos, **json.loads(self.encoder),
                "tokenizer": self.tokenizer}


def _model_options(model: Any) -> dict[str, Any]:
    encoder = getattr(model, "encoder", model)
    args = getattr(encoder, "args", None) or getattr(model, "args", None)
    if not is_dataclass(args):
        return {}
    return {k: v for k, v in asdict(args).items() if k not in _NOT_ENCODING_FIELDS}


def encoding_spec(model: Any, tokenizer: Any, kind: str, max_len: Optional[int] = None,
                  append_eos: Optional[bool] = None) -> EncodingSpec:
    """Resolve the spec of ``kind`` for ``model`` and ``tokenizer``.

    Args:
        max_len: the explicit budget (``DataArguments.query_max_len`` / ``passage_max_len``) or None for
            the model's own limit (see :func:`resolve_max_len`).
        append_eos: the collator's choice when there is one; default: the model's ``append_eos_token``.
    """
    if kind not in KINDS:
        raise ConfigError(f"kind must be 'query' or 'passage', got {kind!r}.")
    encoder = tower_of(getattr(model, "encoder", model), kind)
    resolved = encoder.densekit_config() if hasattr(encoder, "densekit_config") else {"encoder_class": type(encoder).__name__}
    if append_eos is None:
        append_eos = bool(getattr(model, "append_eos_token", False))
    return EncodingSpec(kind=kind, max_len=resolve_max_len(kind, max_len, model, tokenizer),
                        append_eos=bool(append_eos), encoder=json.dumps(resolved, sort_keys=True, default=str),
                        options=json.dumps(_model_options(encoder), sort_keys=True, default=str),
                        tokenizer=tokenizer_fingerprint(tokenizer))


def model_key(spec: EncodingSpec, model: torch.nn.Module, weights: Optional[Weights] = None) -> str:
    """The fingerprint of (spec, current weights of the tower that embeds ``spec.kind``): what a set of
    vectors was made with."""
    if isinstance(weights, Mapping):
        weights = weights[spec.kind]
    return fingerprint(asdict(spec), weights or weights_fingerprint(model, spec.kind))


def embedding_key(spec: EncodingSpec, model: torch.nn.Module, ids: Sequence[str], texts: Sequence[str],
                  weights: Optional[Weights] = None) -> str:
    """The one cache key of a set of vectors: spec, current weights, and exactly the ids and texts encoded.

    Used by the evaluator's cache and by ``densekit encode`` folders alike, so a folder written by one is
    recognised by the other. Pass ``weights`` (a :func:`weights_fingerprint` taken just now) to hash the
    weights once for several keys.
    """
    return fingerprint(spec.kind, model_key(spec, model, weights), texts_fingerprint(ids, texts))
