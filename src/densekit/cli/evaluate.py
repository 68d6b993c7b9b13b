"""``densekit evaluate``: encode, search and score an encoder on a BEIR folder or explicit files; or, with
``--run``, score an existing TREC run file like trec_eval (no model).

Run-file mode takes trec_eval's habits: ``-m`` repeated or ``--measures a b`` (trec_eval names such as
ndcg_cut.10 recall.100 recip_rank P.10 map, or densekit's nDCG@10 MRR@10), ``-q`` for per-query lines
``measure qid value`` followed by the ``all`` lines, and ``-c`` to score judged queries absent from the run
as 0. Without ``-c`` the queries are those of pytrec_eval / trec_eval: the run's judged queries. Lines name
measures as trec_eval prints them (ndcg_cut_10) when trec_eval has the measure, densekit's name otherwise
(MRR@10), so the output can be compared with ``trec_eval -q`` line by line.

With ``--qa_file`` it scores by answer matching instead of qrels (DPR / GC-DPR ``dense_retriever.py``):
``--qa_file qa/dev.csv --passages psgs.tsv --model_name_or_path M`` searches ``--n_docs`` passages per
question, and ``--run run.trec --qa_file ... --passages ...`` takes the rankings of a run (e.g. of
``densekit search`` over ``densekit encode`` shard folders; ``--queries`` maps its query ids to the
questions by text). Both write DPR's results JSON, metrics.json (Accuracy@k) and report.md
(:mod:`densekit.qa.retrieval`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from densekit.cli.arguments import parse_dataclasses
from densekit.data.formats import read_qrels, read_run
from densekit.data.data_args import DataArguments
from densekit.data.qrels import MaterializedQRelConfig
from densekit.cli.compare import merge_repeated
from densekit.errors import ConfigError, InputError
from densekit.modeling.model_args import ModelArguments

if TYPE_CHECKING:  # imported where used: TrainingArguments (transformers, peft) takes seconds to import,
    # which scoring a run file does not need
    from densekit.evaluation.evaluation_args import EvaluationArguments
    from densekit.evaluation.metrics import MetricResults


@dataclass
class DatasetArguments:
    """Where the evaluation data is: a BEIR folder and split, or explicit files (which win)."""

    dataset: Optional[str] = field(default=None, metadata={"help": "BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv"})
    split: str = field(default="test", metadata={"help": "qrels split inside the BEIR folder"})
    corpus_path: Optional[list[str]] = field(default=None, metadata={"help": "corpus file(s), overrides --dataset"})
    query_path: Optional[list[str]] = field(default=None, metadata={"help": "query file(s), overrides --dataset"})
    qrel_path: Optional[list[str]] = field(default=None, metadata={"help": "qrel file(s), overrides --dataset"})
    store_cache_dir: Optional[str] = field(default=None, metadata={"help": "keep Arrow copies of text files here"})


def beir_file(folder: Path, *names: str) -> Path:
    """The first of ``names`` (plain or .gz) that exists in ``folder``."""
    for name in names:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise InputError(f"no {' or '.join(names)} in this BEIR folder.", path=folder,
                     fix="point --dataset at a folder with corpus.jsonl, queries.jsonl and qrels/<split>.tsv, "
                         "or give --corpus_path/--query_path/--qrel_path.")


def qrel_config_from(args: DatasetArguments) -> MaterializedQRelConfig:
    """A MaterializedQRelConfig from a BEIR folder and/or explicit file options."""
    folder = Path(args.dataset) if args.dataset else None
    if folder is None and not (args.corpus_path and args.query_path and args.qrel_path):
        raise ConfigError("give --dataset BEIR_FOLDER, or all of --corpus_path, --query_path and --qrel_path.")
    if folder is not None and not folder.is_dir():
        raise InputError("dataset folder not found.", path=folder, fix="check the path given to --dataset.")
    return MaterializedQRelConfig(
        corpus_path=args.corpus_path or beir_file(folder, "corpus.jsonl"),
        query_path=args.query_path or beir_file(folder, "queries.jsonl"),
        qrel_path=args.qrel_path or beir_file(folder, f"qrels/{args.split}.tsv"),
    )


def build_evaluator(model_args: ModelArguments, data_args: DataArguments, eval_args: EvaluationArguments,
                    dataset_args: DatasetArguments):
    """Model, tokenizer, dataset and RetrievalEvaluator from parsed options (shared by evaluate and mine)."""
    from transformers import AutoTokenizer

    from densekit.data.collator import RetrievalCollator
    from densekit.data.datasets import MultiLevelDataset
    from densekit.evaluation.evaluator import RetrievalEvaluator
    from densekit.modeling.retriever import BiEncoderRetriever

    qrel_config = qrel_config_from(dataset_args)
    model = BiEncoderRetriever.from_model_args(args=model_args)
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_path,
                                              trust_remote_code=model_args.trust_remote_code)
    dataset = MultiLevelDataset(data_args=data_args, qrel_config=qrel_config, format_query=model.format_query,
                                format_passage=model.format_passage, store_cache_dir=dataset_args.store_cache_dir)
    collator = RetrievalCollator(data_args=data_args, tokenizer=tokenizer, append_eos=model.append_eos_token)
    return RetrievalEvaluator(args=eval_args, model=model, tokenizer=tokenizer, data_collator=collator,
                              eval_dataset=dataset)


def evaluate(model_args: ModelArguments, data_args: DataArguments, eval_args: EvaluationArguments,
             dataset_args: DatasetArguments) -> dict[str, float]:
    """Build model, dataset and evaluator from parsed options and run the evaluation."""
    return build_evaluator(model_args, data_args, eval_args, dataset_args).evaluate()


@dataclass
class RunFileArguments:
    """``densekit evaluate --run RUN --qrels QRELS``: score a run file, no model involved."""

    run: str = field(metadata={"help": "TREC run file (qid Q0 docid rank score tag) to score instead of a model"})
    qrels: list[str] = field(metadata={"help": "qrel file(s): BEIR TSV or TREC 'qid 0 docid rel'"})
    measures: list[str] = field(
        default_factory=lambda: ["nDCG@10", "Recall@100", "MRR@10", "MAP"],
        metadata={"aliases": ["-m"], "help": "measures; repeat -m or list them: -m ndcg_cut.10 -m recall.100"})
    per_query: bool = field(default=False, metadata={"aliases": ["-q"],
                                                     "help": "print per-query lines like trec_eval -q"})
    complete: bool = field(default=False, metadata={
        "aliases": ["-c"], "help": "judged queries absent from the run score 0 (trec_eval -c); default: left out"})
    output_dir: Optional[str] = field(default=None, metadata={
        "help": "also write metrics.json, report.md and metrics_at_k.png here"})


#: Options of model mode that a user may carry over by mistake into run-file mode.
MODEL_MODE_FLAGS = frozenset({"--model_name_or_path", "--dataset", "--corpus_path", "--query_path", "--qrel_path"})


def wants_run_file(argv: list[str]) -> bool:
    """True for run-file mode: a ``--run`` flag, or a config file (first argument) with a ``run`` key."""
    if any(a == "--run" or a.startswith("--run=") for a in argv):
        return True
    if argv and argv[0].endswith((".yaml", ".yml", ".json")) and Path(argv[0]).is_file():
        import yaml

        try:
            values = yaml.safe_load(Path(argv[0]).read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError):
            return False  # parse_dataclasses reports the broken file
        return isinstance(values, dict) and "run" in values
    return False


def trec_eval_name(measure) -> str:
    """The name trec_eval prints for ``measure`` (ndcg_cut_10, recall_100, P_10, recip_rank, map)."""
    return measure.trec_name.replace(".", "_") if measure.trec_name else measure.name


def evaluate_run_file(args: RunFileArguments) -> "MetricResults":
    """Score ``args.run`` against ``args.qrels``; print trec_eval-style lines and a summary; write the
    report files when ``args.output_dir`` is set. Equal to pytrec_eval (``-c``: judged absent queries as 0)."""
    import time

    from densekit.cache import sha256_file
    from densekit.evaluation.metrics import evaluate_run_dict, metrics_at_every_cutoff, parse_measures, run_arrays
    from densekit.evaluation.output import write_metrics_report

    began = time.perf_counter()
    measures = parse_measures(args.measures)
    qrels = read_qrels(args.qrels)
    run_dict = read_run(args.run)
    absent = [q for q, judged in qrels.items() if judged and q not in run_dict]
    if args.complete:
        run_dict = {**run_dict, **{q: {} for q in absent}}
    arrays = run_arrays(run_dict)
    metrics = evaluate_run_dict(qrels, run_dict, measures)
    names = {m.name: trec_eval_name(m) for m in measures}
    if args.per_query:
        for qid in sorted(metrics.per_query[measures[0].name]):
            for m in measures:
                print(f"{names[m.name]:<22}\t{qid}\t{metrics.per_query[m.name][qid]:.4f}")
    for m in measures:
        print(f"{names[m.name]:<22}\tall\t{metrics.aggregate[m.name]:.4f}")
    notes = []
    if absent:
        notes.append(f"{len(absent)} judged queries not in the run "
                     + ("scored 0 (-c)" if args.complete else "left out (-c: score them 0)"))
    if metrics.run_queries_without_judgments:
        notes.append(f"{metrics.run_queries_without_judgments} run queries without judgments left out")
    parts = " ".join(f"{name}={value:.4f}" for name, value in metrics.aggregate.items())
    print(f"densekit evaluate: {parts} | {metrics.num_queries} queries of {args.run}"
          + "".join(f"; {note}" for note in notes), flush=True)
    if args.output_dir:
        curves = metrics_at_every_cutoff(qrels, *arrays, max_k=1000)
        settings = {"run": args.run, "qrels": ", ".join(args.qrels), "measures": " ".join(names.values()),
                    "complete (-c)": args.complete, "run_depth": int(arrays[1].shape[1]),
                    "seconds": round(time.perf_counter() - began, 3)}
        fingerprints = {f"run {args.run}": sha256_file(args.run)[:24],
                        **{f"qrels {path}": sha256_file(path)[:24] for path in args.qrels}}
        write_metrics_report(Path(args.output_dir), metrics, settings=settings, fingerprints=fingerprints,
                             curves=curves, extra_counts={"complete": args.complete,
                                                          "judged_queries_missing_from_run": len(absent)})
    return metrics


DEFAULT_TOP_K = (1, 5, 20, 100)  # DPR's usual cut-offs (densekit.qa.retrieval.DEFAULT_TOP_K)


@dataclass
class QAArguments:
    """Answer-matching evaluation (DPR top-k accuracy): questions with answers and the passages searched."""

    qa_file: str = field(metadata={"help": "questions with answers: DPR qa file (question<TAB>[\"answer\", ...]), "
                                           "DPR retriever .json, or .jsonl with query + answers"})
    passages: str = field(metadata={"help": "passage collection: DPR psgs.tsv (id, text, title) or BEIR corpus.jsonl"})
    n_docs: int = field(default=100, metadata={"help": "passages retrieved and kept per question (GC-DPR --n-docs)"})
    match: str = field(default="string", metadata={
        "help": "string: DPR's uncased token-sequence match; regex: answers are regular expressions (TREC)"})
    top_k: Optional[list[int]] = field(default=None, metadata={
        "help": "report Accuracy@k for these k (each <= --n_docs); default 1 5 20 100, those <= --n_docs"})
    out_file: Optional[str] = field(default=None, metadata={
        "help": "where the results JSON goes (GC-DPR --out_file); default output_dir/results.json"})
    queries: Optional[str] = field(default=None, metadata={
        "help": "with --run: the query file the run was encoded from; questions are matched to its ids by text "
                "(without it the run's ids must be the qa file's: q0, q1, ... or the ids it gives)"})

    def __post_init__(self) -> None:
        from densekit.qa.answers import MATCH_MODES

        if self.match not in MATCH_MODES:
            raise ConfigError(f"--match {self.match!r}: use one of {', '.join(MATCH_MODES)}.")
        if self.n_docs < 1:
            raise ConfigError(f"--n_docs must be >= 1, got {self.n_docs}.")
        if isinstance(self.top_k, int):
            self.top_k = [self.top_k]
        if self.top_k is None:
            self.top_k = [k for k in DEFAULT_TOP_K if k <= self.n_docs] or [self.n_docs]
        bad = [k for k in self.top_k if k < 1 or k > self.n_docs]
        if bad or not self.top_k:
            raise ConfigError(f"--top_k {' '.join(map(str, self.top_k))}: every k must be between 1 and --n_docs "
                              f"{self.n_docs}.")
        from densekit.data.formats.lines import require_file

        require_file(self.qa_file, "--qa_file qa")
        require_file(self.passages, "--passages")


@dataclass
class QARunArguments:
    """``densekit evaluate --run RUN --qa_file QA --passages P``: answer-match an existing run."""

    run: str = field(metadata={"help": "TREC run file whose rankings are scored by answer matching"})
    output_dir: str = field(default="./densekit_eval", metadata={"help": "where results.json, metrics.json and "
                                                                        "report.md go"})
    disable_tqdm: bool = field(default=False, metadata={"help": "no progress bars"})


def wants_qa(argv: list[str]) -> bool:
    """True for answer-matching mode: a ``--qa_file`` flag."""
    return any(a == "--qa_file" or a.startswith("--qa_file=") for a in argv)


def build_qa_evaluator(model_args: ModelArguments, data_args: DataArguments, eval_args: "EvaluationArguments",
                       qa_args: QAArguments, examples):
    """A RetrievalEvaluator over every question of ``examples`` against ``qa_args.passages`` (no qrels)."""
    from transformers import AutoTokenizer

    from densekit.data.collator import RetrievalCollator
    from densekit.evaluation.evaluator import RetrievalEvaluator
    from densekit.modeling.retriever import BiEncoderRetriever
    from densekit.qa.retrieval import question_dataset

    model = BiEncoderRetriever.from_model_args(args=model_args)
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_path, trust_remote_code=model_args.trust_remote_code)
    dataset = question_dataset(data_args, qa_args.passages, examples, qa_args.qa_file, format_query=model.format_query,
                               format_passage=model.format_passage)
    collator = RetrievalCollator(data_args=data_args, tokenizer=tokenizer, append_eos=model.append_eos_token)
    return RetrievalEvaluator(args=eval_args, model=model, tokenizer=tokenizer, data_collator=collator,
                              eval_dataset=dataset)


def search_qa(model_args: ModelArguments, data_args: DataArguments, eval_args: "EvaluationArguments",
              qa_args: QAArguments):
    """Search ``--n_docs`` passages for every question and mark answers; ``(examples, results, evaluator)``.

    Uses ``RetrievalEvaluator.search`` (cache, torchrun); ``results`` is None on ranks other than 0.
    """
    from densekit.data.formats.qa import read_qa
    from densekit.qa.retrieval import match_answers, rankings_from_search

    examples = read_qa(qa_args.qa_file)  # read before the model: a bad line fails in a second
    evaluator = build_qa_evaluator(model_args, data_args, eval_args, qa_args, examples)
    depth = min(qa_args.n_docs, len(evaluator.eval_dataset.corpus))
    result = evaluator.search(topk=depth)
    from densekit import distributed

    if result is None or distributed.rank() != 0:  # rank 0 matches and writes
        return examples, None, evaluator
    results = match_answers(examples, rankings_from_search(result), evaluator.eval_dataset.corpus,
                            mode=qa_args.match, source=qa_args.qa_file, progress=not eval_args.disable_tqdm)
    return examples, results, evaluator


def evaluate_qa(model_args: ModelArguments, data_args: DataArguments, eval_args: "EvaluationArguments",
                qa_args: QAArguments) -> dict[str, float]:
    """``densekit evaluate --qa_file``: search, answer-match, write results JSON + metrics.json + report.md."""
    import time

    from densekit import distributed

    began = time.perf_counter()
    _, results, evaluator = search_qa(model_args, data_args, eval_args, qa_args)
    out: dict[str, float] = {}
    if results is not None and distributed.rank() == 0:
        out = write_qa_files(model_args, eval_args, qa_args, results, evaluator, seconds=time.perf_counter() - began)
    distributed.barrier()
    return out


def write_qa_files(model_args: ModelArguments, eval_args: "EvaluationArguments", qa_args: QAArguments, results,
                   evaluator, seconds: Optional[float]) -> dict[str, float]:
    """Results JSON, metrics.json and report.md of a model search (rank 0 calls it); the Accuracy@k."""
    from densekit import distributed
    from densekit.evaluation.evaluator import data_fingerprints
    from densekit.qa.retrieval import write_qa_evaluation

    settings = {"qa_file": qa_args.qa_file, "passages": qa_args.passages, "model": model_args.model_name_or_path,
                "n_docs": qa_args.n_docs, "match": qa_args.match, "processes": distributed.world_size(),
                **evaluator.describe_encoding()}
    if seconds is not None:
        settings["seconds"] = round(seconds, 3)
    return write_qa_evaluation(eval_args.output_dir, results, qa_args.top_k, settings=settings,
                               results_path=qa_args.out_file,
                               fingerprints=data_fingerprints(evaluator.eval_dataset))["aggregate"]


def evaluate_qa_run(run_args: QARunArguments, qa_args: QAArguments) -> dict[str, float]:
    """``densekit evaluate --run RUN --qa_file``: answer-match a run's top ``--n_docs`` per question."""
    import time

    from densekit.cache import sha256_file
    from densekit.data.formats import read_corpus, read_queries
    from densekit.data.formats.qa import read_qa
    from densekit.qa.retrieval import match_answers, rankings_from_run, run_ids_for, write_qa_evaluation

    began = time.perf_counter()
    examples = read_qa(qa_args.qa_file)
    run_dict = read_run(run_args.run)
    passages = read_corpus(qa_args.passages)
    queries = read_queries(qa_args.queries) if qa_args.queries else None
    ids = run_ids_for(examples, run_dict, queries, qa_args.qa_file, run_args.run)
    rankings = rankings_from_run(run_dict, ids, passages, qa_args.n_docs, run_args.run)
    results = match_answers(examples, rankings, passages, mode=qa_args.match, source=qa_args.qa_file,
                            progress=not run_args.disable_tqdm)
    settings = {"run": run_args.run, "qa_file": qa_args.qa_file, "passages": qa_args.passages,
                "queries": qa_args.queries or "(run ids are the qa file's)", "n_docs": qa_args.n_docs,
                "match": qa_args.match, "seconds": round(time.perf_counter() - began, 3)}
    fingerprints = {f"run {Path(run_args.run).name}": sha256_file(run_args.run)[:24],
                    f"qa {Path(qa_args.qa_file).name}": sha256_file(qa_args.qa_file)[:24],
                    f"passages {Path(qa_args.passages).name}": sha256_file(qa_args.passages)[:24]}
    return write_qa_evaluation(run_args.output_dir, results, qa_args.top_k, settings=settings,
                               results_path=qa_args.out_file, fingerprints=fingerprints)["aggregate"]


