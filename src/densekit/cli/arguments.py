"""Parsing sub-command options into densekit's dataclasses, from flags or a YAML/JSON file."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import yaml
from transformers import HfArgumentParser

from densekit.errors import ConfigError


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


def parse_dataclasses(types: Sequence[type], argv: Sequence[str], prog: str) -> tuple:
    """Fill ``types`` from ``argv``; a first argument ending in ``.yaml``/``.yml``/``.json`` is a config file.

    Flags after the file override its values (``densekit evaluate conf.yaml --output_dir other``), since
    the file's options are read as flags placed before them.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = HfArgumentParser(list(types), prog=prog)
    argv = list(argv)
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        path = Path(argv[0])
        if not path.is_file():
            raise ConfigError(f"config file {path} not found.")
        with open(path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}  # YAML is a superset of JSON
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of option names to values.")
        known = {name for t in types for name in t.__dataclass_fields__}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown option(s) {', '.join(unknown)}; see `{prog} --help`.")
        argv = config_to_flags(values, path) + argv[1:]
    return parser.parse_args_into_dataclasses(args=argv)
