"""Content-addressed embedding cache shared by encode, evaluate and mine.

An entry holds the embeddings of one input (a corpus or a query set) under one model. Its key combines
the content of the input (the file bytes, or the exact list of ids and texts) with a fingerprint of the
model and of everything that changes its vectors (weights, pooling, normalization, prefixes, templates,
max length), so a new checkpoint or a new option never silently reuses stale vectors.

Layout of an entry folder::

    <root>/<key or user name>/
        block_000000.npy ...   float32 rows, each block written atomically (temp file + rename)
        ids.txt                one id per line, written atomically with the manifest
        manifest.json          written last: fingerprint, dim, count, block sizes and SHA-256 of each block

An entry without a manifest is unfinished: its finished blocks are reused (an interrupted encoding
resumes from the last complete block) and the rest is encoded. A block whose size or checksum does not
match is encoded again, never read as valid.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from densekit.files import atomic_write

logger = logging.getLogger(__name__)
FORMAT_VERSION = 1


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(*parts: object) -> str:
    """A short stable hash of JSON-serializable parts."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def texts_fingerprint(ids: Sequence[str], texts: Sequence[str]) -> str:
    """Hash of exactly what is encoded: ids and formatted texts, in order."""
    digest = hashlib.sha256()
    for i, t in zip(ids, texts):
        digest.update(i.encode("utf-8", "surrogatepass"))
        digest.update(b"\x1f")
        digest.update(t.encode("utf-8", "surrogatepass"))
        digest.update(b"\x1e")
    return digest.hexdigest()[:24]


