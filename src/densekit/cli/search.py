"""``densekit search``: exact top-k over embedding folders (one or many shards) -> TREC run (+ metrics)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from densekit.cli.arguments import parse_dataclasses
from densekit.errors import ConfigError


@dataclass
class SearchArguments:
    query_embeddings: str = field(metadata={"help": "query embedding folder (densekit encode --kind query)"})
    corpus_embeddings: list[str] = field(metadata={"help": "corpus embedding folder(s), read as one index in order"})
    output_dir: str = field(metadata={"help": "where run.trec (and metrics.json with --qrels) go"})
    topk: int = field(default=1000, metadata={"help": "documents per query"})
    qrels: Optional[str] = field(default=None, metadata={"help": "judgments: also score the run"})
    measures: Optional[list[str]] = field(default=None, metadata={"help": "IR measures (with --qrels)"})
    run_tag: str = field(default="densekit", metadata={"help": "last column of run.trec"})


def run(argv) -> int:
    import time

    from densekit.data.formats import read_qrels, write_run
    from densekit.evaluation.embedding_files import search_folders
    from densekit.evaluation.metrics import compute_metrics
    from densekit.evaluation.output import write_evaluation

    (args,) = parse_dataclasses((SearchArguments,), argv, prog="densekit search")
    if args.measures and not args.qrels:
        raise ConfigError("--measures needs --qrels (the judgments to score the run against).")
    began = time.perf_counter()
    qrels = read_qrels(args.qrels) if args.qrels else None  # read before the long work: fail early
    result = search_folders(args.query_embeddings, args.corpus_embeddings, args.topk)
    if qrels is None:
        out = Path(args.output_dir)
        lines = write_run(out / "run.trec", result.query_ids, result.indices, result.scores, result.doc_ids,
                          tag=args.run_tag)
        print(f"densekit search: {len(result.query_ids)} queries x top-{args.topk} over {len(result.doc_ids)} "
              f"documents -> {out / 'run.trec'} ({lines} lines) in {time.perf_counter() - began:.1f}s")
        return 0
    metrics = compute_metrics(qrels, result.query_ids, result.indices, result.scores, result.doc_ids,
                              measures=args.measures)
    write_evaluation(Path(args.output_dir), result, metrics, tag=args.run_tag, seconds=time.perf_counter() - began,
                     settings={"search_topk": args.topk, "num_queries": len(result.query_ids),
                               "num_documents": len(result.doc_ids),
                               "corpus_embeddings": json.dumps(args.corpus_embeddings)},
                     qrels=qrels)
    return 0
