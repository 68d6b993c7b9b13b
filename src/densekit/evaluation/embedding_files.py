"""Embedding folders that outlive a run: encode a corpus (or a shard of it) on one machine, search on another.

This is GC-DPR's ``generate_dense_embeddings`` / ``dense_retriever`` split and OpenMatch's
``build_index`` / ``retrieve``, on the cache's folder format (float32 ``.npy`` blocks written atomically,
``ids.json`` (a JSON list), a sidecar with key and SHA-256 per block, a manifest with checksums): shards written by independent jobs are read back as one index,
in the order given, and an interrupted encoding resumes from its last finished block.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from densekit.cache import CacheEntry
from densekit.data.store import TextStore
from densekit.distributed import shard_range
from densekit.errors import ConfigError, InputError
from densekit.evaluation.encoding import encode_texts
from densekit.evaluation.output import SearchResult
from densekit.modeling.encoding_spec import embedding_key, encoding_spec
from densekit.search.topk import ExactSearcher


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
    spec = encoding_spec(model, tokenizer, kind, max_len=max_len)
    key = embedding_key(spec, model, ids, texts)  # the evaluator's cache uses the same key
    entry = CacheEntry(path=Path(output_dir), key=key, block_size=block_size)
    if entry.is_complete():
        print(f"densekit encode: {output_dir} already holds these {len(ids)} {kind} embeddings; nothing to do")
        return entry
    model.to(device or "cpu").eval()
    began = time.perf_counter()

    def encode_rows(start: int, stop: int) -> np.ndarray:
        return encode_texts(model, tokenizer, texts[start:stop], kind=kind, batch_size=batch_size,
                            max_len=spec.max_len, append_eos=spec.append_eos, device=device, show_progress=show_progress,
                            desc=f"encoding {kind} rows {rows.start + start}-{rows.start + stop}")

    encoded = entry.build(ids, encode_rows, info={"kind": kind, "shard_id": shard_id, "num_shards": num_shards,
                                                  "rows": [rows.start, rows.stop], "sources": store.sources,
                                                  "encoding": spec.describe()})
    print(f"densekit encode: {len(ids)} {kind} embeddings in {output_dir} ({encoded} encoded now, "
          f"{len(ids) - encoded} from an earlier interrupted run) in {time.perf_counter() - began:.1f}s")
    return entry


def search_folders(query_folder: str | Path, corpus_folders: Sequence[str | Path], topk: int,
                   device: Optional[str] = None) -> SearchResult:
    """Exact top-k of every query in ``query_folder`` over the corpus shards in ``corpus_folders`` (in order).

    The same search as the evaluator's (:class:`~densekit.search.ExactSearcher`), fed the memory-mapped
    blocks of each folder in turn.
    """
    query_entry = CacheEntry.open(query_folder)
    query_ids, query_embs = query_entry.load()
    entries = [CacheEntry.open(folder) for folder in corpus_folders]  # all checked before any search
    doc_ids: list[str] = []
    bases = []
    for entry in entries:
        bases.append(len(doc_ids))
        doc_ids.extend(entry.read_ids())
    if len(set(doc_ids)) != len(doc_ids):
        raise InputError("the same document id appears in two corpus embedding folders.",
                         path=corpus_folders[0], fix="give each shard once.")
    with ExactSearcher(np.asarray(query_embs), topk, device=device) as searcher:
        for folder, entry, base in zip(corpus_folders, entries, bases):
            for start, block in entry.iter_blocks():
                if block.shape[1] != query_embs.shape[1]:
                    raise InputError(f"corpus vectors have {block.shape[1]} dimensions, queries "
                                     f"{query_embs.shape[1]}.", path=folder,
                                     fix="encode queries and corpus with the same model.")
                searcher.add(base + start, block)
        scores, indices = searcher.results()
    return SearchResult(query_ids=list(query_ids), doc_ids=doc_ids, scores=scores, indices=indices)
