"""``densekit convert``: turn training/evaluation data from one format into another.

Inputs: a BEIR folder, a Tevatron jsonl, a DPR json, MS MARCO / OpenMatch TSV files (with templates), a
local Hugging Face dataset, or an ir_datasets id. Outputs: a BEIR folder, a Tevatron jsonl (positives from
the judgments; negatives the judged ones below ``--min_positive_score``, plus ``--num_negatives`` random
corpus documents or the unjudged top ``--depth`` of ``--negatives_run``), or a TREC qrels file.

    densekit convert --input scifact/ --input_format beir --split train \\
        --output train.jsonl --output_format tevatron --num_negatives 8
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from densekit.cli.arguments import parse_dataclasses
from densekit.data.formats.collection import Collection
from densekit.errors import ConfigError, InputError

InputFormat = Literal["beir", "tevatron", "dpr", "tsv", "hf", "ir_datasets"]
OutputFormat = Literal["beir", "tevatron", "trec"]


@dataclass
class ConvertArguments:
    """What to read, what to write, and where negatives for Tevatron output come from."""

    input: str = field(metadata={"help": "BEIR folder, tevatron/dpr file, TSV corpus, HF dataset folder/file, or "
                                         "ir_datasets id"})
    input_format: InputFormat = field(metadata={"help": "format of --input"})
    output: str = field(metadata={"help": "folder (beir) or file (tevatron, trec) to write"})
    output_format: OutputFormat = field(metadata={"help": "format to write"})
    split: str = field(default="train", metadata={"help": "qrels split of a BEIR folder (in and out); HF split"})
    query_path: Optional[str] = field(default=None, metadata={"help": "tsv input: the queries TSV"})
    qrel_path: Optional[str] = field(default=None, metadata={"help": "tsv input: the qrels file"})
    doc_template: Optional[str] = field(default=None, metadata={"help": 'tsv input: e.g. "Title: <title> Text: <text>"'})
    doc_column_names: Optional[str] = field(default=None, metadata={"help": "tsv input: e.g. id,title,text"})
    query_template: Optional[str] = field(default=None, metadata={"help": 'tsv input: e.g. "<text>"'})
    query_column_names: Optional[str] = field(default=None, metadata={"help": "tsv input: e.g. id,text"})
    query_field: str = field(default="text", metadata={"help": "ir_datasets input: query field to use as text"})
    num_negatives: int = field(default=0, metadata={"help": "tevatron output: random unjudged negatives per query "
                                                            "(with --negatives_run: at most this many from it)"})
    negatives_run: Optional[str] = field(default=None, metadata={"help": "tevatron output: TREC run to take "
                                                                         "negatives from (unjudged, top --depth)"})
    depth: int = field(default=30, metadata={"help": "rank cut-off for --negatives_run"})
    min_positive_score: int = field(default=1, metadata={"help": "tevatron output: judgments >= this are positives"})
    max_queries: Optional[int] = field(default=None, metadata={"help": "tevatron output: write at most this many"})
    seed: int = field(default=42, metadata={"help": "seed of the random negatives"})

    def __post_init__(self) -> None:
        if self.num_negatives < 0 or self.depth < 1:
            raise ConfigError("--num_negatives must be >= 0 and --depth >= 1.")
        if self.output_format != "tevatron" and (self.num_negatives or self.negatives_run):
            raise ConfigError("--num_negatives / --negatives_run only apply to --output_format tevatron.")
        if self.input_format == "tsv" and not (self.query_path and self.qrel_path):
            raise ConfigError("--input_format tsv reads --input as the corpus TSV and needs --query_path and "
                              "--qrel_path too.")
        self._check_output()
        for template, names, which in ((self.doc_template, self.doc_column_names, "doc"),
                                       (self.query_template, self.query_column_names, "query")):
            if bool(template) != bool(names):
                raise ConfigError(f"--{which}_template and --{which}_column_names go together.")


    def _check_output(self) -> None:
        """``--output`` must be what the format writes (a file, or a BEIR folder), checked before reading."""
        output = Path(self.output)
        if self.output_format == "beir":
            if output.exists() and not output.is_dir():
                raise ConfigError(f"--output {self.output} is an existing file; --output_format beir writes a "
                                  "folder (corpus.jsonl, queries.jsonl, qrels/): give a folder path.")
        elif output.is_dir():
            example = "train.jsonl" if self.output_format == "tevatron" else "qrels.trec"
            raise ConfigError(f"--output {self.output} is an existing folder; --output_format "
                              f"{self.output_format} writes one file: give a file path, e.g. {output / example}.")


def _tsv_store(path: str, template: Optional[str], columns: Optional[str], kind):
    from densekit.data.formats import read_texts
    from densekit.data.formats.templates import read_templated_tsv

    return read_templated_tsv(path, columns, template, kind=kind) if template else read_texts(path, kind)


def read_input(args: ConvertArguments) -> Collection:
    """Read ``--input`` in ``--input_format`` into a collection."""
    fmt = args.input_format
    if fmt == "beir":
        from densekit.data.formats.collection import read_beir_folder
        return read_beir_folder(args.input, args.split)
    if fmt == "tevatron":
        from densekit.data.formats.tevatron import read_tevatron
        return read_tevatron(args.input)
    if fmt == "dpr":
        from densekit.data.formats.dpr import read_dpr
        return read_dpr(args.input)
    if fmt == "hf":
        from densekit.data.formats.hf_datasets import read_hf_dataset
        return read_hf_dataset(args.input, args.split)
    if fmt == "ir_datasets":
        from densekit.data.formats.ir_datasets import read_ir_dataset
        return read_ir_dataset(args.input, args.query_field)
    from densekit.data.formats import check_qrels, read_qrels
    corpus = _tsv_store(args.input, args.doc_template, args.doc_column_names, "corpus")
    queries = _tsv_store(args.query_path, args.query_template, args.query_column_names, "queries")
    qrels = read_qrels(args.qrel_path)
    check_qrels(qrels, queries, corpus, path=args.qrel_path)
    return Collection(corpus, queries, qrels)


def extra_negatives(args: ConvertArguments, collection: Collection) -> Optional[dict[str, list[str]]]:
    """Random or run-based negatives for the judged queries, as asked."""
    from densekit.data.negatives import random_negatives, run_negatives

    query_ids = [q for q in collection.queries.ids if q in collection.qrels]
    if args.negatives_run:
        from densekit.data.formats import read_run
        run = read_run(args.negatives_run)
        found = run_negatives(run, collection.qrels, query_ids, depth=args.depth,
                              num_negatives=args.num_negatives or None)
        ids = [d for docs in found.values() for d in docs]
        unknown = [d for d, row in zip(ids, collection.corpus.lookup(ids)) if row < 0]
        if unknown:
            raise InputError(f"{len(unknown)} document id(s) of the run are not in the corpus, first {unknown[0]!r}.",
                             path=args.negatives_run, fix="use a run retrieved from this corpus.")
        return found
    if args.num_negatives:
        return random_negatives(collection.corpus, collection.qrels, query_ids, args.num_negatives, args.seed)
    return None


def convert(args: ConvertArguments) -> str:
    """Read, (sample negatives,) write; returns the one-line summary."""
    start = time.perf_counter()
    collection = read_input(args)
    output = Path(args.output)
    if args.output_format == "beir":
        from densekit.data.formats.collection import write_beir_folder
        write_beir_folder(collection, output, args.split)
        what = collection.summary()
    elif args.output_format == "trec":
        from densekit.data.formats import write_qrels
        write_qrels(output, collection.qrels, format="trec")
        what = f"{collection.num_judgments} judgments of {len(collection.qrels)} queries"
    else:
        from densekit.data.formats.tevatron import write_tevatron
        if not collection.qrels:
            raise ConfigError(f"{args.input} has no judgments, so there are no positives to write.")
        counts = write_tevatron(output, collection, extra_negatives(args, collection),
                                min_positive_score=args.min_positive_score, max_queries=args.max_queries)
        what = (f"{counts['queries']} queries, {counts['positives']} positives, {counts['negatives']} negatives"
                + (f", {counts['skipped_no_positive']} queries without a positive skipped"
                   if counts["skipped_no_positive"] else ""))
    seconds = time.perf_counter() - start
    return f"densekit convert: {args.input_format} -> {args.output_format}: {what} -> {output} ({seconds:.1f} s)"


def run(argv) -> int:
    (args,) = parse_dataclasses((ConvertArguments,), argv, prog="densekit convert")
    print(convert(args))
    return 0
