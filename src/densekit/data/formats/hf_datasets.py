"""Hugging Face ``datasets`` in Tevatron's layout, from local files only (no hub).

A Tevatron-style training set (rows with ``query_id``, ``query``, ``positive_passages``,
``negative_passages``) saved with ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, or kept as local
``.json``/``.jsonl``/``.parquet`` files, becomes a :class:`~densekit.data.formats.collection.Collection`
exactly as :mod:`densekit.data.formats.tevatron` reads a JSON-lines file. ``datasets`` is imported only when
used (``pip install densekit[datasets]``); errors name the folder or file and the row (counted from 1).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

from densekit.data.formats.collection import Collection
from densekit.data.formats.tevatron import collection_from_records
from densekit.errors import ConfigError, InputError

PathLike = Union[str, Path]
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def import_datasets():
    """The ``datasets`` module, or a ConfigError saying how to install it."""
    try:
        import datasets
    except ImportError:
        raise ConfigError("reading Hugging Face datasets needs the `datasets` package: "
                          "pip install densekit[datasets]") from None
    return datasets


def _builder(path: Path) -> Optional[str]:
    """The ``datasets`` builder for a data file (``.gz`` looked through), None for other files."""
    name = path.name.lower()
    return FILE_BUILDERS.get(Path(name[:-3] if name.endswith(".gz") else name).suffix)


def load_hf_dataset(path: PathLike, split: Optional[str] = "train") -> Any:
    """A ``datasets.Dataset`` from a ``save_to_disk`` folder or local json/parquet file(s), never the hub.

    A saved ``DatasetDict`` (or files, which load as one) gives its ``split``.
    """
    datasets = import_datasets()
    path = Path(path)
    if path.is_dir() and any((path / name).is_file() for name in ("dataset_dict.json", "state.json")):
        loaded = datasets.load_from_disk(str(path))
    elif path.is_file() or path.is_dir():
        files = sorted(p for p in path.iterdir() if _builder(p)) if path.is_dir() else [path]
        builders = {_builder(p) for p in files}
        if not files or None in builders or len(builders) != 1:
            raise InputError("expected a save_to_disk folder, or .json/.jsonl/.parquet file(s) of one kind.",
                             path=path, fix="save the dataset with save_to_disk, or point at its data files.")
        loaded = datasets.load_dataset(builders.pop(), data_files=[str(f) for f in files], split="train")
    else:
        raise InputError("Hugging Face dataset not found.", path=path,
                         fix="give a save_to_disk folder or local data files (the hub is not used).")
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ConfigError(f"{path}: no split {split!r}; the dataset has {', '.join(loaded)}.")
        loaded = loaded[split]
    return loaded


def read_hf_dataset(path: PathLike, split: Optional[str] = "train") -> Collection:
    """A collection from a local Tevatron-layout Hugging Face dataset (row numbers count from 1)."""
    dataset = load_hf_dataset(path, split)
    missing = {"query_id", "query"} - set(dataset.column_names)
    if missing:
        raise InputError(f"the dataset has no column(s) {', '.join(sorted(missing))} (columns: "
                         f"{', '.join(dataset.column_names)}).", path=path,
                         fix="expected Tevatron's layout: query_id, query, positive_passages, negative_passages.")
    label = f"{path}[{split}]"
    return collection_from_records(((i, row) for i, row in enumerate(dataset, 1)), label)
