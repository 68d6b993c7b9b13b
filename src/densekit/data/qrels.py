"""MaterializedQRelConfig: where a set of (query, document, score) judgments comes from and how it is filtered.

A config names qrel, corpus and query files (each a path or a list of paths, merged) and the processing
applied to its records, in this order: ``min_score`` (keep score >= min_score), ``max_score`` (keep score <
max_score), ``filter_fn`` (arbitrary predicate on (query_id, doc_id, score)), ``max_per_query`` (keep the k
highest-scored documents of each query, ties by doc id, ranked on the score as read), ``score_transform`` (a
constant or a callable on the score). :func:`materialize` turns a config into a :class:`MaterializedQRel`; the
judgments of several configs, each processed its own way first, merge with :func:`merge_qrels`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from densekit.errors import ConfigError, InputError

PathLike = Union[str, Path]
Paths = Union[PathLike, Sequence[PathLike]]
ScoreTransform = Union[int, float, Callable[[float], float], None]
RecordFilter = Callable[[str, str, float], bool]


def as_path_list(paths: Optional[Paths]) -> list[Path]:
    """Normalize one path or a list of paths to a list of ``Path``."""
    if paths is None:
        return []
    if isinstance(paths, (str, Path)):
        return [Path(paths)]
    return [Path(p) for p in paths]


@dataclass
class MaterializedQRelConfig:
    """Where judgments, documents and queries come from, and how the judgments are filtered.

    ``corpus_cache`` / ``query_cache`` name the embedding cache files of this corpus/query set inside
    ``EvaluationArguments.encoding_cache_dir``; by default the name is derived from the file contents and
    the model, so nobody has to keep track of cache files by hand.
    """

    qrel_path: Optional[Paths] = None
    corpus_path: Optional[Paths] = None
    query_path: Optional[Paths] = None
    corpus_cache: Optional[str] = None
    query_cache: Optional[str] = None
    min_score: Optional[float] = None
    max_score: Optional[float] = None
    filter_fn: Optional[RecordFilter] = None
    score_transform: ScoreTransform = None
    max_per_query: Optional[int] = None

    def __post_init__(self) -> None:
        if self.max_per_query is not None and (isinstance(self.max_per_query, bool) or self.max_per_query < 1):
            raise ConfigError(f"max_per_query must be a positive number of documents, got {self.max_per_query!r}.")
        if not as_path_list(self.corpus_path):
            raise ConfigError("MaterializedQRelConfig needs corpus_path (a file or a list of files).")
        if not as_path_list(self.query_path):
            raise ConfigError("MaterializedQRelConfig needs query_path (a file or a list of files).")
        for name in ("min_score", "max_score"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ConfigError(f"{name} must be a number, got {value!r}.")
        for name in ("corpus_cache", "query_cache"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or "/" in value or "\\" in value
                                      or value in ("", ".", "..")):
                raise ConfigError(f"{name}={value!r} must be a plain file name (it names an entry inside "
                                  "EvaluationArguments.encoding_cache_dir), without folders.")
        if self.min_score is not None and self.max_score is not None and self.min_score >= self.max_score:
            raise ConfigError(
                f"min_score={self.min_score} >= max_score={self.max_score} keeps no judgment "
                "(min_score keeps score >= min_score, max_score keeps score < max_score)."
            )
        if self.score_transform is not None and not (
            callable(self.score_transform) or isinstance(self.score_transform, (int, float))
        ):
            raise ConfigError("score_transform must be a number or a callable taking the score.")

    def keeps(self, query_id: str, doc_id: str, score: float) -> bool:
        """Whether a judgment passes this config's score bounds and filter."""
        if self.min_score is not None and score < self.min_score:
            return False
        if self.max_score is not None and score >= self.max_score:
            return False
        if self.filter_fn is not None and not self.filter_fn(query_id, doc_id, score):
            return False
        return True

    def transform(self, score: float) -> float:
        """Apply ``score_transform`` (a constant replaces the score; a callable maps it)."""
        if self.score_transform is None:
            return score
        if callable(self.score_transform):
            return float(self.score_transform(score))
        return float(self.score_transform)


@dataclass
class MaterializedQRel:
    """Judgments after filtering: query id -> {doc id: score}, with the files they came from."""

    qrels: dict[str, dict[str, float]]
    corpus_paths: list[Path] = field(default_factory=list)
    query_paths: list[Path] = field(default_factory=list)
    qrel_paths: list[Path] = field(default_factory=list)
    corpus_cache: Optional[str] = None
    query_cache: Optional[str] = None

    @property
    def num_judgments(self) -> int:
        return sum(len(docs) for docs in self.qrels.values())


def materialize(config: MaterializedQRelConfig) -> MaterializedQRel:
    """Read a config's qrel files (merged in order) and apply its filters and score transform."""
    from densekit.data.formats import read_qrels

    qrel_paths = as_path_list(config.qrel_path)
    raw: dict[str, dict[str, int]] = read_qrels(qrel_paths) if qrel_paths else {}
    kept: dict[str, dict[str, float]] = {}
    for qid, docs in raw.items():
        passed = [(did, score) for did, score in docs.items() if config.keeps(qid, did, score)]
        if config.max_per_query is not None and len(passed) > config.max_per_query:
            passed = sorted(passed, key=lambda kv: (-kv[1], kv[0]))[: config.max_per_query]
        for did, score in passed:
            kept.setdefault(qid, {})[did] = config.transform(score)
    return MaterializedQRel(
        qrels=kept,
        corpus_paths=as_path_list(config.corpus_path),
        query_paths=as_path_list(config.query_path),
        qrel_paths=qrel_paths,
        corpus_cache=config.corpus_cache,
        query_cache=config.query_cache,
    )


def merge_qrels(parts: Sequence[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Merge judgment dicts; a (query, doc) pair judged by several parts keeps the highest score."""
    merged: dict[str, dict[str, float]] = {}
    for part in parts:
        for qid, docs in part.items():
            target = merged.setdefault(qid, {})
            for did, score in docs.items():
                if did not in target or score > target[did]:
                    target[did] = score
    return merged


def as_config_list(configs) -> list[MaterializedQRelConfig]:
    """One config or a list of configs -> list; anything else is a ConfigError."""
    if isinstance(configs, MaterializedQRelConfig):
        return [configs]
    configs = list(configs or [])
    if not configs or not all(isinstance(c, MaterializedQRelConfig) for c in configs):
        raise ConfigError("Expected a MaterializedQRelConfig or a non-empty list of them.")
    return configs


def unique_paths(groups: Sequence[Sequence[Path]]) -> list[Path]:
    """Flatten lists of paths, dropping repeats of the same file, keeping first-seen order."""
    seen: dict[Path, None] = {}
    for group in groups:
        for path in group:
            seen.setdefault(Path(path).resolve(), None)
    return list(seen)


def require_files(paths: Sequence[Path], what: str) -> None:
    """Fail before any long work when a named file is missing."""
    for path in paths:
        if not Path(path).is_file():
            raise InputError(f"{what} file not found.", path=path, fix="check the path (relative paths are "
                             "resolved from the current directory).")
