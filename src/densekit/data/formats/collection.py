"""Collection: a corpus, a query set and their judgments held together, the unit ``densekit convert`` moves
between formats; and the BEIR folder layout (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``) read
and written as one.

Texts stay in :class:`~densekit.data.store.TextStore` (Arrow) so converting a large corpus does not build
Python dicts of every text; judgments are ``{query_id: {doc_id: score}}``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from densekit.data.formats.trec import read_qrels, write_qrels
from densekit.data.store import TextStore
from densekit.errors import InputError
from densekit.files import atomic_write

PathLike = Union[str, Path]
Qrels = dict[str, dict[str, float]]


@dataclass
class Collection:
    """Documents, queries and judgments of one data set (judged ids are in the stores)."""

    corpus: TextStore
    queries: TextStore
    qrels: Qrels

    @property
    def num_judgments(self) -> int:
        return sum(len(docs) for docs in self.qrels.values())

    def summary(self) -> str:
        return f"{len(self.queries)} queries, {len(self.corpus)} documents, {self.num_judgments} judgments"


def beir_file(folder: PathLike, name: str) -> Path:
    """``folder/name`` or ``folder/name.gz``, whichever exists."""
    for candidate in (Path(folder) / name, Path(folder) / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise InputError(f"no {name} in this BEIR folder.", path=folder,
                     fix="a BEIR folder holds corpus.jsonl, queries.jsonl and qrels/<split>.tsv.")


def read_beir_folder(folder: PathLike, split: str = "test") -> Collection:
    """Read a BEIR folder; every judged query and document must be in the folder's files."""
    from densekit.data.formats import check_qrels, read_corpus, read_queries

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("BEIR folder not found.", path=folder, fix="give the folder holding corpus.jsonl.")
    qrel_path = beir_file(folder, f"qrels/{split}.tsv")
    collection = Collection(read_corpus(beir_file(folder, "corpus.jsonl")),
                            read_queries(beir_file(folder, "queries.jsonl")), read_qrels(qrel_path))
    check_qrels(collection.qrels, collection.queries, collection.corpus, path=qrel_path)
    return collection


def write_store_jsonl(path: PathLike, store: TextStore, with_title: bool = True) -> int:
    """Write a store as BEIR JSON lines (``_id``, ``title``, ``text``) atomically; returns the rows written.

    ``with_title=False`` (query sets) writes a title only for rows that have one."""
    count = 0
    with atomic_write(path, "w") as handle:
        for batch in store.table.to_batches(max_chunksize=65_536):
            columns = batch.to_pydict()
            for doc_id, title, text in zip(columns["_id"], columns["title"], columns["text"]):
                record = {"_id": doc_id, "title": title, "text": text}
                if not with_title and not title:
                    del record["title"]  # BEIR queries have no title; keep one only when there is one
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
    return count


def write_beir_folder(collection: Collection, folder: PathLike, split: str = "test") -> dict[str, Path]:
    """Write ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv`` (each atomically) into ``folder``."""
    folder = Path(folder)
    paths = {"corpus": folder / "corpus.jsonl", "queries": folder / "queries.jsonl",
             "qrels": folder / "qrels" / f"{split}.tsv"}
    write_store_jsonl(paths["corpus"], collection.corpus)
    write_store_jsonl(paths["queries"], collection.queries, with_title=False)
    write_qrels(paths["qrels"], collection.qrels, format="beir")
    return paths
