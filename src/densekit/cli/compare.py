"""``densekit compare RUN_A RUN_B [RUN_C ...] --qrels Q``: are the differences between runs significant?

RUN_A is the baseline; every other run is compared with it (``--all_pairs true``: every pair). Prints the
means and one line per (comparison, measure) with the bootstrap interval of the difference, Holm-adjusted
p-values of the paired t-test and of the randomization test, and wins/ties/losses; with ``--output_dir``
also writes compare.md, compare.json and compare_per_query.png. The statistics are documented in
:mod:`densekit.evaluation.compare`. Runs may also be given as ``--runs A B`` (or ``runs:`` in a YAML file).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from densekit.cli.arguments import parse_dataclasses
from densekit.errors import ConfigError


@dataclass
class CompareArguments:
    """Options of ``densekit compare``."""

    runs: list[str] = field(metadata={"help": "TREC run files; the first is the baseline (also positional)"})
    qrels: list[str] = field(metadata={"help": "qrel file(s): BEIR TSV or TREC 'qid 0 docid rel'"})
    measures: list[str] = field(
        default_factory=lambda: ["nDCG@10", "Recall@100", "MRR@10", "MAP"],
        metadata={"aliases": ["-m"], "help": "measures (trec_eval or densekit names); repeat -m or list them"})
    queries: Optional[str] = field(default=None, metadata={
        "help": "query file (BEIR jsonl or TSV): shows the text of the queries that changed most"})
    names: Optional[list[str]] = field(default=None, metadata={"help": "a name per run (default: file names)"})
    output_dir: Optional[str] = field(default=None, metadata={
        "help": "write compare.md, compare.json and compare_per_query.png here"})
    seed: int = field(default=42, metadata={"help": "seed of the randomization test and the bootstrap"})
    n_permutations: int = field(default=10_000, metadata={"help": "random sign flips of the randomization test"})
    n_bootstrap: int = field(default=10_000, metadata={"help": "bootstrap resamples of the confidence interval"})
    alpha: float = field(default=0.05, metadata={"help": "significance level (after Holm-Bonferroni)"})
    all_pairs: bool = field(default=False, metadata={"help": "compare every pair of runs, not each run vs the first"})
    top_queries: int = field(default=10, metadata={"help": "queries that changed most, listed per comparison"})


def merge_repeated(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """Gather the values of every occurrence of ``flags`` (``-m a -m b``, ``--measures c d``) into one
    ``flags[-1] a b c d`` at the first occurrence: argparse would keep only the last one."""
    out: list[str] = []
    values: list[str] = []
    at = None
    i = 0
    while i < len(argv):
        token = argv[i]
        name, eq, inline = token.partition("=")
        if name in flags:
            at = len(out) if at is None else at
            if eq:
                values.append(inline)
            i += 1
            while i < len(argv) and not argv[i].startswith("-"):
                values.append(argv[i])
                i += 1
            continue
        out.append(token)
        i += 1
    if at is not None:
        out[at:at] = [flags[-1], *values]
    return out


def positional_runs(argv: Sequence[str]) -> list[str]:
    """Turn the leading arguments that are not options (the run files) into ``--runs ...``."""
    argv = list(argv)
    start = 1 if argv and argv[0].endswith((".yaml", ".yml", ".json")) else 0
    end = start
    while end < len(argv) and not argv[end].startswith("-"):
        end += 1
    if end == start:
        return argv
    return argv[:start] + ["--runs", *argv[start:end]] + argv[end:]


def run_names(paths: Sequence[str], names: Optional[Sequence[str]]) -> list[str]:
    """``names`` when given (one per run, distinct), else the file names without run/trec/txt/gz suffixes,
    made unique with a number when two files share a name."""
    if names is not None:
        if len(names) != len(paths) or len(set(names)) != len(names):
            raise ConfigError(f"--names needs {len(paths)} distinct names, one per run; got {list(names)}.")
        return list(names)
    out: list[str] = []
    for path in paths:
        name = Path(path).name
        for suffix in (".gz", ".trec", ".run", ".txt", ".tsv"):
            name = name[: -len(suffix)] if name.endswith(suffix) and len(name) > len(suffix) else name
        candidate, n = name, 2
        while candidate in out:
            candidate, n = f"{name}-{n}", n + 1
        out.append(candidate)
    return out


def query_text_lookup(path: Optional[str]) -> Optional[Callable[[Sequence[str]], list[Optional[str]]]]:
    """A function from query ids to texts (None when unknown), read from a BEIR jsonl or TSV query file."""
    if path is None:
        return None
    from densekit.data.formats import read_queries

    store = read_queries(path)

    def lookup(ids: Sequence[str]) -> list[Optional[str]]:
        rows = store.lookup(list(ids))
        found = [int(r) for r in rows if r >= 0]
        texts = iter(store.texts(found))
        return [next(texts) if r >= 0 else None for r in rows]

    return lookup


def run(argv) -> int:
    from densekit.data.formats import read_qrels, read_run
    from densekit.evaluation.compare import compare_runs
    from densekit.evaluation.output import comparison_table, write_comparison

    argv = merge_repeated(merge_repeated(positional_runs(argv), ("--runs",)), ("-m", "--measures"))
    (args,) = parse_dataclasses((CompareArguments,), argv, prog="densekit compare")
    if len(args.runs) < 2:
        raise ConfigError("compare needs at least two run files: densekit compare BASELINE RUN [RUN ...] --qrels Q.")
    names = run_names(args.runs, args.names)
    lookup = query_text_lookup(args.queries)  # read every input before the work starts: fail early
    qrels = read_qrels(args.qrels)
    runs = {name: read_run(path) for name, path in zip(names, args.runs)}
    comparison = compare_runs(qrels, runs, args.measures, query_text=lookup, seed=args.seed,
                              n_permutations=args.n_permutations, n_bootstrap=args.n_bootstrap, alpha=args.alpha,
                              all_pairs=args.all_pairs, top_queries=args.top_queries)
    print(comparison_table(comparison))
    for name in names:
        cover = comparison.coverage[name]
        if cover["judged_missing"]:
            print(f"note: {name} lacks {cover['judged_missing']} of the {len(comparison.query_ids)} judged "
                  "queries; they score 0.")
    if args.output_dir:
        written = write_comparison(Path(args.output_dir), comparison, run_files=dict(zip(names, args.runs)),
                                   qrels_files=args.qrels)
        print(f"densekit compare: {', '.join(str(p) for p in written.values())}")
    return 0
