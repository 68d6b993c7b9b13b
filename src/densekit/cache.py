"""Content-addressed embedding cache shared by encode, evaluate and mine.

An entry holds the embeddings of one input (a corpus or a query set) under one model. Its key combines
the content of the input (the file bytes, or the exact list of ids and texts) with a fingerprint of the
model and of everything that changes its vectors (weights, pooling, normalization, prefixes, templates,
max length), so a new checkpoint or a new option never silently reuses stale vectors.

Layout of an entry folder::

    <entry>/
        .lock                  flock'ed: exclusive while a build writes, shared while a reader checks or reads
        block_000000.npy ...   float32 rows, each block written atomically (temp file + rename)
        block_000000.json ...  sidecar written right after its block: entry key, rows [start, stop), size and
                               SHA-256 of the bytes as they were written
        ids.json               the ids as one JSON list (any string round-trips, newlines and tabs included)
        manifest.json          written last: key, count, dim, size and SHA-256 of every block and of ids.json

Where entries live in an :class:`EmbeddingCache`: ``<root>/<key>/``, or ``<root>/<name>/<key>/`` when the
caller names the entry (``corpus_cache=...``). Why keyed under the name: two runs with different checkpoints
and the same name then write different folders and can never delete or overwrite each other's blocks.
A name keeps at most ``keep_per_name`` entries: after a build, the least recently used others are removed,
but only when unused (not built, nor checked by :meth:`CacheEntry.is_complete`) for ``grace_seconds`` and
when their lock can be taken at once, i.e. nobody is building or reading them. Why the grace period:
callers check or build an entry, then read it with a second call; an entry used moments ago is never
removed in between, so a reader gets its own vectors or, after a stall longer than the grace period, a
clear error, never another entry's vectors.

Why the lock is a file inside the entry: removing an entry removes its lock file too, so whoever takes a
lock checks afterwards that the file it locked is still the one at that path, and starts over if not.
Blocks are never changed in place (only replaced by rename or removed), so a block memory-mapped under the
lock stays valid after the lock is released.

An entry without a manifest is unfinished: a block is reused only when its sidecar names this key and
these rows and its bytes still match the recorded checksum, so a block damaged before the entry was
finished is encoded again, never sealed into the manifest. A finished entry is checked whole (every
block and the ids file against the manifest) before it is reused.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from densekit.errors import InputError
from densekit.files import atomic_write

try:
    import fcntl
except ImportError:  # Windows: no flock; entries then work as before, without protection between processes
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)
FORMAT_VERSION = 2
LOCK_NAME = ".lock"
IDS_NAME = "ids.json"
LEGACY_FILES = ("ids.txt", "pending.json")  # format 1 leftovers, removed when an entry is rebuilt


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
    """One entry folder; see the module docstring for its layout.

    ``keep`` > 0 marks an entry of a named cache folder: after a build, the sibling entries in
    ``path.parent`` beyond the ``keep`` most recently used are removed when nobody holds them and they
    have not been used for ``grace_seconds``.
    """

    path: Path
    key: str
    block_size: int
    keep: int = 0
    grace_seconds: float = 300.0

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    @property
    def ids_path(self) -> Path:
        return self.path / IDS_NAME

    @classmethod
    def open(cls, path: str | Path) -> "CacheEntry":
        """A finished embedding folder (written by ``densekit encode`` or the cache), checked whole."""
        path = Path(path)
        manifest = _read_json(path / "manifest.json")
        if manifest is None:
            raise InputError("not a finished embedding folder (no manifest.json).", path=path,
                             fix="run `densekit encode` for it again; an interrupted run resumes where it stopped.")
        if manifest.get("version") != FORMAT_VERSION:
            raise InputError(f"embedding folder written in format {manifest.get('version')}, this densekit reads "
                             f"format {FORMAT_VERSION}.", path=path,
                             fix="run the same `densekit encode` command again to re-encode it.")
        entry = cls(path=path, key=manifest["key"], block_size=manifest["block_size"])
        if not entry.is_complete():
            raise InputError("embedding folder is damaged (a block or the ids file is missing or fails its checksum).",
                             path=path, fix="run the same `densekit encode` command again: it re-encodes what is damaged.")
        return entry

    def block_path(self, number: int) -> Path:
        return self.path / f"block_{number:06d}.npy"

    def sidecar_path(self, number: int) -> Path:
        return self.path / f"block_{number:06d}.json"

    # --------------------------------------------------------------------------------------- locking
    def _acquire(self, exclusive: bool, wait: bool, create: bool) -> Optional[int]:
        """A descriptor holding the entry's lock; -1 when there is nothing to lock (no flock, read-only
        folder); None when the folder is missing (and not ``create``) or, without ``wait``, someone else
        holds the lock."""
        if fcntl is None:
            return -1
        lock_path = self.path / LOCK_NAME
        while True:
            if create:
                self.path.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
            except FileNotFoundError:
                if create:
                    continue  # removed between mkdir and open: make it again
                return None
            except OSError:
                if exclusive:
                    raise
                return -1  # a folder we cannot write: nobody can change it either
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                return None
            try:
                if os.path.samestat(os.fstat(fd), os.stat(lock_path)):
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)  # the entry was removed while we waited: lock the folder that is there now

    @contextlib.contextmanager
    def _lock(self, exclusive: bool, wait: bool = True, create: bool = False) -> Iterator[bool]:
        """Hold the entry's lock for the ``with`` block; yields False when it could not be taken."""
        fd = self._acquire(exclusive, wait, create)
        try:
            yield fd is not None
        finally:
            if fd is not None and fd >= 0:
                os.close(fd)  # closing the descriptor releases the flock

    @contextlib.contextmanager
    def _reading(self) -> Iterator[dict]:
        """The manifest of this finished entry, under a shared lock so no build changes the files meanwhile."""
        with self._lock(exclusive=False) as held:
            manifest = self._read_manifest() if held else None
            if manifest is None or manifest.get("key") != self.key or manifest.get("version") != FORMAT_VERSION:
                raise InputError("no finished embeddings for these inputs here (the entry is unfinished, or was "
                                 "removed or rebuilt for other inputs by another process).", path=self.path,
                                 fix="run the command again; it encodes what is missing.")
            yield manifest

    # --------------------------------------------------------------------------------------- reading
    def is_complete(self) -> bool:
        """A manifest exists, names this key, and every block and the ids file match their size and checksum."""
        with self._lock(exclusive=False) as held:
            return held and self._check_complete()

    def _check_complete(self) -> bool:
        manifest = self._read_manifest()
        if manifest is None or manifest.get("key") != self.key or manifest.get("version") != FORMAT_VERSION:
            return False
        try:
            files = [(self.ids_path, manifest["ids_bytes"], manifest["ids_sha256"])]
            files += [(self.block_path(n), size, digest)
                      for n, (size, digest) in enumerate(zip(manifest["block_bytes"], manifest["block_sha256"]))]
        except (KeyError, TypeError):
            return False
        for path, size, digest in files:
            if not path.is_file() or path.stat().st_size != size or sha256_file(path) != digest:
                logger.warning("embedding cache file %s is missing or damaged; it will be encoded again", path)
                return False
        if self.keep:
            with contextlib.suppress(OSError):
                os.utime(self.manifest_path)  # marks the entry as recently used (see _evict_siblings)
        return True

    def _read_manifest(self) -> Optional[dict]:
        return _read_json(self.manifest_path)

    def load(self, mmap: bool = True) -> tuple[list[str], np.ndarray]:
        """Ids and embeddings of a complete entry (blocks memory-mapped, then joined)."""
        with self._reading() as manifest:
            ids = self._read_ids(manifest)
            blocks = [np.load(self.block_path(n), mmap_mode="r" if mmap else None)
                      for n in range(len(manifest["block_bytes"]))]
            if not blocks:
                return ids, np.zeros((0, manifest["dim"]), dtype=np.float32)
            return ids, np.concatenate(blocks) if len(blocks) > 1 else np.asarray(blocks[0])

    def read_ids(self) -> list[str]:
        """The ids of a complete entry, in row order."""
        with self._reading() as manifest:
            return self._read_ids(manifest)

    def _read_ids(self, manifest: dict) -> list[str]:
        try:
            ids = json.loads(self.ids_path.read_bytes())
        except (OSError, ValueError):
            ids = None
        if not isinstance(ids, list) or len(ids) != manifest["count"] or not all(isinstance(i, str) for i in ids):
            raise InputError(f"the ids file {IDS_NAME} is missing or damaged.", path=self.path,
                             fix="run the same command (`densekit encode`, or the evaluation) again: it is rewritten.")
        return ids

    def iter_blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, block) pairs of a complete entry, memory-mapped: search without loading it all.

        The entry stays share-locked until the iteration ends, so it cannot be removed halfway.
        """
        with self._reading() as manifest:
            start = 0
            for n in range(len(manifest["block_bytes"])):
                block = np.load(self.block_path(n), mmap_mode="r")
                yield start, block
                start += len(block)

    # -------------------------------------------------------------------------------------- building
    def _reusable_block(self, number: int, start: int, stop: int) -> Optional[tuple[np.ndarray, dict]]:
        """Block ``number`` and its sidecar if the sidecar names this key and rows and the bytes match it."""
        meta = _read_json(self.sidecar_path(number))
        if meta is None or (meta.get("key"), meta.get("start"), meta.get("stop")) != (self.key, start, stop):
            return None
        try:
            data = self.block_path(number).read_bytes()
        except OSError:
            return None
        if len(data) != meta.get("bytes") or hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            logger.warning("embedding cache block %s fails its checksum; encoding it again", self.block_path(number))
            return None
        try:
            block = np.load(io.BytesIO(data))
        except (ValueError, OSError, EOFError):
            return None
        if block.ndim != 2 or block.shape[0] != stop - start or block.dtype != np.float32:
            return None
        return block, meta

    def build(
        self,
        ids: Sequence[str],
        encode_rows: Callable[[int, int], np.ndarray],
        on_block: Optional[Callable[[int, np.ndarray], None]] = None,
        info: Optional[dict] = None,
    ) -> int:
        """Encode rows [start, stop) block by block with ``encode_rows``, reusing finished blocks.

        ``on_block(start, block)`` is called for every block, reused or new, in order (the search streams
        through it). The entry is locked for the whole build: a second process building the same entry waits,
        then reuses the blocks. Returns the number of rows that had to be encoded.
        """
        with self._lock(exclusive=True, create=True):
            encoded = self._build_locked(ids, encode_rows, on_block, info)
        self._evict_siblings()
        return encoded

    def _build_locked(self, ids, encode_rows, on_block, info) -> int:
        self.manifest_path.unlink(missing_ok=True)  # unfinished from here until the new manifest is written
        for leftover in [*(self.path / name for name in LEGACY_FILES), *self.path.glob(".*.tmp")]:
            leftover.unlink(missing_ok=True)  # format-1 files; temp files of a killed build (we hold the lock)
        encoded, metas, dim = 0, [], None
        for number, start in enumerate(range(0, len(ids), self.block_size)):
            stop = min(start + self.block_size, len(ids))
            found = self._reusable_block(number, start, stop)
            if found is None:
                block = np.ascontiguousarray(encode_rows(start, stop), dtype=np.float32)
                if block.ndim != 2 or block.shape[0] != stop - start:
                    raise ValueError(f"encode_rows({start}, {stop}) returned shape {block.shape}, "
                                     f"expected ({stop - start}, dim)")
                buffer = io.BytesIO()
                np.save(buffer, block)
                data = buffer.getvalue()
                meta = {"key": self.key, "start": start, "stop": stop, "bytes": len(data),
                        "sha256": hashlib.sha256(data).hexdigest()}
                with atomic_write(self.block_path(number), "wb") as handle:
                    handle.write(data)
                with atomic_write(self.sidecar_path(number)) as handle:
                    json.dump(meta, handle)
                encoded += stop - start
            else:
                block, meta = found
            metas.append(meta)
            dim = block.shape[1]
            if on_block is not None:
                on_block(start, block)
        for stale in list(self.path.glob("block_*.npy")) + list(self.path.glob("block_*.json")):
            if int(stale.stem.split("_")[1]) >= len(metas):  # left over from a longer input or smaller blocks
                stale.unlink(missing_ok=True)
        ids_data = json.dumps(list(ids)).encode("ascii")  # ASCII escapes: even lone surrogates round-trip
        with atomic_write(self.ids_path, "wb") as handle:
            handle.write(ids_data)
        manifest = {"version": FORMAT_VERSION, "key": self.key, "count": len(ids), "dim": dim or 0,
                    "block_size": self.block_size, "block_bytes": [m["bytes"] for m in metas],
                    "block_sha256": [m["sha256"] for m in metas], "ids_bytes": len(ids_data),
                    "ids_sha256": hashlib.sha256(ids_data).hexdigest(), "info": info or {}}
        with atomic_write(self.manifest_path) as handle:
            json.dump(manifest, handle, indent=1)
        return encoded

    def _evict_siblings(self) -> None:
        """Keep at most ``keep`` entries in a named folder: remove the least recently used ones that have
        been idle for ``grace_seconds`` and that nobody holds (their lock is taken without waiting), and
        format-1 files written straight into the folder.

        An entry whose manifest or folder changed after the listing (just finished, or just checked by a
        reader, which touches the manifest) is kept: it is in use, whatever the listing said.
        """
        if self.keep <= 0:
            return
        idle_since = time.time_ns() - int(self.grace_seconds * 1e9)
        others = []
        for path in self.path.parent.iterdir():
            try:
                if path.is_file() and (path.name.startswith("block_") or path.name in ("manifest.json", *LEGACY_FILES)):
                    path.unlink()  # format 1 kept a named entry directly in this folder
                elif path.is_dir() and path != self.path:
                    others.append((_last_use(path), path))
            except FileNotFoundError:
                continue
        others.sort(key=lambda item: item[0][1], reverse=True)  # newest first
        for stamp, folder in others[max(self.keep - 1, 0):]:
            if stamp[1] > idle_since:
                continue
            victim = CacheEntry(path=folder, key="", block_size=self.block_size)
            with victim._lock(exclusive=True, wait=False) as held:
                if held and _last_use(folder) == stamp:
                    logger.info("embedding cache: removing %s (keeping the %d most recently used)", folder, self.keep)
                    shutil.rmtree(folder, ignore_errors=True)


def _last_use(folder: Path) -> tuple[int, int]:
    """When an entry was last finished or read (its manifest's mtime), else last written to (the folder's)."""
    try:
        return 1, (folder / "manifest.json").stat().st_mtime_ns
    except FileNotFoundError:
        try:
            return 0, folder.stat().st_mtime_ns
        except FileNotFoundError:
            return 0, 0


def _read_json(path: Path) -> Optional[dict]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _plain_name(value: str, what: str) -> str:
    if not value or os.sep in value or (os.altsep and os.altsep in value) or value in (".", ".."):
        raise ValueError(f"cache {what} {value!r} must be a plain folder name")
    return value


class EmbeddingCache:
    """The cache folder: maps (input, model) keys to entries, ``<root>/<key>`` or ``<root>/<name>/<key>``."""

    def __init__(self, root: str | Path, block_size: int = 16_384, keep_per_name: int = 3,
                 grace_seconds: float = 300.0) -> None:
        self.root = Path(root)
        self.block_size = block_size
        self.keep_per_name = keep_per_name
        self.grace_seconds = grace_seconds

    def entry(self, key: str, name: Optional[str] = None) -> CacheEntry:
        """The entry for ``key``; a ``name`` groups the entries of one input (at most ``keep_per_name`` kept)."""
        _plain_name(key, "key")
        if name:
            return CacheEntry(path=self.root / _plain_name(name, "name") / key, key=key,
                              block_size=self.block_size, keep=self.keep_per_name, grace_seconds=self.grace_seconds)
        return CacheEntry(path=self.root / key, key=key, block_size=self.block_size)