def run(argv) -> int:
    argv = merge_repeated(list(argv), ("-m", "--measures"))
    if wants_qa(argv):
        if wants_run_file(argv):
            model_flag = next((a for a in argv if a.split("=")[0] in MODEL_MODE_FLAGS), None)
            if model_flag:
                raise ConfigError(f"--run scores an existing run file, so {model_flag.split('=')[0]} does not "
                                  "apply; drop it, or drop --run to encode and search with a model.")
            run_args, qa_args = parse_dataclasses((QARunArguments, QAArguments), argv,
                                                  prog="densekit evaluate --run --qa_file")
            evaluate_qa_run(run_args, qa_args)
            return 0
        from densekit.evaluation.evaluation_args import EvaluationArguments

        model_args, data_args, eval_args, qa_args = parse_dataclasses(
            (ModelArguments, DataArguments, EvaluationArguments, QAArguments), argv, prog="densekit evaluate --qa_file")
        if qa_args.queries:
            raise ConfigError("--queries maps a run's query ids to questions; it only applies with --run.")
        evaluate_qa(model_args, data_args, eval_args, qa_args)
        return 0
    if wants_run_file(argv):
        model_flag = next((a for a in argv if a.split("=")[0] in MODEL_MODE_FLAGS), None)
        if model_flag:
            raise ConfigError(f"--run scores an existing run file, so {model_flag.split('=')[0]} does not apply; "
                              "drop it, or drop --run to encode and search with a model.")
        (args,) = parse_dataclasses((RunFileArguments,), argv, prog="densekit evaluate --run")
        evaluate_run_file(args)
        return 0
    from densekit.evaluation.evaluation_args import EvaluationArguments

    model_args, data_args, eval_args, dataset_args = parse_dataclasses(
        (ModelArguments, DataArguments, EvaluationArguments, DatasetArguments), argv, prog="densekit evaluate")
    evaluate(model_args, data_args, eval_args, dataset_args)
    return 0
