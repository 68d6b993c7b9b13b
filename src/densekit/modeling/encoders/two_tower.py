"""TwoTowerEncoder ("untied"): separate query and passage encoders, as DPR, GC-DPR, Tevatron and OpenMatch train.

Each tower is an ordinary encoder (the class ``ModelArguments.encoder_class`` names, the default encoder
unless told otherwise) with its own checkpoint, pooling and weights. The towers start either from one
checkpoint copied into both (``untie_encoder``, Tevatron/OpenMatch ``--untie_encoder``) or from two
(``query_model_name_or_path`` / ``passage_model_name_or_path``: DPR's question and context encoders).

Why a wrapper encoder rather than a second retriever class: everything above the encoder (the gradient
cache, cross-device negatives, the loss, the evaluator, the cache keys) already calls ``encode_query`` /
``encode_passage`` and :meth:`PretrainedEncoder.tower`, so two towers change nothing there.

On disk an untied model is ``query_model/`` and ``passage_model/`` (each a complete checkpoint with its own
``densekit_config.json``), the tokenizer at the top, and a top-level ``densekit_config.json`` naming this
class: the layout Tevatron and OpenMatch write, so their untied folders load here too.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

import torch

from densekit.errors import ConfigError
from densekit.modeling.encoders.base import DENSEKIT_CONFIG_NAME, PretrainedEncoder, with_saved_defaults
from densekit.modeling.model_args import TOWER_DIRS, ModelArguments, has_tokenizer_files


def tower_args(args: ModelArguments, kind: str) -> ModelArguments:
    """The arguments one tower is built from: its own checkpoint, no untying, no LoRA (the retriever adds
    adapters to each tower itself)."""
    encoder_class = args.encoder_class
    if encoder_class.lower() in {name.lower() for name in PretrainedEncoder._names_of(TwoTowerEncoder)}:
        encoder_class = "default"
    return dataclasses.replace(args, model_name_or_path=args.tower_path(kind), untie_encoder=False,
                               query_model_name_or_path=None, passage_model_name_or_path=None, use_peft=False,
                               encoder_class=encoder_class)


def build_tower(args: ModelArguments, kind: str, **kwargs: Any) -> PretrainedEncoder:
    """The ``kind`` tower: the encoder class of its arguments, built from its own checkpoint folder (whose
    densekit_config.json fills the arguments left at their defaults)."""
    own = with_saved_defaults(tower_args(args, kind))
    return PretrainedEncoder.find(own.encoder_class)(own, **kwargs)


class TwoTowerEncoder(PretrainedEncoder):
    """A query tower and a passage tower; ``tower(kind)`` says which embeds what."""

    _alias = ("two_tower", "untied")

    def __init__(self, args: ModelArguments, query_encoder: Optional[PretrainedEncoder] = None,
                 passage_encoder: Optional[PretrainedEncoder] = None, **kwargs: Any) -> None:
        super().__init__(args)
        if query_encoder is None or passage_encoder is None:
            query_encoder, passage_encoder = (build_tower(args, kind, **kwargs) for kind in ("query", "passage"))
            if args.query_model_name_or_path and args.passage_model_name_or_path:
                check_same_tokenizer(args.query_model_name_or_path, args.passage_model_name_or_path)
        if query_encoder.append_eos_token != passage_encoder.append_eos_token:
            raise ConfigError("the query and passage towers disagree on whether inputs end with eos (last-token "
                              "pooling on one side only); both towers must use the same pooling family.")
        self.query_encoder = query_encoder
        self.passage_encoder = passage_encoder

    def tower(self, kind: str) -> PretrainedEncoder:
        if kind == "query":
            return self.query_encoder
        if kind == "passage":
            return self.passage_encoder
        raise ConfigError(f"kind must be 'query' or 'passage', got {kind!r}.")

    @property
    def towers(self) -> dict[str, PretrainedEncoder]:
        return {"query": self.query_encoder, "passage": self.passage_encoder}

    @property
    def append_eos_token(self) -> bool:
        return self.query_encoder.append_eos_token

    @property
    def max_length(self) -> Optional[int]:
        """The shorter of the towers' limits (each kind's budget comes from its own tower's spec)."""
        limits = [limit for limit in (getattr(t, "max_length", None) for t in self.towers.values()) if limit]
        return min(limits) if limits else None

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        raise ConfigError("an untied model has no single encode(); call encode_query or encode_passage.")

    def encode_query(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.query_encoder.encode_query(inputs)

    def encode_passage(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.passage_encoder.encode_passage(inputs)

    def format_query(self, text: str, dataset: Optional[str] = None) -> str:
        return self.query_encoder.format_query(text, dataset=dataset)

    def format_passage(self, text: str, title: Optional[str] = None, dataset: Optional[str] = None) -> str:
        return self.passage_encoder.format_passage(text, title=title, dataset=dataset)

    def densekit_config(self) -> dict[str, Any]:
        return {"encoder_class": type(self).__name__,
                **{kind: tower.densekit_config() for kind, tower in self.towers.items()}}

    def save_pretrained(self, directory: str | Path, tokenizer: Any = None, **kwargs: Any) -> None:
        """Each tower into its own folder (with the tokenizer, so each is a complete checkpoint), then the
        tokenizer and ``densekit_config.json`` at the top (written last: a folder that has it is complete)."""
        if "state_dict" in kwargs:
            raise ConfigError("saving an untied model from a gathered state dict (DeepSpeed / FSDP) is not "
                              "supported; train untied models with DDP or on one device.")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / DENSEKIT_CONFIG_NAME).unlink(missing_ok=True)
        for kind, tower in self.towers.items():
            tower.save_pretrained(directory / TOWER_DIRS[kind], tokenizer=tokenizer, **kwargs)
        super().save_pretrained(directory, tokenizer=tokenizer)

    def _save_model(self, directory: Path, **kwargs: Any) -> None:
        """Nothing at the top level: the towers' weights are in their folders (see :meth:`save_pretrained`)."""

    def load_weights(self, directory: Path) -> None:
        for kind, tower in self.towers.items():
            tower.load_weights(Path(directory) / TOWER_DIRS[kind])


def check_same_tokenizer(query_path: str, passage_path: str) -> None:
    """Refuse two tower checkpoints whose tokenizers differ: densekit tokenizes both kinds with one.

    A checkpoint folder without tokenizer files is left alone (the tokenizer then comes from the other).
    """
    if Path(query_path).resolve() == Path(passage_path).resolve():
        return
    from transformers import AutoTokenizer

    from densekit.modeling.encoding_spec import tokenizer_fingerprint

    prints = {}
    for kind, path in (("query", query_path), ("passage", passage_path)):
        if not has_tokenizer_files(path):
            return
        prints[kind] = tokenizer_fingerprint(AutoTokenizer.from_pretrained(str(path)), with_class=False)
    if prints["query"] != prints["passage"]:
        raise ConfigError(f"the query tower ({query_path}) and the passage tower ({passage_path}) have different "
                          "tokenizers; densekit tokenizes queries and passages with one tokenizer, so both "
                          "checkpoints must share it (same vocabulary, lower-casing and special tokens).")
