"""Embedding folders that outlive a run: encode a corpus (or a shard of it) on one machine, search on another.

This is GC-DPR's ``generate_dense_embeddings`` / ``dense_retriever`` split and OpenMatch's
``build_index`` / ``retrieve``, on the cache's folder format (float32 ``.npy`` blocks written atomically,
``ids.txt``, a manifest with checksums): shards written by independent jobs are read back as one index,
in the order given, and an interrupted encoding resumes from its last finished block.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from densekit.cache import CacheEntry, fingerprint, texts_fingerprint
from densekit.data.store import TextStore
from densekit.distributed import shard_range
from densekit.errors import ConfigError, InputError
from densekit.evaluation.embeddings import model_fingerprint, tokenizer_fingerprint
from densekit.evaluation.encoding import encode_texts
from densekit.search.topk import FastResultHeapq, add_corpus_block


@dataclass
class SearchResult:
    """Top-k lists: rows follow ``query_ids``; ``indices`` point into ``doc_ids`` (-1 = none)."""

    query_ids: list[str]
    doc_ids: list[str]
    scores: np.ndarray
    indices: np.ndarray


def formatted_texts(model, store: TextStore, kind: str, rows: range, dataset_name: Optional[str] = None) -> list[str]:
    """The texts the encoder sees for ``rows`` of a store (the model's own formatting)."""
    if kind == "query":
        return [model.format_query(store.text_at(i), dataset=dataset_name) for i in rows]
    return [model.format_passage(store.text_at(i), title=store.title_at(i) or None, dataset=dataset_name)
            for i in rows]


def encode_to_folder(model, tokenizer, store: TextStore, kind: str, output_dir: str | Path, *,
                     shard_id: int = 0, num_shards: int = 1, batch_size: int = 64, max_len: Optional[int] = None,
                     block_size: int = 16_384, dataset_name: Optional[str] = None,
                     device: Optional[str] = None, show_progress: bool = True) -> CacheEntry:
    """Encode shard ``shard_id`` of ``num_shards`` of a store into ``output_dir``; resumable and atomic."""
    if kind not in ("query", "passage"):
        raise ConfigError(f"kind must be 'query' or 'passage', got {kind!r}.")
    if not 0 <= shard_id < num_shards:
        raise ConfigError(f"shard_id must be in [0, num_shards); got shard_id={shard_id}, num_shards={num_shards}.")
    rows = shard_range(len(store), shard_id, num_shards)
    ids = store.ids[rows.start:rows.stop]
    texts = formatted_texts(model, store, kind, rows, dataset_name)
    max_len = max_len or getattr(model, "max_length", None)
    append_eos = bool(getattr(model, "append_eos_token", False))
    key = fingerprint(kind, tokenizer_fingerprint(tokenizer), model_fingerprint(model, max_len, append_eos),
                      texts_fingerprint(ids, texts))
    entry = CacheEntry(path=Path(output_dir), key=key, block_size=block_size)
    if entry.is_complete():
        print(f"densekit encode: {output_dir} already holds these {len(ids)} {kind} embeddings; nothing to do")
        return entry
    model.to(device or "cpu").eval()
    began = time.perf_counter()

    def encode_rows(start: int, stop: int) -> np.ndarray:
        return encode_texts(model, tokenizer, texts[start:stop], kind=kind, batch_size=batch_size, max_len=max_len,
                            append_eos=append_eos, device=device, show_progress=show_progress,
                            desc=f"encoding {kind} rows {rows.start + start}-{rows.start + stop}")

    encoded = entry.build(ids, encode_rows, info={"kind": kind, "shard_id": shard_id, "num_shards": num_shards,
                                                  "rows": [rows.start, rows.stop], "sources": store.sources})
    print(f"densekit encode: {len(ids)} {kind} embeddings in {output_dir} ({encoded} encoded now, "
          f"{len(ids) - encoded} from an earlier interrupted run) in {time.perf_counter() - began:.1f}s")
    return entry


def search_folders(query_folder: str | Path, corpus_folders: Sequence[str | Path], topk: int,
                   chunk_size: int = 40_960, device: Optional[str] = None) -> SearchResult:
    """Exact top-k of every query in ``query_folder`` over the corpus shards in ``corpus_folders`` (in order)."""
    query_entry = CacheEntry.open(query_folder)
    query_ids, query_embs = query_entry.load()
    queries = torch.tensor(np.asarray(query_embs), device=device)
    heap = FastResultHeapq(topk=topk, device=device)
    doc_ids: list[str] = []
    for folder in corpus_folders:
        entry = CacheEntry.open(folder)
        ids = entry.read_ids()
        base = len(doc_ids)
        doc_ids.extend(ids)
        for start, block in entry.iter_blocks():
            if block.shape[1] != queries.shape[1]:
                raise InputError(f"corpus vectors have {block.shape[1]} dimensions, queries {queries.shape[1]}.",
                                 path=folder, fix="encode queries and corpus with the same model.")
            add_corpus_block(heap, queries, block, base + start, chunk_size)
    if len(set(doc_ids)) != len(doc_ids):
        raise InputError("the same document id appears in two corpus embedding folders.",
                         path=corpus_folders[0], fix="give each shard once.")
    scores, indices = heap.results()
    return SearchResult(query_ids=list(query_ids), doc_ids=doc_ids, scores=scores.cpu().numpy(),
                        indices=indices.cpu().numpy())
