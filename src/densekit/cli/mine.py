"""``densekit mine``: hard negatives for the judged queries of a dataset (OpenMatch build_hn / ANCE style).

Which retrieved documents become negatives is set by the selection flags (densekit.evaluation.mining
explains each): ``--mine_skip_top r`` and ``--mine_max_rank R`` (rank window), ``--mine_num_negatives k``
(default ``--search_topk``), ``--mine_sample true --mine_seed S`` (a seeded sample of k from the window),
``--no_annot_in_mined_hn true``, ``--mine_max_score``, ``--mine_relative_margin`` (0.95 = NV-Retriever's
TopK-PercPos), ``--mine_absolute_margin`` and ``--mine_positive_reference min|mean|max``. Bad values stop the
command before anything is encoded.

Always writes ``output_dir/mined_qrels.tsv`` (query-id, corpus-id, similarity; each query's documents best
first), ``mined_run.trec`` (the same negatives with their rank in the search and score), ``mining.json``
(settings, counts per rule, fingerprint), the audit ``audit.md`` + ``audit.png`` (``--mine_audit false`` to
skip; ``--audit_qrels FILE ...`` counts kept negatives that other qrels judge relevant) and, with
``--merge_mined_qrels``, ``merged_qrels.tsv``. With ``--output_format tevatron`` it also
writes ``output_dir/train.jsonl``, Tevatron / OpenMatch training data as OpenMatch's build_hn makes::

    {"query_id", "query", "positive_passages": [{"docid", "title", "text", "score"}],
     "negative_passages": [{"docid", "title", "text"}, ...]}

Positives are the query's judgments >= ``--min_positive_score`` (as ``densekit convert`` and ``densekit
train`` read them); negatives are the query's mined documents in rank order, never one of its positives
(with ``--no_annot_in_mined_hn`` no annotated document is mined at all). A query without a positive is left
out with a counted warning, since Tevatron needs one.

    densekit mine --model_name_or_path MODEL --dataset scifact --split train --search_topk 30 \\
        --no_annot_in_mined_hn true --output_format tevatron --output_dir hn   # hn/train.jsonl
    densekit mine --model_name_or_path MODEL --dataset nfcorpus --split train --search_topk 100 \\
        --mine_num_negatives 30 --mine_skip_top 10 --mine_relative_margin 0.95 --no_annot_in_mined_hn true \\
        --audit_qrels nfcorpus/qrels/dev.tsv --output_dir hn   # ranks 11-100, k=30, TopK-PercPos 95%
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from densekit.cli.arguments import parse_dataclasses
from densekit.cli.evaluate import DatasetArguments, build_evaluator
from densekit.data.data_args import DataArguments
from densekit.errors import ConfigError
from densekit.evaluation.evaluation_args import EvaluationArguments
from densekit.modeling.model_args import ModelArguments

TEVATRON_FILE = "train.jsonl"


@dataclass
class MineArguments:
    """What ``densekit mine`` writes besides the mined qrels."""

    output_format: Literal["qrels", "tevatron"] = field(
        default="qrels",
        metadata={"help": "qrels: output_dir/mined_qrels.tsv (+ merged_qrels.tsv) only; tevatron: those and also "
                          f"output_dir/{TEVATRON_FILE}, Tevatron/OpenMatch training lines (query, judged positives, "
                          "mined negatives in rank order; queries without a positive are skipped)"})
    min_positive_score: float = field(
        default=1.0, metadata={"help": "tevatron output: judgments >= this are positives"})

    def __post_init__(self) -> None:
        if self.output_format != "tevatron" and self.min_positive_score != 1.0:
            raise ConfigError("--min_positive_score only applies to --output_format tevatron.")


def positives_only(qrels: dict[str, dict[str, float]], min_positive_score: float) -> dict[str, dict[str, float]]:
    """Each judged query's positives; a query without one keeps an empty entry (so it is counted as skipped)."""
    return {qid: {d: s for d, s in docs.items() if s >= min_positive_score} for qid, docs in qrels.items()}


def write_mined_tevatron(path: Path, dataset, mined_qrels_path: Path, min_positive_score: float = 1.0,
                         progress: bool = True) -> dict[str, int]:
    """Write ``path`` from the dataset's judgments and the mined qrels file, through ``write_tevatron``.

    ``dataset`` is the evaluator's :class:`~densekit.data.datasets.MultiLevelDataset` (corpus, queries,
    qrels); the mined file lists each query's documents best first, the order the negatives keep.
    """
    from densekit.data.formats import read_qrels
    from densekit.data.formats.collection import Collection
    from densekit.data.formats.tevatron import write_tevatron

    positives = positives_only(dataset.qrels, min_positive_score)
    mined = read_qrels(mined_qrels_path)
    negatives = {qid: [d for d in mined.get(qid, {}) if d not in positives[qid]] for qid in positives}
    collection = Collection(corpus=dataset.corpus, queries=dataset.queries, qrels=positives)
    return write_tevatron(path, collection, negatives, min_positive_score=min_positive_score, progress=progress)


def run(argv) -> int:
    from densekit import distributed

    model_args, data_args, eval_args, dataset_args, mine_args = parse_dataclasses(
        (ModelArguments, DataArguments, EvaluationArguments, DatasetArguments, MineArguments), argv,
        prog="densekit mine")
    evaluator = build_evaluator(model_args, data_args, eval_args, dataset_args)
    tevatron = mine_args.output_format == "tevatron"
    if tevatron:  # fail before encoding anything when no training line could be written
        dataset = evaluator.eval_dataset
        if not any(s >= mine_args.min_positive_score for docs in dataset.qrels.values() for s in docs.values()):
            raise ConfigError(f"no judgment is >= --min_positive_score {mine_args.min_positive_score:g}, so "
                              "--output_format tevatron has no positive to write; lower --min_positive_score "
                              "or check --split / --qrel_path.")
    paths = evaluator.mine_hard_negatives()
    if tevatron and distributed.rank() == 0:
        out = Path(eval_args.output_dir) / TEVATRON_FILE
        counts = write_mined_tevatron(out, evaluator.eval_dataset, paths["mined"], mine_args.min_positive_score,
                                      progress=not eval_args.disable_tqdm)
        skipped = counts["skipped_no_positive"]
        if skipped:
            print(f"densekit mine: warning: {skipped} of {skipped + counts['queries']} queries have no judgment "
                  f">= {mine_args.min_positive_score:g} (no positive) and are left out of {out}.",
                  file=sys.stderr, flush=True)
        print(f"densekit mine: tevatron: {counts['queries']} queries, {counts['positives']} positives, "
              f"{counts['negatives']} negatives -> {out}", flush=True)
    distributed.barrier()
    return 0
