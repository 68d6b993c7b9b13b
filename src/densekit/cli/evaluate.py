"""``densekit evaluate``: encode, search and score an encoder on a BEIR folder or explicit files; or, with
``--run``, score an existing TREC run file like trec_eval (no model).

Run-file mode takes trec_eval's habits: ``-m`` repeated or ``--measures a b`` (trec_eval names such as
ndcg_cut.10 recall.100 recip_rank P.10 map, or densekit's nDCG@10 MRR@10), ``-q`` for per-query lines
``measure qid value`` followed by the ``all`` lines, and ``-c`` to score judged queries absent from the run
as 0. Without ``-c`` the queries are those of pytrec_eval / trec_eval: the run's judged queries. Lines name
measures as trec_eval prints them (ndcg_cut_10) when trec_eval has the measure, densekit's name otherwise
(MRR@10), so the output can be compared with ``trec_eval -q`` line by line.
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


def run(argv) -> int:
    argv = merge_repeated(list(argv), ("-m", "--measures"))
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
