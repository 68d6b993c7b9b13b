"""PretrainedEncoder: the base class every encoder wrapper derives from, and the registry that finds them.

Adding an encoder is one new class in one new file: defining a subclass registers it under its class
name and its optional ``_alias`` (a string or a tuple of strings), with no central list to edit.
``PretrainedEncoder.find("default")`` returns the class; when two classes claim a name, the one defined
last wins, so a user's class overrides a built-in one of the same alias.

A subclass turns token ids into one vector per text (``encode``) and says how raw text must be formatted
for it (``format_query`` / ``format_passage``: prefixes, instructions, title+text template). The base
class gives the shared parts: prefixes, the passage template, dot-product similarity, and a
``save_pretrained`` that writes a small ``densekit_config.json`` naming the class, so a saved checkpoint
reloads as what it was.
"""
from __future__ import annotations

import copy
import dataclasses

import json
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

import torch

from densekit.errors import ConfigError
from densekit.files import atomic_write, read_json
from densekit.modeling.model_args import ModelArguments

DENSEKIT_CONFIG_NAME = "densekit_config.json"


class PretrainedEncoder(torch.nn.Module):
    """Base class of encoder wrappers; subclasses register themselves by name and ``_alias``.

    Subclass API: ``__init__(args: ModelArguments, **kwargs)`` and ``encode(input_ids, attention_mask,
    **kwargs) -> Tensor[B, d]``; override ``format_query`` / ``format_passage`` / ``append_eos_token``
    when the model needs it, and ``_save_model`` to write weights.
    """

    _alias: ClassVar[Union[str, tuple[str, ...], None]] = None
    _registry: ClassVar[list[type["PretrainedEncoder"]]] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        PretrainedEncoder._registry.append(cls)

    # ----------------------------------------------------------------------------------------- registry
    @staticmethod
    def _names_of(klass: type) -> tuple[str, ...]:
        """Class name plus the aliases the class itself declares (an inherited ``_alias`` does not count,
        otherwise every subclass of the default encoder would also answer to "default")."""
        alias = klass.__dict__.get("_alias")
        if alias is None:
            aliases: tuple[str, ...] = ()
        elif isinstance(alias, str):
            aliases = (alias,)
        else:
            aliases = tuple(alias)
        return (klass.__name__, *aliases)

    @classmethod
    def find(cls, name: str) -> type["PretrainedEncoder"]:
        """Return the encoder class registered under ``name`` (class name or alias, any case), newest first."""
        wanted = str(name).lower()
        for klass in reversed(PretrainedEncoder._registry):
            if wanted in {n.lower() for n in PretrainedEncoder._names_of(klass)}:
                return klass
        raise ConfigError(
            f"encoder_class={name!r} is not a known encoder. Available: {', '.join(cls.available_encoders())}. "
            "A custom encoder must be imported (its module run) before it can be found by name."
        )

    @classmethod
    def available_encoders(cls) -> list[str]:
        """Every name and alias that :meth:`find` accepts, sorted."""
        return sorted({n for klass in PretrainedEncoder._registry for n in PretrainedEncoder._names_of(klass)})

    # ---------------------------------------------------------------------------------------- instances
    def __init__(self, args: ModelArguments, **kwargs: Any) -> None:
        super().__init__()
        self.args = args

    @property
    def append_eos_token(self) -> bool:
        """Whether inputs must end with the tokenizer's eos token (last-token pooling needs it)."""
        return False

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Return one embedding per row, shape [batch, dim]; subclasses implement this."""
        raise NotImplementedError(f"{type(self).__name__} must implement encode()")

    def encode_query(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Embed tokenized queries (a dict/BatchEncoding with input_ids and attention_mask)."""
        return self.encode(**inputs)

    def encode_passage(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Embed tokenized passages (a dict/BatchEncoding with input_ids and attention_mask)."""
        return self.encode(**inputs)

    def tower(self, kind: str) -> "PretrainedEncoder":
        """The encoder that embeds ``kind`` ("query" or "passage"): itself, for an encoder shared by both.

        Two-tower encoders return one of their towers; the encoding spec and the embedding cache key each
        kind by its own tower's settings and weights.
        """
        return self

    def load_weights(self, directory: Path) -> None:
        """Put the weights of a folder written by :meth:`save_pretrained` back into this encoder, in place,
        refusing (ConfigError, nothing loaded) a folder whose weights do not match; subclasses implement
        this."""
        raise ConfigError(f"{type(self).__name__} cannot load checkpoint weights in place (no load_weights()); "
                          f"cannot resume from {directory}.")

    def format_query(self, text: str, dataset: Optional[str] = None) -> str:
        """The text the tokenizer sees for a raw query: ``query_prefix + text``."""
        return self.args.query_prefix + text

    def format_passage(self, text: str, title: Optional[str] = None, dataset: Optional[str] = None) -> str:
        """The text the tokenizer sees for a raw passage: prefix + template(title, text), stripped.

        With the default template this is ``(title + " " + text).strip()``, what sentence-transformers,
        BEIR and MTEB feed their models.
        """
        body = self.args.passage_template.format(title=title or "", text=text).strip()
        return self.args.passage_prefix + body

    def similarity(self, query: torch.Tensor, passage: torch.Tensor) -> torch.Tensor:
        """Score matrix [n_query, n_passage]: dot product (cosine when the encoder normalizes)."""
        return query @ passage.transpose(-2, -1)

    # ------------------------------------------------------------------------------------- persistence
    def densekit_config(self) -> dict[str, Any]:
        """What ``densekit_config.json`` records; subclasses add their resolved settings."""
        return {
            "encoder_class": type(self).__name__,
            "query_prefix": self.args.query_prefix,
            "passage_prefix": self.args.passage_prefix,
            "passage_template": self.args.passage_template,
        }

    def _save_model(self, directory: Path, **kwargs: Any) -> None:
        """Write the weights (and model config) into ``directory``; subclasses implement this."""
        raise NotImplementedError(f"{type(self).__name__} must implement _save_model()")

    def save_pretrained(self, directory: str | Path, tokenizer: Any = None, **kwargs: Any) -> None:
        """Save weights, the tokenizer if given, then ``densekit_config.json`` (written last, atomically,
        so a folder that has it is complete)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # Saving over an earlier checkpoint: drop its completeness marker first, so an interrupted save
        # never leaves a folder that looks complete with half-written weights.
        (directory / DENSEKIT_CONFIG_NAME).unlink(missing_ok=True)
        self._save_model(directory, **kwargs)
        if tokenizer is not None:
            _with_pad_token(tokenizer, getattr(getattr(self, "model", None), "config", None)).save_pretrained(
                str(directory))
        with atomic_write(directory / DENSEKIT_CONFIG_NAME) as handle:
            json.dump(self.densekit_config(), handle, indent=2, sort_keys=True)
            handle.write("\n")


def _with_pad_token(tokenizer: Any, config: Any) -> Any:
    """The tokenizer to save: a copy with the model's pad token put back if training code cleared it.

    Why: seed 001's recipe sets ``tokenizer.pad_token_id = tokenizer.eos_token_id``, which is ``None``
    for BERT-like tokenizers; densekit's collator copes, but a checkpoint saved that way cannot pad in
    transformers or sentence-transformers ("Asking to pad but the tokenizer does not have a padding
    token"). The model config's ``pad_token_id`` says which token it was.
    """
    pad_id = getattr(config, "pad_token_id", None)
    if getattr(tokenizer, "pad_token", "") is not None or pad_id is None or not 0 <= pad_id < len(tokenizer):
        return tokenizer
    fixed = copy.deepcopy(tokenizer)
    fixed.pad_token = fixed.convert_ids_to_tokens(pad_id)
    return fixed


def read_densekit_config(directory: str | Path) -> Optional[dict[str, Any]]:
    """The ``densekit_config.json`` of a saved checkpoint, or ``None`` when the folder has none."""
    path = Path(directory) / DENSEKIT_CONFIG_NAME
    if not path.is_file():
        return None
    return read_json(path, fix="save the checkpoint again with save_pretrained()")


def with_saved_defaults(args: ModelArguments) -> ModelArguments:
    """``args`` with the fields left at their defaults taken from the checkpoint's ``densekit_config.json``.

    Why: ``densekit evaluate --model_name_or_path TRAINED`` must encode as training did (query prefix,
    passage template, pooling, projection head) without the user repeating every option; an option given
    explicitly still wins (one given with its default value cannot be told apart and yields to the file).
    """
    saved = read_densekit_config(args.model_name_or_path) if args.model_name_or_path else None
    if not saved or saved.get("encoder_class") == "TwoTowerEncoder":  # its towers carry their own configs
        return args
    defaults = {f.name: f.default for f in dataclasses.fields(ModelArguments)}
    updates = {key: value for key, value in saved.items()
               if key in defaults and key != "model_name_or_path" and getattr(args, key) == defaults[key]}
    return dataclasses.replace(args, **updates) if updates else args
