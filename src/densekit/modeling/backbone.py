"""Which transformers class loads the encoder of a checkpoint folder.

``AutoModel`` is right for encoder-only checkpoints (BERT, RoBERTa, MiniLM, decoder LLMs) and wrong for two
kinds a retriever meets:

- **encoder-decoder checkpoints** (T5, mT5, umT5: OpenMatch's ``t5-base-scaled``, GTR, Sentence-T5):
  ``AutoModel`` builds the whole encoder-decoder, which refuses to run without decoder inputs. Only the
  encoder is wanted: ``T5EncoderModel`` / ``MT5EncoderModel`` / ``UMT5EncoderModel``, or for another
  encoder-decoder the full model's ``get_encoder()``.
- **Hugging Face DPR checkpoints** (``model_type: dpr``): see :mod:`densekit.modeling.dpr`.

Loading an encoder out of a bigger checkpoint silently leaves random weights where the folder lacks them,
so here every missing weight is a ConfigError naming the folder (the loading info is checked).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from densekit.errors import ConfigError
from densekit.modeling.projection import FoundHead

#: model_type -> the transformers class holding only the encoder of that encoder-decoder architecture.
ENCODER_ONLY_CLASSES = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}


@dataclass
class Backbone:
    """What a checkpoint folder gives an encoder: the model producing token states, plus what the
    architecture itself fixes (DPR: cls pooling, no normalization, its ``encode_proj`` head)."""

    model: torch.nn.Module
    head: Optional[FoundHead] = None
    pooling: Optional[str] = None
    normalize: Optional[bool] = None


def load_backbone(path: str, load_kwargs: dict[str, Any]) -> Backbone:
    """Load the encoder of the checkpoint at ``path`` (``load_kwargs`` go to ``from_pretrained``).

    Raises ConfigError for a folder transformers cannot read, an encoder-decoder without an encoder, and an
    encoder whose weights are not all in the folder.
    """
    import transformers

    try:
        config = _read_config(path, load_kwargs)
        if config is None:
            return _with_adapters(path, load_kwargs)
        if config.model_type == "dpr":
            from densekit.modeling.dpr import load_dpr_encoder

            return load_dpr_encoder(path, config, load_kwargs)
        encoder_class = _encoder_only_class(config)
        if encoder_class is not None:
            model, info = encoder_class.from_pretrained(path, output_loading_info=True, **load_kwargs)
            _check_loaded(path, info, encoder_class.__name__)
            return Backbone(model)
        if getattr(config, "is_encoder_decoder", False):
            return Backbone(_generic_encoder(path, load_kwargs))
        return Backbone(transformers.AutoModel.from_pretrained(path, **load_kwargs))
    except (OSError, ValueError) as err:  # missing files; unknown model_type, bad config values
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(
            f"cannot load a model from {path!r}: {err}. densekit does not download models at run time; "
            "pass a local checkpoint directory (Hugging Face or sentence-transformers layout)."
        ) from err


def _with_adapters(path: str, load_kwargs: dict[str, Any]) -> Backbone:
    """A folder of LoRA adapters (what densekit saves for ``use_peft``): the backbone of the base checkpoint
    its ``adapter_config.json`` names, loaded as any folder is here, with the adapters loaded into it.

    What ``AutoModel.from_pretrained(adapter_folder)`` does, except that the base goes through this module
    too: an AutoModel of a T5 base would be the whole encoder-decoder, on which the encoder's adapters do not
    fit (and a DPR base would be random).
    """
    import json
    from pathlib import Path

    adapter_config = Path(path) / "adapter_config.json"
    base = json.loads(adapter_config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise ConfigError(f"{adapter_config} names no base_model_name_or_path; densekit cannot tell which model the "
                          "LoRA adapters belong to. Add it (the folder the model was trained from).")
    backbone = load_backbone(str(base), load_kwargs)
    backbone.model.load_adapter(str(path))
    return backbone


def _read_config(path: str, load_kwargs: dict[str, Any]) -> Any:
    from pathlib import Path

    from transformers import AutoConfig

    if (Path(path) / "adapter_config.json").is_file() and not (Path(path) / "config.json").is_file():
        return None
    return AutoConfig.from_pretrained(path, trust_remote_code=load_kwargs.get("trust_remote_code", False))


def _encoder_only_class(config: Any) -> Optional[type]:
    """The encoder-only class for ``config``: the one its ``architectures`` names when that is an encoder
    class (a folder saved from ``T5EncoderModel``, or from the ``get_encoder()`` of another encoder-decoder,
    e.g. ``BartEncoder``), else the one of its model_type when it is an encoder-decoder, else None."""
    names = [name for name in (getattr(config, "architectures", None) or [])
             if name.endswith(("EncoderModel", "Encoder"))]
    if not names and getattr(config, "is_encoder_decoder", False):
        names = [ENCODER_ONLY_CLASSES.get(config.model_type, "")]
    for name in names:
        klass = _transformers_class(name, config.model_type) if name else None
        if klass is not None:
            return klass
    return None


def _transformers_class(name: str, model_type: str) -> Optional[type]:
    """transformers' model class ``name``: exported at the top level, or in the model_type's modeling module
    (encoder stacks such as ``BartEncoder`` are not exported)."""
    import importlib

    import transformers
    from transformers import PreTrainedModel

    klass = getattr(transformers, name, None)
    if klass is None:
        module_name = str(model_type).replace("-", "_")
        try:
            module = importlib.import_module(f"transformers.models.{module_name}.modeling_{module_name}")
        except ImportError:
            return None
        klass = getattr(module, name, None)
    return klass if isinstance(klass, type) and issubclass(klass, PreTrainedModel) else None


def _generic_encoder(path: str, load_kwargs: dict[str, Any]) -> torch.nn.Module:
    """The encoder of any other encoder-decoder: load the full model, keep ``get_encoder()``."""
    from transformers import AutoModel

    full, info = AutoModel.from_pretrained(path, output_loading_info=True, **load_kwargs)
    encoder = full.get_encoder() if hasattr(full, "get_encoder") else None
    if encoder is None or encoder is full or not _takes_token_ids(encoder):
        found = "none" if encoder is None or encoder is full else f"{type(encoder).__name__}, which takes no input_ids"
        raise ConfigError(f"{path} is an encoder-decoder checkpoint ({type(full).__name__}) without a separate "
                          f"text encoder (get_encoder() gives {found}); densekit embeds texts with an encoder. Give "
                          "an encoder checkpoint, or check is_encoder_decoder in its config.json.")
    prefix = next((name + "." for name, module in full.named_modules() if module is encoder), "")
    missing = {key for key in info.get("missing_keys", ()) if key.startswith(prefix)}
    _check_loaded(path, {**info, "missing_keys": missing, "mismatched_keys": info.get("mismatched_keys", ())},
                  f"{type(full).__name__}.{prefix.rstrip('.')}")
    if not hasattr(encoder, "config"):
        encoder.config = full.config
    return encoder


def _takes_token_ids(module: torch.nn.Module) -> bool:
    import inspect

    try:
        return "input_ids" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


def _check_loaded(path: str, info: dict[str, Any], what: str) -> None:
    """ConfigError unless every weight of the loaded encoder came from the folder with its shape."""
    missing = sorted(info.get("missing_keys", ()) or ())
    mismatched = sorted(str(key) for key in (info.get("mismatched_keys", ()) or ()))
    if not (missing or mismatched):
        return

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")

    detail = f"missing weights: {some(missing)}" if missing else f"weights of another shape: {some(mismatched)}"
    raise ConfigError(f"{path}: the checkpoint does not hold the encoder {what} needs ({detail}); those weights "
                      f"would be random. Give a checkpoint that contains the encoder's weights.")
