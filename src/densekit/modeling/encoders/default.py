"""DefaultEncoder ("default"): any Hugging Face encoder checkpoint plus a pooling, an optional linear
projection head and an optional normalization.

Covers BERT-style encoders (Contriever, E5, BGE, MiniLM: cls or mean pooling), decoder LLM embedders
(last-token pooling with an appended eos), the encoder of encoder-decoder checkpoints (T5, GTR, Sentence-T5)
and Hugging Face DPR question/context encoders (:mod:`densekit.modeling.backbone` picks the class).
Settings left unset in ``ModelArguments`` come from the checkpoint's sentence-transformers files (pooling,
Normalize, a Dense module as the projection head), so a sentence-transformers model gives the same vectors
as ``SentenceTransformer.encode`` without any flag.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from densekit.errors import ConfigError
from densekit.modeling.backbone import load_backbone
from densekit.modeling.encoders.base import PretrainedEncoder, read_densekit_config
from densekit.modeling.encoding_spec import NO_LIMIT
from densekit.modeling.fast_inference import accelerate_for_inference
from densekit.modeling.model_args import POOLING_CHOICES, ModelArguments
from densekit.modeling.projection import (PROJECTION_FILE, FoundHead, read_openmatch_head, read_projection_file,
                                          read_st_dense, resolve_head, save_projection)
from densekit.modeling.st_config import read_st_defaults



def _dtype_kwarg() -> str:
    """transformers renamed ``torch_dtype`` to ``dtype`` in 4.56; use whichever this version expects."""
    import transformers

    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


_DTYPE_KWARG = _dtype_kwarg()


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Reduce token states [B, T, d] to one vector per row [B, d].

    - ``cls``: the first non-padding token (position 0 with right padding).
    - ``mean``: masked mean, summed in float32 for half-precision inputs and divided by the token count
      clamped at 1e-9, exactly as sentence-transformers' Pooling module computes it.
    - ``last_token``: the last non-padding token, correct for right and for left padding.
    """
    if mode == "cls":
        first = attention_mask.to(torch.int32).argmax(dim=1)
        return hidden[torch.arange(hidden.size(0), device=hidden.device), first]
    if mode == "mean":
        acc_dtype = torch.float32 if hidden.dtype in (torch.float16, torch.bfloat16) else hidden.dtype
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * mask).sum(dim=1, dtype=acc_dtype)
        counts = torch.clamp(mask.sum(dim=1, dtype=acc_dtype), min=1e-9)
        return (summed / counts).to(hidden.dtype)
    if mode == "last_token":
        seq_len = attention_mask.size(1)
        last = seq_len - 1 - attention_mask.to(torch.int32).flip(dims=[1]).argmax(dim=1)
        return hidden[torch.arange(hidden.size(0), device=hidden.device), last]
    raise ConfigError(f"pooling={mode!r} is unknown; choose one of {', '.join(POOLING_CHOICES)}.")


def _model_length_limit(model_dir: str, config: Any) -> Optional[int]:
    """The longest input the checkpoint accepts: position embeddings, capped by the tokenizer's limit
    (RoBERTa-style models have 514 positions but take 512 tokens)."""
    limits = []
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and 0 < positions < NO_LIMIT:
        limits.append(positions)
    tok_file = Path(model_dir) / "tokenizer_config.json"
    if tok_file.is_file():
        try:
            value = json.loads(tok_file.read_text(encoding="utf-8")).get("model_max_length")
        except (json.JSONDecodeError, UnicodeDecodeError):
            value = None
        if isinstance(value, (int, float)) and 0 < value < NO_LIMIT:
            limits.append(int(value))
    return min(limits) if limits else None


def check_model_folder(path: str | Path) -> None:
    """Refuse a local model folder ``AutoModel`` cannot load, naming the folder and what is missing.

    transformers reports these cases as a ValueError or OSError from deep inside its loading code; here
    they fail before anything is loaded. A name that is not an existing path (a hub id the offline cache
    may resolve) and a folder of LoRA adapters (``adapter_config.json``, loaded through peft) are left to
    the loader.
    """
    folder = Path(path).expanduser()
    if not folder.exists():
        if folder.is_absolute() or str(path).startswith((".", "~")) or len(folder.parts) > 2:
            raise ConfigError(f"model folder {str(path)!r} does not exist; model_name_or_path must be a local "
                              "checkpoint directory (Hugging Face or sentence-transformers layout).")
        return
    if not folder.is_dir():
        raise ConfigError(f"{str(path)!r} is a file; model_name_or_path must be a checkpoint folder.")
    if (folder / "adapter_config.json").is_file():
        return
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"model folder {str(path)!r} has no config.json"
                          f"{' (the folder is empty)' if not any(folder.iterdir()) else ''}; it needs the Hugging "
                          "Face files (config.json, weights, tokenizer) at its top level.")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{config_file}: not valid JSON ({err}); the model folder's config.json is damaged.")
    if not isinstance(config, dict) or not config.get("model_type"):
        raise ConfigError(f"{config_file} has no \"model_type\" (e.g. \"bert\"), so transformers cannot tell which "
                          "architecture to load; add it, or re-save the model with save_pretrained.")


