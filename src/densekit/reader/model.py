"""The reader model: an encoder with span start/end logits and a passage-selection logit from ``[CLS]``.

Why this module tree (``span_predictor.encoder.bert_model``, ``span_predictor.qa_outputs`` = Linear(hidden, 2),
``span_predictor.qa_classifier`` = Linear(hidden, 1)): it is ``transformers.DPRReader``'s, so the state dict of
a BERT-based reader is a DPRReader state dict. :meth:`ReaderModel.save_pretrained` then writes a ``DPRConfig``
``config.json`` and ``model.safetensors``, and ``transformers.DPRReader.from_pretrained(folder)`` gives the same
logits. DPRReader runs BERT without token type ids (all zeros) and without its pooler, and so does this model.

Encoders that are not BERT (RoBERTa, ...) cannot be a DPRReader: they are saved in densekit's own layout (the
encoder's own ``config.json``, same weight names), which :meth:`ReaderModel.from_pretrained` reads and
transformers' DPRReader does not. ``densekit_reader.json`` records which layout a folder has.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from densekit.errors import ConfigError, InputError
from densekit.files import atomic_write

logger = logging.getLogger(__name__)
WEIGHTS_NAME = "model.safetensors"
MARKER_NAME = "densekit_reader.json"
#: BertConfig fields DPRConfig shares (DPRConfig adds projection_dim).
DPR_CONFIG_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
                     "type_vocab_size", "initializer_range", "layer_norm_eps", "pad_token_id")


class ReaderEncoder(nn.Module):
    """Holds the transformer as ``bert_model`` (DPREncoder's attribute name, whatever the architecture)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.bert_model = model


class SpanPredictor(nn.Module):
    """Encoder + span head + selection head: ``transformers.DPRSpanPredictor``'s submodules."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder = ReaderEncoder(model)
        hidden = model.config.hidden_size
        self.qa_outputs = nn.Linear(hidden, 2)
        self.qa_classifier = nn.Linear(hidden, 1)


class ReaderModel(nn.Module):
    """Span and passage-selection logits for ``[CLS] question [SEP] title [SEP] text`` sequences.

    ``forward`` takes ``input_ids`` of shape ``[passages, length]`` or ``[questions, passages, length]`` and
    returns a dict with ``start_logits``, ``end_logits`` (same leading shape, ``length`` last) and
    ``relevance_logits``; with ``start_positions`` (training batches) also ``loss`` (DPR's objective,
    :func:`densekit.reader.loss.reader_loss`), whose passage 0 of each question is the positive.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.span_predictor = SpanPredictor(model)

    @property
    def encoder_model(self) -> nn.Module:
        return self.span_predictor.encoder.bert_model

    @property
    def config(self) -> Any:
        return self.encoder_model.config

    def init_heads(self, seed: Optional[int] = None) -> None:
        """Normal(0, initializer_range) weights and zero biases, as BERT initialises a fresh linear layer."""
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        std = float(getattr(self.config, "initializer_range", 0.02))
        for layer in (self.span_predictor.qa_outputs, self.span_predictor.qa_classifier):
            with torch.no_grad():
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * std)
                layer.bias.zero_()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                passage_mask: Optional[torch.Tensor] = None, start_positions: Optional[torch.Tensor] = None,
                end_positions: Optional[torch.Tensor] = None, span_mask: Optional[torch.Tensor] = None,
                **_: Any) -> dict[str, torch.Tensor]:
        shape = input_ids.shape
        flat_ids, flat_mask = input_ids.reshape(-1, shape[-1]), attention_mask.reshape(-1, shape[-1])
        hidden = self.encoder_model(input_ids=flat_ids, attention_mask=flat_mask)[0]
        start, end = self.span_predictor.qa_outputs(hidden).split(1, dim=-1)
        relevance = self.span_predictor.qa_classifier(hidden[:, 0, :])
        out = {"start_logits": start.squeeze(-1).reshape(shape), "end_logits": end.squeeze(-1).reshape(shape),
               "relevance_logits": relevance.reshape(shape[:-1])}
        if start_positions is not None:
            from densekit.reader.loss import reader_loss

            if len(shape) != 3:
                raise ConfigError("training batches need input_ids of shape [questions, passages, length].")
            out["loss"] = reader_loss(out["start_logits"], out["end_logits"], out["relevance_logits"],
                                      attention_mask=attention_mask, passage_mask=passage_mask,
                                      start_positions=start_positions, end_positions=end_positions,
                                      span_mask=span_mask)
        return out

    # ------------------------------------------------------------------------------------ save / load
    @property
    def is_bert(self) -> bool:
        return getattr(self.config, "model_type", None) == "bert"

    def save_pretrained(self, directory: str | Path, tokenizer: Any = None, **extra: Any) -> None:
        """Write ``config.json`` (DPRConfig for BERT, else the encoder's), ``model.safetensors``,
        ``densekit_reader.json`` and the tokenizer. ``extra`` goes into densekit_reader.json (e.g. the
        sequence_length the reader was trained with)."""
        from safetensors.torch import save

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.is_bert:
            from transformers import DPRConfig

            values = {k: getattr(self.config, k) for k in DPR_CONFIG_FIELDS if hasattr(self.config, k)}
            config = DPRConfig(projection_dim=0, **values)
            config.architectures = ["DPRReader"]
            layout = "dpr"
        else:
            config = self.config
            layout = "densekit"
        config.save_pretrained(directory)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_write(directory / WEIGHTS_NAME, "wb") as handle:
            handle.write(save(state, metadata={"format": "pt"}))
        marker = {"format": 1, "layout": layout, "encoder_model_type": getattr(self.config, "model_type", None),
                  **extra}
        with atomic_write(directory / MARKER_NAME) as handle:
            json.dump(marker, handle, indent=1)
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)

    def load_weights(self, directory: str | Path) -> None:
        """Load ``model.safetensors`` of a reader folder strictly (every name must match)."""
        from safetensors.torch import load_file

        path = Path(directory) / WEIGHTS_NAME
        if not path.is_file():
            raise InputError("no model.safetensors: not a reader checkpoint.", path=directory)
        state = load_file(str(path))
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise InputError(f"reader weights do not match this model: missing {sorted(missing)[:5]}, unexpected "
                             f"{sorted(unexpected)[:5]}.", path=path)

    @classmethod
    def from_pretrained(cls, directory: str | Path, seed: Optional[int] = None) -> "ReaderModel":
        """A reader folder (densekit's, or a transformers DPRReader checkpoint) with its heads, or a plain
        encoder checkpoint (e.g. the bundled MiniLM) with freshly initialised heads."""
        from transformers import AutoConfig, AutoModel, BertConfig, BertModel

        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise InputError("no config.json: not a model folder.", path=directory,
                             fix="give a local Hugging Face model folder or a folder written by `densekit reader train`")
        raw_config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        is_reader = (directory / MARKER_NAME).is_file() or raw_config.get("model_type") == "dpr"
        if is_reader:
            if raw_config.get("model_type") == "dpr":
                config = BertConfig(**{k: raw_config[k] for k in DPR_CONFIG_FIELDS if k in raw_config})
                model = cls(BertModel(config, add_pooling_layer=False))
            else:
                config = AutoConfig.from_pretrained(directory)
                try:  # a reader never has a pooler (DPRReader's bert_model has none)
                    encoder = AutoModel.from_config(config, add_pooling_layer=False)
                except TypeError:
                    encoder = AutoModel.from_config(config)
                model = cls(encoder)
            model.load_weights(directory)
            return model
        try:
            encoder = AutoModel.from_pretrained(directory, add_pooling_layer=False)
        except TypeError:  # architectures without a pooler option
            encoder = AutoModel.from_pretrained(directory)
        model = cls(encoder.float())
        model.init_heads(seed)
        logger.info("reader: encoder from %s, span and selection heads initialised", directory)
        return model
