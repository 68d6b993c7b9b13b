"""Parsing sub-command options into densekit's dataclasses, from flags or a YAML/JSON file.

Every option is checked here, before a command does any work: an unknown flag, a missing or malformed
value, a size of 0 or a model folder that cannot load is a :class:`~densekit.errors.ConfigError` naming
the option, which ``densekit`` prints as one line. A traceback from argparse, torch or transformers an
hour into a run (or an empty output folder left behind) is what these checks exist to prevent.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
from argparse import Namespace
from pathlib import Path
from typing import Any, NoReturn, Sequence

import yaml
from transformers import HfArgumentParser

from densekit.errors import ConfigError, DensekitError

#: Integer options that count things (rows, texts, shards, tokens): 0 or less cannot work. Every option whose
#: name ends in ``_size`` is one too (batch, block, chunk and group sizes).
POSITIVE_OPTIONS = frozenset({
    "num_shards", "gradient_accumulation_steps", "eval_accumulation_steps", "search_topk", "topk", "depth",
    "max_length", "query_max_len", "passage_max_len", "lora_r", "grad_cache_workers", "max_queries",
})
#: Integer options that may be 0 but not negative.
NON_NEGATIVE_OPTIONS = frozenset({"shard_id", "num_negatives", "dataloader_num_workers"})


class OptionParser(HfArgumentParser):
    """``HfArgumentParser`` whose errors are ConfigErrors (one clear line) instead of usage + exit 2."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message}; see `{self.prog} --help`.")


def config_to_flags(values: dict[str, Any], path: Path) -> list[str]:
    """Turn a mapping read from a config file into command-line flags (lists become repeated values)."""
    flags: list[str] = []
    for key, value in values.items():
        if value is None:
            continue
        flags.append(f"--{key}")
        if isinstance(value, (list, tuple)):
            flags.extend(str(v) for v in value)
        elif isinstance(value, bool):
            flags.append("true" if value else "false")
        elif isinstance(value, dict):
            raise ConfigError(f"{path}: option {key!r} is a mapping; give it as a JSON string instead.")
        else:
            flags.append(str(value))
    return flags


def closest(name: str, known: Sequence[str]) -> str:
    """`` (did you mean --x?)`` for the known option nearest to ``name``, or an empty string."""
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean --{match[0]}?)" if match else ""


def unknown_option_error(remaining: Sequence[str], known: Sequence[str], prog: str) -> ConfigError:
    """The error for arguments no dataclass field took: the first unknown flag, or a stray value."""
    flag = next((arg for arg in remaining if arg.startswith("-")), None)
    if flag is None:
        return ConfigError(f"unexpected argument {remaining[0]!r} (options are --name value); see `{prog} --help`.")
    name = flag.lstrip("-").split("=", 1)[0]
    return ConfigError(f"unknown option --{name}{closest(name, known)}; see `{prog} --help`.")


def check_counts(namespace: Namespace) -> None:
    """Refuse sizes and counts that cannot work (``--block_size 0``, ``--per_device_train_batch_size 0``)
    while they are still plain values, so the error names the flag and comes before any work."""
    for name, value in vars(namespace).items():
        if isinstance(value, bool) or not isinstance(value, int):
            continue
        if (name.endswith("_size") or name in POSITIVE_OPTIONS) and value < 1:
            raise ConfigError(f"--{name} must be a positive integer, got {value}.")
        if name in NON_NEGATIVE_OPTIONS and value < 0:
            raise ConfigError(f"--{name} must be 0 or more, got {value}.")
    shard, shards = getattr(namespace, "shard_id", None), getattr(namespace, "num_shards", None)
    if isinstance(shard, int) and isinstance(shards, int) and shard >= shards:
        raise ConfigError(f"--shard_id {shard} is not below --num_shards {shards}; shards are 0 .. {shards - 1}.")


def check_model_options(outputs: Sequence[Any]) -> None:
    """A command that loads a model needs ``--model_name_or_path``, and its folder must be loadable.

    Checked at parse time because some commands read and cache data before they load the model.
    """
    from densekit.modeling.model_args import ModelArguments

    for args in outputs:
        if not isinstance(args, ModelArguments):
            continue
        if not args.model_name_or_path:
            raise ConfigError("--model_name_or_path is required: the local folder of the model to use (or "
                              "--query_model_name_or_path and --passage_model_name_or_path for untied towers).")
        if args.encoder_class in ("default", "DefaultEncoder"):
            from densekit.modeling.encoders.default import check_model_folder

            paths = {args.tower_path(kind) for kind in ("query", "passage")} if args.untied else \
                {args.model_name_or_path}
            for path in sorted(paths):
                check_model_folder(path)


def build(types: Sequence[type], namespace: Namespace, prog: str) -> tuple:
    """One instance per dataclass from the parsed values; a ValueError of a class's own checks (e.g.
    transformers' TrainingArguments) becomes a ConfigError, because at this point it can only be an option."""
    outputs = []
    for dtype in types:
        keys = {f.name for f in dataclasses.fields(dtype) if f.init}
        try:
            outputs.append(dtype(**{k: v for k, v in vars(namespace).items() if k in keys}))
        except DensekitError:
            raise
        except ValueError as err:
            raise ConfigError(f"{err} (see `{prog} --help`)") from err
    return tuple(outputs)


def parse_dataclasses(types: Sequence[type], argv: Sequence[str], prog: str) -> tuple:
    """Fill ``types`` from ``argv``; a first argument ending in ``.yaml``/``.yml``/``.json`` is a config file.

    Flags after the file override its values (``densekit evaluate conf.yaml --output_dir other``), since
    the file's options are read as flags placed before them. Raises :class:`ConfigError` for any bad
    option (see the module docstring), before anything is read, loaded or written.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = OptionParser(list(types), prog=prog, allow_abbrev=False)  # a typo must not pass as a prefix
    known = sorted({f.name for t in types for f in dataclasses.fields(t) if f.init})
    argv = list(argv)
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        path = Path(argv[0])
        if not path.is_file():
            raise ConfigError(f"config file {path} not found.")
        with open(path, encoding="utf-8") as handle:
            try:
                values = yaml.safe_load(handle) or {}  # YAML is a superset of JSON
            except yaml.YAMLError as err:
                raise ConfigError(f"{path}: not valid YAML/JSON: {err}") from err
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of option names to values.")
        unknown = sorted(set(map(str, values)) - set(known))
        if unknown:
            raise ConfigError(f"{path}: unknown option(s) {', '.join(unknown)}{closest(unknown[0], known)}; "
                              f"see `{prog} --help`.")
        argv = config_to_flags(values, path) + argv[1:]
    namespace, remaining = parser.parse_known_args(args=argv)
    if remaining:
        raise unknown_option_error(remaining, known, prog)
    check_counts(namespace)
    outputs = build(types, namespace, prog)
    check_model_options(outputs)
    return outputs