class DefaultEncoder(PretrainedEncoder):
    """Wrap ``transformers.AutoModel`` with cls / mean / last_token pooling and optional L2 normalization.

    Resolution of unset arguments: ``pooling`` -> what the architecture fixes (DPR: cls) -> sentence-transformers
    Pooling config -> ``"mean"``; ``normalize`` -> the architecture (DPR: no) -> a sentence-transformers
    Normalize module -> ``False``; ``max_length`` -> ``max_seq_length`` of ``sentence_bert_config.json`` -> the
    model's position limit; ``projection_dim`` -> the folder's head (densekit's ``projection.safetensors``,
    DPR's ``encode_proj``, a sentence-transformers Dense module) -> none. A ``projection_dim`` for a folder
    without a head adds a new, trained one. Extra keyword arguments go to ``from_pretrained`` (e.g.
    ``attn_implementation="eager"``).
    """

    _alias = "default"

    def __init__(self, args: ModelArguments, **kwargs: Any) -> None:
        super().__init__(args)
        path = args.model_name_or_path
        if not path:
            raise ConfigError("model_name_or_path is required to load an encoder; pass a checkpoint directory.")
        check_model_folder(path)
        defaults = read_st_defaults(path)
        load_kwargs: dict[str, Any] = {"trust_remote_code": args.trust_remote_code}
        if args.torch_dtype is not None:
            dtype = "auto" if args.torch_dtype == "auto" else getattr(torch, args.torch_dtype)
            load_kwargs[_DTYPE_KWARG] = dtype
        load_kwargs.update(kwargs)
        backbone = load_backbone(str(path), load_kwargs)
        self.model = backbone.model
        pooling = args.pooling or backbone.pooling or defaults.pooling or "mean"
        if pooling not in POOLING_CHOICES:
            raise ConfigError(
                f"{path} declares sentence-transformers pooling {pooling!r}, which densekit does not implement; "
                f"pass pooling= one of {', '.join(POOLING_CHOICES)} explicitly."
            )
        self.pooling: str = pooling
        if args.normalize is not None:
            self.normalize: bool = args.normalize
        else:
            self.normalize = backbone.normalize if backbone.normalize is not None else bool(defaults.normalize)
        self.projection: Optional[torch.nn.Linear] = _projection_head(str(path), args, backbone.head, defaults,
                                                                      self.model)
        self.fast_inference: bool = getattr(args, "fast_inference", True)
        self.max_length: Optional[int] = (
            args.max_length or defaults.max_seq_length or _model_length_limit(str(path), self.model.config)
        )

    @property
    def config(self) -> Any:
        """The wrapped model's Hugging Face config (Trainer and PEFT look for it)."""
        return self.model.config

    @property
    def append_eos_token(self) -> bool:
        """Last-token pooling reads the final token, so it must be the eos the model was trained with."""
        return self.pooling == "last_token"

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Run the model, pool its last hidden states, normalize when asked; returns [B, d]."""
        fast = None
        if self.fast_inference and not self.training and torch.is_inference_mode_enabled():
            fast = accelerate_for_inference(self.model)  # cheap; None for unsupported architectures
        if fast is not None:
            return fast(input_ids, attention_mask, self._pool_and_normalize, **kwargs)
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        return self._pool_and_normalize(outputs.last_hidden_state, attention_mask)

    def _pool_and_normalize(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pool the token states, apply the projection head if any, then normalize if asked."""
        embeddings = pool(hidden, attention_mask, self.pooling)
        if self.projection is not None:
            embeddings = self.projection(embeddings.to(self.projection.weight.dtype))
        if self.normalize:
            embeddings = F.normalize(embeddings, p=2, dim=-1)
        return embeddings

    def densekit_config(self) -> dict[str, Any]:
        config = super().densekit_config()
        config.update(pooling=self.pooling, normalize=self.normalize, max_length=self.max_length,
                      projection_dim=self.projection.out_features if self.projection is not None else None)
        return config

    def _save_model(self, directory: Path, **kwargs: Any) -> None:
        """The Hugging Face weights, and the projection head beside them (``projection.safetensors``)."""
        self.model.save_pretrained(str(directory), **kwargs)
        save_projection(self.projection, directory)

    def load_weights(self, directory: Path) -> None:
        """Strictly load the Hugging Face weights of ``directory`` into ``self.model``.

        Every weight of the model must be in the folder with its shape (except weights tied to another
        one, which Hugging Face does not write), and the folder must hold nothing else; the same for the
        projection head (``projection.safetensors``: present exactly when this encoder has a head, same
        shapes); otherwise a ConfigError, and nothing is loaded. LoRA models load their adapters (what
        ``save_pretrained`` writes for them).
        """
        directory = Path(directory)
        model = self.model
        adapters = hasattr(model, "peft_config")
        if adapters:
            from peft import get_peft_model_state_dict, set_peft_model_state_dict

            current = get_peft_model_state_dict(model)
        else:
            current = model.state_dict()
        saved = read_safetensors(directory, "adapter_model.safetensors" if adapters else "model.safetensors")
        tied = set(getattr(model, "all_tied_weights_keys", None) or ()) | \
            set(getattr(model, "_keys_to_ignore_on_save", None) or ())
        check_same_weights(directory, current, saved, ignore=tied)
        head_saved = read_projection_file(directory)
        head_current = {} if self.projection is None else self.projection.state_dict()
        check_same_weights(directory, {f"projection.{k}": v for k, v in head_current.items()},
                           {f"projection.{k}": v for k, v in (head_saved.state if head_saved else {}).items()})
        with torch.no_grad():
            if self.projection is not None:
                self.projection.load_state_dict(head_saved.state, strict=True)
            if adapters:
                set_peft_model_state_dict(model, saved)
            else:
                model.load_state_dict(saved, strict=False)  # strict by the check above; tied weights follow
                if set(current) - set(saved) and hasattr(model, "tie_weights"):
                    model.tie_weights()


