"""Hugging Face DPR checkpoints, in and out.

In: a folder with ``model_type: dpr`` holds a ``DPRQuestionEncoder`` or a ``DPRContextEncoder``: a BERT
(``question_encoder.bert_model.*`` / ``ctx_encoder.bert_model.*``) whose first token's state, passed through
``encode_proj`` when ``projection_dim > 0``, is the vector (``pooler_output``). densekit loads it as an
ordinary tower: the inner BERT as the model (with a plain ``BertConfig``, so it is seedable and fast like
any BERT), cls pooling, no normalization, ``encode_proj`` as the projection head. The class comes from the
folder's ``architectures``: ``AutoModel`` would build a ``DPRQuestionEncoder`` for a context encoder too,
whose weight names do not match, and leave it random.

Out: :func:`write_dpr_encoder` writes a BERT tower as a DPR question or context encoder folder that
transformers' DPR classes load and that gives the same vectors; :func:`check_dpr_expressible` refuses
first what DPR cannot express.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from densekit.errors import ConfigError
from densekit.modeling.backbone import Backbone, _check_loaded
from densekit.modeling.projection import FoundHead

#: DPR class -> the attribute holding its DPREncoder (and the prefix of its weight names).
DPR_SIDES = {"DPRQuestionEncoder": "question_encoder", "DPRContextEncoder": "ctx_encoder"}
#: densekit kind -> the DPR class that embeds it.
DPR_CLASS_OF_KIND = {"query": "DPRQuestionEncoder", "passage": "DPRContextEncoder"}
#: DPRConfig fields that are not BERT's.
_DPR_ONLY_FIELDS = ("projection_dim", "architectures", "model_type", "transformers_version", "_name_or_path")


def load_dpr_encoder(path: str, config: Any, load_kwargs: dict[str, Any]) -> Backbone:
    """The BERT, head and pooling of a ``DPRQuestionEncoder`` / ``DPRContextEncoder`` folder."""
    import transformers

    names = [name for name in (getattr(config, "architectures", None) or []) if name in DPR_SIDES]
    if not names:
        raise ConfigError(f"{path} is a DPR checkpoint (model_type dpr) of architecture "
                          f"{getattr(config, 'architectures', None)!r}; densekit loads DPRQuestionEncoder and "
                          "DPRContextEncoder folders (a DPRReader is not a retriever encoder). Set \"architectures\" "
                          "in its config.json to the class it was saved from.")
    klass = getattr(transformers, names[0])
    dpr, info = klass.from_pretrained(path, output_loading_info=True, **load_kwargs)
    _check_loaded(path, info, names[0])
    side = getattr(dpr, DPR_SIDES[names[0]])
    bert = _plain_bert(side.bert_model, dpr.config)
    head = None
    if getattr(side, "projection_dim", 0) > 0:
        head = FoundHead({k: v.detach().clone() for k, v in side.encode_proj.state_dict().items()},
                         f"{path} ({names[0]} encode_proj)")
    return Backbone(bert, head=head, pooling="cls", normalize=False)


def _plain_bert(inner: torch.nn.Module, dpr_config: Any) -> torch.nn.Module:
    """A ``BertModel`` with ``inner``'s weights and a ``BertConfig`` of the same sizes.

    Why not keep ``inner``: its config is a DPRConfig (model_type ``dpr``), so saving it would write a
    folder that is neither BERT nor DPR, and the BERT-only speed-ups (seeded dropout, fast inference) would
    not recognise it. The BERT pooler, which DPR lacks and densekit never runs, is zeros rather than random:
    saved and reloaded (``AutoModel`` builds one) it stays what it was, so the weights fingerprint (the
    embedding cache key) of a reloaded tower is the same. Built under a forked generator: its throw-away
    random init draws nothing from torch's stream.
    """
    from transformers import BertConfig, BertModel

    values = {k: v for k, v in dpr_config.to_dict().items() if k not in _DPR_ONLY_FIELDS}
    bert_config = BertConfig(**values)
    bert_config._attn_implementation = dpr_config._attn_implementation
    with torch.random.fork_rng(devices=[]):
        bert = BertModel(bert_config)
    with torch.no_grad():
        for parameter in bert.pooler.parameters():
            parameter.zero_()
    result = bert.load_state_dict(inner.state_dict(), strict=False)
    if result.unexpected_keys or any(not key.startswith("pooler.") for key in result.missing_keys):
        raise ConfigError(f"the DPR encoder's BERT does not match a BertModel of its config ({result}).")
    return bert.to(next(inner.parameters()).dtype)


def check_dpr_expressible(tower: Any, kind: str, untied: bool = True) -> None:
    """ConfigError unless transformers' DPR class for ``kind`` computes this tower's vectors: a full-weight
    BERT, cls pooling, no normalization, no prefix (DPR feeds the text as it is). ``untied=False``: the
    tower is a model's shared encoder (messages say "the model")."""
    what = f"the {kind} tower" if untied else "the model"
    model = getattr(tower, "model", None)
    if model is None or hasattr(model, "peft_config"):
        raise ConfigError(f"--format dpr needs full weights; {what} holds LoRA adapters (or no Hugging Face model). "
                          "Merge the adapters (peft's merge_and_unload), save, and export that.")
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type != "bert":
        raise ConfigError(f"--format dpr needs a BERT model (DPR's encoders are BERT); {what} is {model_type!r}. "
                          "Use --format sentence-transformers for other architectures.")
    pooling = getattr(tower, "pooling", None)
    if pooling != "cls":
        raise ConfigError(f"--format dpr needs cls pooling (DPR's vector is the first token's state); {what} uses "
                          f"{pooling!r} pooling. Use --format sentence-transformers, or train with --pooling cls.")
    if getattr(tower, "normalize", False):
        raise ConfigError(f"--format dpr cannot express normalize=True ({what} L2-normalizes its vectors; DPR scores "
                          "by raw dot product). Use --format sentence-transformers (it has a Normalize module).")
    prefix = tower.args.query_prefix if kind == "query" else tower.args.passage_prefix
    if prefix:
        raise ConfigError(f"--format dpr cannot express the {kind} prefix {prefix!r}: DPR's classes encode the text as "
                          "given. Use --format sentence-transformers (prefixes become prompts).")


