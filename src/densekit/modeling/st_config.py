"""Read the defaults a sentence-transformers checkpoint folder declares about itself.

A sentence-transformers folder says how it wants to be used in three small files: ``modules.json`` (the
module chain, where a ``Normalize`` module means unit-length embeddings), the pooling module's
``config.json`` (cls / mean / last token ...) and ``sentence_bert_config.json`` (``max_seq_length``).
Sentence-T5 and GTR add a ``Dense`` module after the pooling (a linear map of the pooled vector, identity
activation): it is read here as the encoder's projection head.
Loading such a model with plain transformers and forgetting them silently changes its embeddings; reading
them here lets densekit reproduce ``SentenceTransformer.encode`` with no flags.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from densekit.errors import ConfigError, InputError
from densekit.files import read_json

_FIX = "restore the file from the original checkpoint"

# sentence-transformers pooling names (new single key and legacy boolean keys) -> densekit names.
_ST_MODE_NAMES = {"cls": "cls", "mean": "mean", "lasttoken": "last_token"}
_LEGACY_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


#: Dense activations densekit reproduces: none (the linear map alone), as Sentence-T5 and GTR use.
_IDENTITY_ACTIVATIONS = {"torch.nn.modules.linear.Identity", "torch.nn.Identity", "Identity"}


@dataclass(frozen=True)
class DenseModule:
    """A sentence-transformers ``Dense`` module after the pooling: folder, sizes and whether it has a bias."""

    folder: Path
    in_features: int
    out_features: int
    bias: bool


@dataclass(frozen=True)
class SentenceTransformerDefaults:
    """What a checkpoint folder declares; ``None`` where it declares nothing.

    ``pooling`` is a densekit name (``cls``, ``mean``, ``last_token``) or, for a mode densekit does not
    implement (``max``, ``weightedmean``, a combination), the sentence-transformers name, so the caller can
    refuse it with a clear message instead of pooling differently.
    """

    pooling: Optional[str] = None
    normalize: Optional[bool] = None
    max_seq_length: Optional[int] = None
    is_sentence_transformers: bool = False
    dense: Optional[DenseModule] = None


def _pooling_name(config: dict) -> str:
    mode = config.get("pooling_mode")
    if mode is None:
        active = [name for key, name in _LEGACY_KEYS.items() if config.get(key)]
        mode = active[0] if len(active) == 1 else ("+".join(active) if active else "mean")
    if isinstance(mode, (list, tuple)):
        mode = mode[0] if len(mode) == 1 else "+".join(mode)
    return _ST_MODE_NAMES.get(mode, mode)


def read_st_defaults(model_dir: str | Path | None) -> SentenceTransformerDefaults:
    """Return the pooling / normalize / max length a sentence-transformers folder declares.

    A path that is not a local folder, or a folder without ``modules.json`` (a plain Hugging Face
    checkpoint), gives all-``None`` defaults.
    """
    if model_dir is None:
        return SentenceTransformerDefaults()
    root = Path(model_dir)
    modules_file = root / "modules.json"
    if not modules_file.is_file():
        return SentenceTransformerDefaults()
    modules = read_json(modules_file, fix=_FIX)
    if not isinstance(modules, list):
        raise InputError("expected a JSON list of modules", path=modules_file,
                         fix=_FIX)
    pooling: Optional[str] = None
    normalize = False
    dense: Optional[DenseModule] = None
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind == "Pooling":
            config_file = root / module.get("path", "") / "config.json"
            pooling = _pooling_name(read_json(config_file, fix=_FIX)) if config_file.is_file() else "mean"
        elif kind == "Normalize":
            normalize = True
        elif kind == "Dense":
            dense = _read_dense(root, module, after_pooling=pooling is not None, first=dense is None)
    max_seq_length = None
    st_file = root / "sentence_bert_config.json"
    if st_file.is_file():
        value = read_json(st_file, fix=_FIX).get("max_seq_length")
        max_seq_length = int(value) if value is not None else None
    return SentenceTransformerDefaults(pooling=pooling, normalize=normalize, max_seq_length=max_seq_length,
                                       is_sentence_transformers=True, dense=dense)


def _read_dense(root: Path, module: dict, *, after_pooling: bool, first: bool) -> DenseModule:
    """The Dense module of ``modules.json``, refused (ConfigError) where densekit's projection head (one
    linear map between pooling and normalization) would compute something else."""
    folder = root / module.get("path", "")
    config = read_json(folder / "config.json", fix=_FIX)
    what = f"{root}: the sentence-transformers Dense module {module.get('path', '')!r}"
    if not first:
        raise ConfigError(f"{what} is the second Dense module; densekit's projection head is one linear map. "
                          "Load the model with sentence-transformers instead.")
    if not after_pooling:
        raise ConfigError(f"{what} comes before the Pooling module (a per-token map); densekit applies its "
                          "projection head to the pooled vector only.")
    activation = str(config.get("activation_function", "torch.nn.modules.activation.Tanh"))
    if activation not in _IDENTITY_ACTIVATIONS:
        raise ConfigError(f"{what} has activation {activation!r}; densekit's projection head is linear "
                          "(identity activation, as in Sentence-T5 and GTR). Load the model with "
                          "sentence-transformers.")
    if config.get("use_residual") or config.get("module_input_name", "sentence_embedding") != "sentence_embedding":
        raise ConfigError(f"{what} uses a residual connection or another input than the sentence embedding; "
                          "densekit's projection head cannot express it.")
    try:
        return DenseModule(folder=folder, in_features=int(config["in_features"]),
                           out_features=int(config["out_features"]), bias=bool(config.get("bias", True)))
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"Dense config lacks a valid in_features/out_features ({err})",
                         path=folder / "config.json", fix=_FIX) from err