def _projection_head(path: str, args: ModelArguments, architecture_head: Optional[FoundHead], defaults: Any,
                     model: torch.nn.Module) -> Optional[torch.nn.Linear]:
    """The encoder's projection head: the folder's (densekit's file, else the architecture's, e.g. DPR's
    ``encode_proj``, else a sentence-transformers Dense module, else OpenMatch's ``head_q`` / ``head_p``), a new
    one of ``args.projection_dim``, or None.

    A folder whose ``densekit_config.json`` records a head it does not hold is refused: a new random head in
    its place would change every vector of a trained model.
    """
    found = read_projection_file(path) if Path(path).is_dir() else None
    if found is None:
        saved = read_densekit_config(path) if Path(path).is_dir() else None
        if saved and saved.get("projection_dim"):
            raise ConfigError(f"{path}: densekit_config.json records a {saved['projection_dim']}-dimensional "
                              f"projection head but {PROJECTION_FILE} is missing; the checkpoint is incomplete. "
                              "Copy the file from where the model was trained, or save the model again.")
        found = architecture_head or (read_st_dense(defaults.dense) if defaults.dense is not None else None) \
            or read_openmatch_head(path)
    hidden_size = getattr(model.config, "hidden_size", None) or getattr(model.config, "d_model", None)
    head = resolve_head(path, args.projection_dim, int(hidden_size), found)
    if head is not None:
        parameter = next(model.parameters(), None)
        if parameter is not None:  # quantized (integer) weights: the head stays float32
            head = head.to(device=parameter.device,
                           dtype=parameter.dtype if parameter.is_floating_point() else None)
    return head


def read_safetensors(directory: Path, name: str) -> dict[str, torch.Tensor]:
    """Every tensor of ``directory/name``, or of the shards its ``name.index.json`` lists, on the CPU."""
    from safetensors.torch import load_file

    if (directory / name).is_file():
        return load_file(directory / name, device="cpu")
    index = directory / f"{name}.index.json"
    if not index.is_file():
        raise ConfigError(f"{directory} has no {name} (nor {index.name}): not a complete densekit checkpoint. "
                          "Give a checkpoint folder written by densekit train (e.g. output_dir/checkpoint-20).")
    shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(load_file(directory / shard, device="cpu"))
    return state


def check_same_weights(directory: Path, current: dict[str, torch.Tensor], saved: dict[str, torch.Tensor],
                       ignore: set[str] = frozenset()) -> None:
    """ConfigError naming what differs unless ``saved`` has exactly ``current``'s names and shapes."""
    missing = sorted(set(current) - set(saved) - set(ignore))
    unexpected = sorted(set(saved) - set(current))
    shapes = [f"{k} {tuple(saved[k].shape)} vs {tuple(current[k].shape)}"
              for k in sorted(set(saved) & set(current)) if saved[k].shape != current[k].shape]
    if not (missing or unexpected or shapes):
        return

    def some(names: list[str]) -> str:
        return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")

    parts = [f"{what}: {some(names)}" for what, names in (("missing", missing), ("unexpected", unexpected),
                                                           ("other shape", shapes)) if names]
    raise ConfigError(f"the weights in {directory} do not match the model ({'; '.join(parts)}); nothing was "
                      "loaded. Resume from a checkpoint of the same model (same --model_name_or_path, LoRA "
                      "settings, encoder_class and projection_dim).")