def write_dpr_encoder(tower: Any, kind: str, folder: Path, tokenizer: Any = None) -> None:
    """Write ``tower`` (checked by :func:`check_dpr_expressible`) as the DPR encoder of ``kind`` into
    ``folder``: a DPRConfig of the BERT's sizes with ``projection_dim`` = the head's size (0 without one),
    the weights renamed into the DPR class (``<side>.bert_model.*``, ``<side>.encode_proj.*``, a BERT pooler
    dropped: DPR has none), and the tokenizer."""
    import transformers
    from transformers import DPRConfig

    class_name = DPR_CLASS_OF_KIND[kind]
    bert = tower.model
    head = getattr(tower, "projection", None)
    values = {k: v for k, v in bert.config.to_dict().items()
              if k not in ("architectures", "model_type", "transformers_version", "_name_or_path")}
    config = DPRConfig(**{**values, "projection_dim": head.out_features if head is not None else 0})
    with torch.random.fork_rng(devices=[]):
        dpr = getattr(transformers, class_name)(config)
    side = getattr(dpr, DPR_SIDES[class_name])
    state = {k: v for k, v in bert.state_dict().items() if not k.startswith("pooler.")}
    side.bert_model.load_state_dict(state, strict=True)
    if head is not None:
        with torch.no_grad():
            side.encode_proj.weight.copy_(head.weight)
            if head.bias is not None:
                side.encode_proj.bias.copy_(head.bias)
            else:
                side.encode_proj.bias.zero_()
    dpr.to(next(bert.parameters()).dtype).save_pretrained(str(folder))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