@dataclass
class CacheEntry:
    """One entry folder; see the module docstring for its layout."""

    path: Path
    key: str
    block_size: int

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    @classmethod
    def open(cls, path: str | Path) -> "CacheEntry":
        """A finished embedding folder (written by ``densekit encode`` or the cache), checked whole."""
        from densekit.errors import InputError

        path = Path(path)
        manifest = _read_json(path / "manifest.json")
        if manifest is None:
            raise InputError("not a finished embedding folder (no manifest.json).", path=path,
                             fix="run `densekit encode` for it again; an interrupted run resumes where it stopped.")
        entry = cls(path=path, key=manifest["key"], block_size=manifest["block_size"])
        if not entry.is_complete():
            raise InputError("embedding folder is damaged (a block is missing or fails its checksum).", path=path,
                             fix="run the same `densekit encode` command again: it re-encodes the damaged blocks.")
        return entry

    @property
    def info(self) -> dict:
        """What the manifest says beyond the blocks (kind, source file, shard...)."""
        return (self._read_manifest() or {}).get("info", {})

    def block_path(self, number: int) -> Path:
        return self.path / f"block_{number:06d}.npy"

    def is_complete(self) -> bool:
        """A manifest exists, names this key, and every block matches its recorded size and checksum."""
        manifest = self._read_manifest()
        if manifest is None or manifest.get("key") != self.key or manifest.get("version") != FORMAT_VERSION:
            return False
        for number, (size, digest) in enumerate(zip(manifest["block_bytes"], manifest["block_sha256"])):
            path = self.block_path(number)
            if not path.is_file() or path.stat().st_size != size or sha256_file(path) != digest:
                logger.warning("embedding cache block %s is damaged; it will be encoded again", path)
                return False
        return True

    def _read_manifest(self) -> Optional[dict]:
        return _read_json(self.manifest_path)

    def load(self, mmap: bool = True) -> tuple[list[str], np.ndarray]:
        """Ids and embeddings of a complete entry (blocks memory-mapped, then joined)."""
        manifest = self._read_manifest()
        assert manifest is not None, "load() called on an incomplete entry"
        ids = self.read_ids()
        blocks = [np.load(self.block_path(n), mmap_mode="r" if mmap else None)
                  for n in range(len(manifest["block_bytes"]))]
        if not blocks:
            return ids, np.zeros((0, manifest["dim"]), dtype=np.float32)
        return ids, np.concatenate(blocks) if len(blocks) > 1 else np.asarray(blocks[0])

    def read_ids(self) -> list[str]:
        """The ids of a complete entry, in row order."""
        manifest = self._read_manifest()
        assert manifest is not None, "read_ids() called on an incomplete entry"
        if manifest["count"] == 0:
            return []
        return (self.path / "ids.txt").read_text(encoding="utf-8").split("\n")[: manifest["count"]]

    def iter_blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, block) pairs of a complete entry, memory-mapped: search without loading it all."""
        manifest = self._read_manifest()
        assert manifest is not None, "iter_blocks() called on an incomplete entry"
        start = 0
        for n in range(len(manifest["block_bytes"])):
            block = np.load(self.block_path(n), mmap_mode="r")
            yield start, block
            start += len(block)

    def _valid_block(self, number: int, rows: int) -> Optional[np.ndarray]:
        """The finished block ``number`` if it is whole and has ``rows`` rows, else None."""
        path = self.block_path(number)
        if not path.is_file():
            return None
        try:
            block = np.load(path, mmap_mode="r")
        except (ValueError, OSError, EOFError):
            return None
        if block.ndim != 2 or block.shape[0] != rows or block.dtype != np.float32:
            return None
        return block

    def build(
        self,
        ids: Sequence[str],
        encode_rows: Callable[[int, int], np.ndarray],
        on_block: Optional[Callable[[int, np.ndarray], None]] = None,
        info: Optional[dict] = None,
    ) -> int:
        """Encode rows [start, stop) block by block with ``encode_rows``, reusing finished blocks.

        ``on_block(start, block)`` is called for every block, reused or new, in order (the search streams
        through it). Returns the number of rows that had to be encoded.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        stale = self._read_manifest()
        if stale is not None and stale.get("key") != self.key:
            # A named entry (corpus_cache=...) that now holds another model's or file's vectors: start clean.
            logger.warning("embedding cache %s was made for other inputs or another model; re-encoding", self.path)
            shutil.rmtree(self.path)
            self.path.mkdir(parents=True)
        elif stale is not None:
            # Same inputs and model, but is_complete() found a damaged block: drop the blocks whose
            # checksum no longer matches, keep the rest, rewrite the manifest at the end.
            for number, digest in enumerate(stale.get("block_sha256", [])):
                path = self.block_path(number)
                if path.is_file() and sha256_file(path) != digest:
                    path.unlink()
            self.manifest_path.unlink()
        meta_path = self.path / "pending.json"
        pending = {"key": self.key, "block_size": self.block_size}
        same_layout = stale is not None and stale.get("key") == self.key and stale.get("block_size") == self.block_size
        if not same_layout and _read_json(meta_path) != pending:
            for old in self.path.glob("block_*.npy"):
                old.unlink()
            with atomic_write(meta_path) as handle:
                json.dump(pending, handle)
        encoded = 0
        sizes, digests, dim = [], [], None
        for number, start in enumerate(range(0, len(ids), self.block_size)):
            stop = min(start + self.block_size, len(ids))
            block = self._valid_block(number, stop - start)
            if block is None:
                block = np.ascontiguousarray(encode_rows(start, stop), dtype=np.float32)
                with atomic_write(self.block_path(number), "wb") as handle:
                    np.save(handle, block)
                encoded += stop - start
            dim = block.shape[1]
            if on_block is not None:
                on_block(start, block)
            sizes.append(self.block_path(number).stat().st_size)
            digests.append(sha256_file(self.block_path(number)))
        with atomic_write(self.path / "ids.txt") as handle:
            handle.write("\n".join(ids))
        manifest = {"version": FORMAT_VERSION, "key": self.key, "count": len(ids), "dim": dim or 0,
                    "block_size": self.block_size, "block_bytes": sizes, "block_sha256": digests,
                    "info": info or {}}
        with atomic_write(self.manifest_path) as handle:
            json.dump(manifest, handle, indent=1)
        meta_path.unlink(missing_ok=True)
        return encoded


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


class EmbeddingCache:
    """The cache folder: maps (input, model) keys to entries. ``name`` overrides the folder name."""

    def __init__(self, root: str | Path, block_size: int = 16_384) -> None:
        self.root = Path(root)
        self.block_size = block_size

    def entry(self, key: str, name: Optional[str] = None) -> CacheEntry:
        folder = name if name else key
        if os.sep in folder or folder in ("", ".", ".."):
            raise ValueError(f"cache name {folder!r} must be a plain folder name")
        return CacheEntry(path=self.root / folder, key=key, block_size=self.block_size)
