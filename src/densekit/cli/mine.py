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

With answers instead of qrels (``--qa_file``, or ``--results`` of ``densekit evaluate --qa_file``) it mines
answer-aware training data (:mod:`densekit.qa.mining`): hard negatives are top-ranked passages without an
answer, positives the gold passages of a DPR retriever file and/or top-ranked passages with an answer,
optionally plus other paragraphs of the positive's article without an answer (``--in_article_negatives``)::

    densekit mine --model_name_or_path MODEL --qa_file retriever/train.json --passages psgs.tsv \
        --n_docs 100 --num_hard_negatives 7 --answer_positives 0 --output_format dpr beir --output_dir hn
    densekit mine --results dev/results.json --qa_file retriever/dev.json --passages psgs.tsv \
        --in_article_negatives 3 --output_format tevatron --output_dir hn
    densekit train --model_name_or_path MODEL --dataset hn/beir --negative_qrel_path hn/beir/qrels/train.tsv ...
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from densekit.cli.arguments import parse_dataclasses
from densekit.cli.evaluate import DatasetArguments, build_evaluator
from densekit.data.data_args import DataArguments
from densekit.errors import ConfigError
from densekit.files import atomic_write
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


@dataclass
class AnswerMineArguments:
    """Answer-aware mining (``--qa_file`` / ``--results``): what becomes a positive and a negative."""

    num_hard_negatives: int = field(default=30, metadata={
        "help": "retrieved passages WITHOUT an answer kept per question, best first (Tevatron/OpenMatch: 30)"})
    negative_skip_top: int = field(default=0, metadata={"help": "skip the top r ranks before taking negatives"})
    answer_positives: int = field(default=1, metadata={
        "help": "retrieved passages WITH an answer added as positives, best first (after gold ones)"})
    gold_positives: bool = field(default=True, metadata={
        "help": "keep the positive_ctxs of a DPR retriever --qa_file as positives"})
    in_article_negatives: int = field(default=0, metadata={
        "help": "other passages with the positive's title and no answer, per question (SQuAD-like data)"})
    negative_seed: int = field(default=0, metadata={"help": "seed of the in-article negatives' order"})
    output_format: list[str] = field(default_factory=lambda: ["dpr"], metadata={
        "help": "dpr: output_dir/train.json; tevatron: output_dir/train.jsonl; beir: output_dir/beir/ "
                "(what densekit train --dataset reads)"})

    def __post_init__(self) -> None:
        from densekit.qa.mining import OUTPUT_FORMATS

        if isinstance(self.output_format, str):
            self.output_format = [self.output_format]
        unknown = [f for f in self.output_format if f not in OUTPUT_FORMATS]
        if unknown or not self.output_format:
            raise ConfigError(f"--output_format {' '.join(self.output_format)}: with answers use one or more of "
                              f"{', '.join(OUTPUT_FORMATS)}.")

    def settings(self, match: str):
        from densekit.qa.mining import AnswerMiningSettings

        return AnswerMiningSettings(num_hard_negatives=self.num_hard_negatives, skip_top=self.negative_skip_top,
                                    answer_positives=self.answer_positives, gold_positives=self.gold_positives,
                                    in_article_negatives=self.in_article_negatives, seed=self.negative_seed,
                                    match=match)


@dataclass
class ResultsMineArguments:
    """``densekit mine --results R.json``: mine from a results JSON (no model)."""

    results: str = field(metadata={"help": "results JSON of densekit evaluate --qa_file (or DPR's dense_retriever)"})
    output_dir: str = field(default="./densekit_mine", metadata={"help": "where the training files go"})
    qa_file: Optional[str] = field(default=None, metadata={
        "help": "the questions the results were made from (a DPR retriever .json gives gold positives)"})
    passages: Optional[str] = field(default=None, metadata={"help": "passage file (for --in_article_negatives)"})
    match: str = field(default="string", metadata={"help": "answer matching of in-article negatives: string|regex"})

    def __post_init__(self) -> None:
        from densekit.qa.answers import MATCH_MODES

        if self.match not in MATCH_MODES:
            raise ConfigError(f"--match {self.match!r}: use one of {', '.join(MATCH_MODES)}.")


def wants_answer_mining(argv: list[str]) -> bool:
    return any(a.split("=")[0] in ("--qa_file", "--results") for a in argv)


def _report_answer_mining(counts: dict[str, int], paths: dict[str, Path]) -> None:
    where = ", ".join(str(p) for p in paths.values())
    print(f"densekit mine: {counts['kept']} of {counts['questions']} questions with a positive "
          f"({counts['skipped_no_positive']} without one left out): {counts['positives']} positives, "
          f"{counts['hard_negatives']} hard negatives without an answer, {counts['in_article_negatives']} "
          f"in-article negatives -> {where}", flush=True)
    with atomic_write(Path(next(iter(paths.values()))).parent / "answer_mining.json") as handle:
        json.dump({"counts": counts, "files": {k: str(v) for k, v in paths.items()}}, handle, indent=1)


def run_answer_mining(argv) -> int:
    """``densekit mine --qa_file ... | --results ...`` (see the module doc)."""
    from densekit import distributed
    from densekit.qa.mining import mine_answer_negatives, write_training_files

    if any(a.split("=")[0] == "--results" for a in argv):
        from densekit.data.formats import read_corpus
        from densekit.data.formats.qa import read_qa
        from densekit.qa.retrieval import read_results

        args, mine_args = parse_dataclasses((ResultsMineArguments, AnswerMineArguments), argv,
                                            prog="densekit mine --results")
        settings = mine_args.settings(args.match)
        if settings.in_article_negatives and not args.passages:
            raise ConfigError("--in_article_negatives needs --passages (the passage collection).")
        results = read_results(args.results)
        examples = read_qa(args.qa_file) if args.qa_file else None
        passages = read_corpus(args.passages) if args.passages else None
        mined, counts = mine_answer_negatives(results, settings, examples=examples, passages=passages)
        paths = write_training_files(args.output_dir, mined, mine_args.output_format)
        _report_answer_mining(counts, paths)
        return 0
    from densekit.cli.evaluate import QAArguments, search_qa, write_qa_files

    model_args, data_args, eval_args, qa_args, mine_args = parse_dataclasses(
        (ModelArguments, DataArguments, EvaluationArguments, QAArguments, AnswerMineArguments), argv,
        prog="densekit mine --qa_file")
    settings = mine_args.settings(qa_args.match)
    examples, results, evaluator = search_qa(model_args, data_args, eval_args, qa_args)
    if results is not None and distributed.rank() == 0:
        write_qa_files(model_args, eval_args, qa_args, results, evaluator, seconds=None)
        mined, counts = mine_answer_negatives(results, settings, examples=examples,
                                              passages=evaluator.eval_dataset.corpus)
        paths = write_training_files(eval_args.output_dir, mined, mine_args.output_format)
        _report_answer_mining(counts, paths)
    distributed.barrier()
    return 0


def run(argv) -> int:
    from densekit import distributed

    if wants_answer_mining(list(argv)):
        return run_answer_mining(list(argv))

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
