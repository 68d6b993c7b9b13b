"""BiEncoderRetriever: one encoder shared by queries and passages, scored by dot product.

The retriever is what the rest of densekit holds: datasets take its ``format_query`` /
``format_passage``, the collator its ``append_eos_token``, evaluation its ``encode_query`` /
``encode_passage``, the trainer its ``forward``. It owns no pooling or formatting logic itself; that lives
in the encoder picked by ``ModelArguments.encoder_class`` (see :mod:`densekit.modeling.encoders`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from densekit import distributed
from densekit.errors import ConfigError
from densekit.modeling.encoders import PretrainedEncoder
from densekit.modeling.encoders.base import with_saved_defaults
from densekit.modeling.encoders.two_tower import TwoTowerEncoder
from densekit.modeling.losses import RetrievalLoss
from densekit.modeling.losses.false_negatives import false_negative_mask
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

    def __init__(self, encoder: PretrainedEncoder, args: Optional[ModelArguments] = None,
                 loss_fn: Optional[RetrievalLoss] = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.args = args if args is not None else encoder.args
        self.loss_fn = loss_fn if loss_fn is not None else RetrievalLoss.from_model_args(self.args)

    @classmethod
    def from_model_args(cls, args: ModelArguments, **kwargs: Any) -> "BiEncoderRetriever":
        """Instantiate the encoder named by ``args.encoder_class`` and the loss named by ``args.loss``.

        ``kwargs`` go to the encoder's constructor. A checkpoint folder saved by densekit fills the
        arguments left at their defaults from its ``densekit_config.json`` (prefixes, template, pooling,
        projection head...), so a trained model is used as it was trained. Untied towers
        (``untie_encoder`` or two checkpoints, see :class:`~densekit.modeling.encoders.two_tower.TwoTowerEncoder`)
        get one encoder each, built the same way from its own folder. ``load_in_4bit`` / ``load_in_8bit``
        add a bitsandbytes ``quantization_config`` (CUDA only); ``use_peft`` wraps each encoder's model
        with LoRA adapters so only they are trained. Both are checked before any weight is read.
        """
        if not isinstance(args, ModelArguments):
            raise ConfigError(f"from_model_args needs a ModelArguments, got {type(args).__name__}.")
        loss_fn = RetrievalLoss.from_model_args(args)
        if args.load_in_4bit or args.load_in_8bit:
            kwargs.setdefault("quantization_config", _quantization_config(args))
        if args.use_peft:
            _require_peft()
        if args.untied:
            encoder: PretrainedEncoder = TwoTowerEncoder(args, **kwargs)
        else:
            args = with_saved_defaults(args)
            encoder = PretrainedEncoder.find(args.encoder_class)(args, **kwargs)
        if args.use_peft:
            for tower in _towers(encoder):
                _add_lora(tower, args)
        return cls(encoder, args, loss_fn=loss_fn)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides: Any) -> "BiEncoderRetriever":
        """Reload a checkpoint saved by :meth:`save_pretrained`; ``overrides`` replace ModelArguments fields.

        A folder without ``densekit_config.json`` (a plain Hugging Face or sentence-transformers
        checkpoint) loads with the default encoder and the checkpoint's own defaults; a folder with
        ``query_model/`` and ``passage_model/`` (densekit's, Tevatron's or OpenMatch's untied layout) loads
        as two towers.
        """
        return cls.from_model_args(ModelArguments(**{**overrides, "model_name_or_path": str(directory)}))

    def tower(self, kind: str) -> PretrainedEncoder:
        """The encoder that embeds ``kind``: the shared encoder, or the query / passage tower when untied."""
        return self.encoder.tower(kind)

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
                label: Optional[torch.Tensor] = None, passage_row: Optional[torch.Tensor] = None,
                positive_rows: Optional[torch.Tensor] = None,
                passage_hash: Optional[torch.Tensor] = None) -> RetrieverOutput:
        """Embed whatever is given, score every query against every passage, and compute the loss.

        ``query`` / ``passage`` / ``label`` are the keys of a :class:`~densekit.data.collator.RetrievalCollator`
        batch: passages flattened group after group, ``label`` ``[Q, G]``. ``logits`` are the local scores
        ``[Q, Q*G]``. The loss is computed when both sides are given and either a label is given or the
        model is training (no label: the first passage of each group is the positive); see
        :meth:`compute_loss` for cross-device negatives and for ``passage_row`` / ``positive_rows`` /
        ``passage_hash`` (in-batch false-negative masking). Only one side given -> embeddings only, which
        is what evaluation and the gradient cache's chunked passes ask for.
        """
        query_embs = self.encode_query(query) if query is not None else None
        passage_embs = self.encode_passage(passage) if passage is not None else None
        logits = loss = None
        if query_embs is not None and passage_embs is not None:
            logits = self.similarity(query_embs, passage_embs)
            if self.loss_fn is not None and (label is not None or self.training):
                loss = self.compute_loss(query_embs, passage_embs, label, local_logits=logits,
                                         passage_row=passage_row, positive_rows=positive_rows,
                                         passage_hash=passage_hash)
        return RetrieverOutput(loss=loss, logits=logits, query=query_embs, passage=passage_embs)

    def compute_loss(self, query_embs: torch.Tensor, passage_embs: torch.Tensor,
                     label: Optional[torch.Tensor] = None,
                     local_logits: Optional[torch.Tensor] = None,
                     passage_row: Optional[torch.Tensor] = None,
                     positive_rows: Optional[torch.Tensor] = None,
                     passage_hash: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The training loss of a batch of embeddings, with negatives from every device.

        Under ``torch.distributed`` the query and passage embeddings (and labels) of every rank are
        gathered (:func:`densekit.distributed.gather_with_grad`), so each query is scored against the
        global batch, and the loss is multiplied by ``world_size`` so that DDP's gradient averaging
        gives the full-batch gradient (see :mod:`densekit.distributed`); divide by ``world_size`` to
        report it. Without a process group this is ``loss_fn(q @ p.T, label)``. The gradient cache
        calls this same function on its cached representations.

        In-batch false negatives: when the loss accepts a mask (InfoNCE, multi-positive InfoNCE) and the
        batch says which corpus row (``passage_row [Q, G]``) or text (``passage_hash [Q, G]``) each
        passage is, and optionally every judged positive row of each query (``positive_rows [Q, K]``,
        padded with -1), the columns that are judged positives or copies of a query's own positive are
        left out of its negatives (:func:`~densekit.modeling.losses.false_negatives.false_negative_mask`).
        Under torch.distributed each rank builds the mask rows of its own queries against the gathered
        passages' rows and hashes (its queries' judged positives never leave the rank), and the rows are
        gathered like the labels, so the global mask is the one a single process would build.
        """
        if self.loss_fn is None:
            raise ConfigError("this retriever has no loss; set ModelArguments.loss (e.g. 'infonce') to train it.")
        wants_mask = getattr(self.loss_fn, "accepts_mask", False) and (passage_row is not None or
                                                                      passage_hash is not None)
        if not distributed.is_distributed():
            logits = local_logits if local_logits is not None else self.similarity(query_embs, passage_embs)
            if not wants_mask:
                return self.loss_fn(logits, label)
            mask = false_negative_mask(_label_or_first(label, logits.shape, logits.device), _flat(passage_row),
                                       positive_rows, _flat(passage_hash))
            return self.loss_fn(logits, label, mask=mask)
        query_all = distributed.gather_with_grad(query_embs)
        passage_all = distributed.gather_with_grad(passage_embs)
        label_all = None if label is None else distributed.gather_with_grad(label.detach().float())
        logits = self.similarity(query_all, passage_all)
        if not wants_mask:
            return self.loss_fn(logits, label_all) * distributed.world_size()
        mask = self._distributed_mask(query_embs.shape[0], passage_embs.shape[0], label, passage_row,
                                      positive_rows, passage_hash, logits.shape)
        return self.loss_fn(logits, label_all, mask=mask) * distributed.world_size()

    @staticmethod
    def _distributed_mask(n_local_queries: int, n_local_passages: int, label: Optional[torch.Tensor],
                          passage_row: Optional[torch.Tensor], positive_rows: Optional[torch.Tensor],
                          passage_hash: Optional[torch.Tensor], global_shape: torch.Size) -> torch.Tensor:
        """The global false-negative mask: local queries' rows against gathered passages, then gathered."""
        device = next(t.device for t in (passage_row, passage_hash) if t is not None)
        label = _label_or_first(label, (n_local_queries, n_local_passages), device)
        group_size = label.shape[1]
        me = torch.full((n_local_queries,), distributed.rank(), dtype=torch.long, device=label.device)
        first_query = int((distributed.gather_with_grad(me) < distributed.rank()).sum())
        rows_all = None if passage_row is None else distributed.gather_with_grad(_flat(passage_row).long())
        hash_all = None if passage_hash is None else distributed.gather_with_grad(_flat(passage_hash).long())
        offsets = (first_query + torch.arange(n_local_queries, device=label.device)) * group_size
        local = false_negative_mask(label, rows_all, positive_rows, hash_all, group_offsets=offsets,
                                    num_passages=global_shape[1])
        return distributed.gather_with_grad(local.to(torch.uint8)).bool()

    def group_scores(self, query_embs: torch.Tensor, passage_embs: torch.Tensor) -> torch.Tensor:
        """Score of each query against its own group only: ``[Q, G]`` with ``s[i, g] = q_i . p_{i*G+g}``.

        This is what IR metrics during training rank (each query's annotated group).
        """
        n_queries = query_embs.shape[0]
        if n_queries == 0 or passage_embs.shape[0] % n_queries:
            raise ConfigError(f"{passage_embs.shape[0]} passages cannot be split into groups of {n_queries} "
                              "queries; every query needs the same number of passages.")
        groups = passage_embs.reshape(n_queries, passage_embs.shape[0] // n_queries, -1)
        return torch.einsum("qd,qgd->qg", query_embs, groups)

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        """Forwarded to the wrapped Hugging Face model(s) (``--gradient_checkpointing`` of the Trainer)."""
        for tower in _towers(self.encoder):
            model = getattr(tower, "model", None)
            if model is None or not hasattr(model, "gradient_checkpointing_enable"):
                raise ConfigError(f"{type(tower).__name__} does not support gradient checkpointing.")
            model.gradient_checkpointing_enable(**kwargs)

    # --------------------------------------------------------------------------------------- persistence
    def save_pretrained(self, directory: str | Path, tokenizer: Any = None, **kwargs: Any) -> None:
        """Write weights (safetensors, Hugging Face layout), the tokenizer if given, and densekit_config.json."""
        self.encoder.save_pretrained(directory, tokenizer=tokenizer, **kwargs)

    def load_checkpoint_weights(self, directory: str | Path) -> None:
        """Put the weights of a folder written by :meth:`save_pretrained` back into this retriever, in place.

        Why not ``load_state_dict(load_file(...))``, what ``transformers.Trainer`` does to resume: the
        folder holds the Hugging Face model's names (``embeddings.LayerNorm.bias``), this module's state
        dict has ``encoder.model.embeddings.LayerNorm.bias``, and a non-strict load of names that do not
        match keeps the current weights without a word. Each encoder loads its own files strictly
        (:meth:`PretrainedEncoder.load_weights`): every weight present with its shape, nothing else,
        otherwise a ConfigError and nothing is loaded. Used by ``RetrievalTrainer`` to resume training and
        to reload the best checkpoint.
        """
        directory = Path(directory)
        owned = {f"encoder.{name}" for name in self.encoder.state_dict()}
        outside = [key for key in self.state_dict() if key not in owned]
        if outside:  # save_pretrained writes the encoder only: these would silently stay as they are
            raise ConfigError(f"the retriever has weights outside its encoder ({', '.join(outside[:5])}), "
                              f"which checkpoints do not hold; cannot load {directory} into it.")
        self.encoder.load_weights(directory)

    def save_sentence_transformers_config(self, directory: str | Path) -> bool:
        """Add the sentence-transformers files to a folder written by :meth:`save_pretrained`.

        ``modules.json`` (Transformer -> Pooling -> Dense when the encoder has a projection head -> Normalize
        when it normalizes),
        ``1_Pooling/config.json``, ``sentence_bert_config.json`` and, when prefixes are set,
        ``config_sentence_transformers.json`` with ``query`` / ``document`` prompts. Then
        ``SentenceTransformer(directory)`` computes the same embeddings. Only for ``cls`` and ``mean``
        pooling of full weights: last-token pooling relies on the collator's appended eos, and a LoRA
        folder holds adapters only; returns ``False`` (nothing written) then.
        """
        import json

        from densekit.files import atomic_write

        pooling = getattr(self.encoder, "pooling", None)
        model = getattr(self.encoder, "model", None)
        if pooling not in ("cls", "mean") or model is None or hasattr(model, "peft_config"):
            return False
        directory = Path(directory)
        dim = int(model.config.hidden_size)

        def write(name: str, value: Any) -> None:
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(directory / name) as handle:
                json.dump(value, handle, indent=2)
                handle.write("\n")

        modules = [{"name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        head = getattr(self.encoder, "projection", None)
        if head is not None:  # between Pooling and Normalize, as densekit applies it
            from densekit.modeling.projection import write_st_dense

            modules.append(write_st_dense(head, directory, subfolder=f"{len(modules)}_Dense"))
        if getattr(self.encoder, "normalize", False):
            (directory / f"{len(modules)}_Normalize").mkdir(exist_ok=True)
            modules.append({"name": str(len(modules)), "path": f"{len(modules)}_Normalize",
                            "type": "sentence_transformers.models.Normalize"})
        modules = [{"idx": idx, **module, "name": str(idx)} for idx, module in enumerate(modules)]
        normalized = modules[-1]["type"].endswith("Normalize")
        write("1_Pooling/config.json", {
            "word_embedding_dimension": dim, "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False, "include_prompt": True,
        })
        write("sentence_bert_config.json", {"max_seq_length": self.max_length, "do_lower_case": False})
        prompts = {name: prefix for name, prefix in (("query", self.args.query_prefix),
                                                    ("document", self.args.passage_prefix)) if prefix}
        write("config_sentence_transformers.json", {"prompts": prompts, "default_prompt_name": None,
                                                    "similarity_fn_name": "cosine" if normalized else "dot"})
        write("modules.json", modules)  # last: a folder with modules.json is complete
        return True


# ------------------------------------------------------------------------------------------- loading
def _towers(encoder: PretrainedEncoder) -> list[PretrainedEncoder]:
    """The distinct encoders inside ``encoder``: itself, or its query and passage towers."""
    towers = [encoder.tower("query"), encoder.tower("passage")]
    return towers[:1] if towers[0] is towers[1] else towers


# ----------------------------------------------------------------------------------- false negatives
def _flat(values: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``[Q, G]`` per-passage values as ``[Q*G]``, in the flattened passages' order."""
    return None if values is None else values.reshape(-1)


def _label_or_first(label: Optional[torch.Tensor], shape: Any, device: torch.device) -> torch.Tensor:
    """``label``, or "first passage of each group is the positive" for ``shape = (Q, P)``."""
    if label is not None:
        return label.to(device)
    n_queries, n_passages = int(shape[0]), int(shape[1])
    made = torch.zeros(n_queries, max(n_passages // max(n_queries, 1), 1), device=device)
    made[:, 0] = 1
    return made


# --------------------------------------------------------------------------- LoRA and quantization
def _quantization_config(args: ModelArguments) -> Any:
    """A bitsandbytes config for ``load_in_4bit`` / ``load_in_8bit``; refused early where it cannot work."""
    import importlib.util

    bits = "4-bit" if args.load_in_4bit else "8-bit"
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"{bits} loading needs bitsandbytes: pip install 'densekit[quantization]' "
                          "(and a CUDA GPU), or drop load_in_4bit/load_in_8bit.")
    if not torch.cuda.is_available():
        raise ConfigError(f"{bits} loading (bitsandbytes) needs a CUDA GPU and none is visible; "
                          "drop load_in_4bit/load_in_8bit to train in full precision on this machine.")
    from transformers import BitsAndBytesConfig

    if args.load_in_4bit:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_compute_dtype=torch.bfloat16)
    return BitsAndBytesConfig(load_in_8bit=True)


def _require_peft() -> None:
    import importlib.util

    if importlib.util.find_spec("peft") is None:
        raise ConfigError("use_peft=True needs peft: pip install 'densekit[peft]', or drop use_peft.")


def _add_lora(encoder: PretrainedEncoder, args: ModelArguments) -> None:
    """Replace ``encoder.model`` by a peft model with LoRA adapters; only the adapters stay trainable.

    Saving such an encoder writes the adapters only (``adapter_config.json`` naming the base checkpoint);
    transformers loads base + adapters again from that folder when peft is installed.
    """
    from peft import LoraConfig, get_peft_model

    model = getattr(encoder, "model", None)
    if model is None:
        raise ConfigError(f"use_peft: {type(encoder).__name__} has no .model to add LoRA adapters to.")
    if args.load_in_4bit or args.load_in_8bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                        target_modules=args.lora_target_modules, bias="none")
    try:
        encoder.model = get_peft_model(model, config)
    except ValueError as err:
        raise ConfigError(f"cannot add LoRA adapters: {err}. Set lora_target_modules to module names of this "
                          "model (e.g. query value for BERT, q_proj v_proj for LLaMA).") from err
