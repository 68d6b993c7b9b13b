"""BiEncoderRetriever: one encoder shared by queries and passages, scored by dot product.

The retriever is what the rest of densekit holds: datasets take its ``format_query`` /
``format_passage``, the collator its ``append_eos_token``, evaluation its ``encode_query`` /
``encode_passage``, the trainer its ``forward``. It owns no pooling or formatting logic itself; that lives
in the encoder picked by ``ModelArguments.encoder_class`` (see :mod:`densekit.modeling.encoders`).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

import torch

from densekit.errors import ConfigError
from densekit.modeling.encoders import PretrainedEncoder, read_densekit_config
from densekit.modeling.model_args import ModelArguments


@dataclass
class RetrieverOutput:
    """What ``forward`` returns: embeddings, the query x passage score matrix, and the loss when trained."""

    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    query: Optional[torch.Tensor] = None
    passage: Optional[torch.Tensor] = None


class BiEncoderRetriever(torch.nn.Module):
    """A bi-encoder: ``score(q, p) = encode_query(q) . encode_passage(p)``.

    Build it from arguments (``from_model_args(args=model_args)``) or from a folder written by
    :meth:`save_pretrained` (``from_pretrained(path)``), which reloads the same encoder class with the
    same pooling, normalization and formatting.
    """

    def __init__(self, encoder: PretrainedEncoder, args: Optional[ModelArguments] = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.args = args if args is not None else encoder.args

    @classmethod
    def from_model_args(cls, args: ModelArguments, **kwargs: Any) -> "BiEncoderRetriever":
        """Instantiate the encoder named by ``args.encoder_class``; ``kwargs`` go to its constructor."""
        if not isinstance(args, ModelArguments):
            raise ConfigError(f"from_model_args needs a ModelArguments, got {type(args).__name__}.")
        encoder_cls = PretrainedEncoder.find(args.encoder_class)
        return cls(encoder_cls(args, **kwargs), args)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides: Any) -> "BiEncoderRetriever":
        """Reload a checkpoint saved by :meth:`save_pretrained`; ``overrides`` replace ModelArguments fields.

        A folder without ``densekit_config.json`` (a plain Hugging Face or sentence-transformers
        checkpoint) loads with the default encoder and the checkpoint's own defaults.
        """
        saved = read_densekit_config(directory) or {}
        known = {f.name for f in fields(ModelArguments)}
        values = {key: value for key, value in saved.items() if key in known}
        values.update(overrides)
        values["model_name_or_path"] = str(directory)
        return cls.from_model_args(ModelArguments(**values))

    # ---------------------------------------------------------------------------- used by data pipeline
    def format_query(self, text: str, dataset: Optional[str] = None) -> str:
        """Raw query -> the text the tokenizer sees (prefix / instruction), as the encoder wants it."""
        return self.encoder.format_query(text, dataset=dataset)

    def format_passage(self, text: str, title: Optional[str] = None, dataset: Optional[str] = None) -> str:
        """Raw passage (and title) -> the text the tokenizer sees, as the encoder wants it."""
        return self.encoder.format_passage(text, title=title, dataset=dataset)

    @property
    def append_eos_token(self) -> bool:
        """Whether the collator must end every input with the eos token."""
        return self.encoder.append_eos_token

    @property
    def max_length(self) -> Optional[int]:
        """The encoder's token limit (None when unknown)."""
        return getattr(self.encoder, "max_length", None)

    @property
    def device(self) -> torch.device:
        for parameter in self.parameters():
            return parameter.device
        return torch.device("cpu")

    # ------------------------------------------------------------------------------------------ encoding
    def encode_query(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Tokenized queries -> [B, d] embeddings."""
        return self.encoder.encode_query(inputs)

    def encode_passage(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Tokenized passages -> [B, d] embeddings."""
        return self.encoder.encode_passage(inputs)

    def similarity(self, query: torch.Tensor, passage: torch.Tensor) -> torch.Tensor:
        """Score matrix [n_query, n_passage] as the encoder defines it (dot product)."""
        return self.encoder.similarity(query, passage)

    def forward(self, query: Optional[dict] = None, passage: Optional[dict] = None,
                label: Optional[torch.Tensor] = None) -> RetrieverOutput:
        """Embed whatever is given and score every query against every passage.

        ``query`` / ``passage`` / ``label`` are the keys of a :class:`~densekit.data.collator.RetrievalCollator`
        batch. The training loss (``ModelArguments.loss`` via ``densekit.modeling.losses.RetrievalLoss``,
        cross-device negatives, gradient cache) attaches here: it turns ``logits`` and ``label`` into
        ``loss``. Until it is wired in, ``loss`` stays ``None``.
        """
        query_embs = self.encode_query(query) if query is not None else None
        passage_embs = self.encode_passage(passage) if passage is not None else None
        logits = None
        if query_embs is not None and passage_embs is not None:
            logits = self.similarity(query_embs, passage_embs)
        return RetrieverOutput(loss=None, logits=logits, query=query_embs, passage=passage_embs)

    # --------------------------------------------------------------------------------------- persistence
    def save_pretrained(self, directory: str | Path, tokenizer: Any = None, **kwargs: Any) -> None:
        """Write weights (safetensors, Hugging Face layout), the tokenizer if given, and densekit_config.json."""
        self.encoder.save_pretrained(directory, tokenizer=tokenizer, **kwargs)
