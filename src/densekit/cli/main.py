"""The ``densekit`` command: one sub-command per module in this package, each a thin wrapper of the API."""
from __future__ import annotations

import importlib
import sys
from typing import Optional, Sequence

from densekit.errors import DensekitError

# sub-command -> (module, one-line help)
COMMANDS = {
    "evaluate": ("densekit.cli.evaluate", "encode a corpus and queries, search, score: run.trec + metrics.json; "
                                          "or score a run file: --run RUN --qrels Q [-m M] [-q] [-c]"),
    "train": ("densekit.cli.train", "fine-tune a bi-encoder (InfoNCE, gradient cache, LoRA) from a BEIR folder or qrels"),
    "encode": ("densekit.cli.encode", "embed a corpus/query file (or one shard) into a resumable embedding folder"),
    "search": ("densekit.cli.search", "exact top-k over embedding folders -> run.trec (+ metrics with --qrels)"),
    "mine": ("densekit.cli.mine", "hard negatives for judged queries -> mined_qrels.tsv (+ merged_qrels.tsv, Tevatron train.jsonl)"),
    "rescore": ("densekit.cli.rescore", "teacher scores for mined candidates -> teacher_scores.tsv (KL/margin-MSE targets), filtered_negatives.tsv"),
    "convert": ("densekit.cli.convert", "convert data: beir|tevatron|dpr|tsv|hf|ir_datasets -> beir|tevatron|trec"),
    "compare": ("densekit.cli.compare", "significance of run differences: compare RUN_A RUN_B ... --qrels Q "
                                        "(t-test, randomization, bootstrap CI, Holm)"),
    "export": ("densekit.cli.export", "write a model as a sentence-transformers folder with a model card (README.md)"),
    "reader": ("densekit.cli.reader", "GC-DPR's extractive reader: reader train | reader predict on DPR results JSON "
                                      "(Exact Match per top-k)"),
    "demo": ("densekit.cli.demo", "evaluate the bundled MiniLM on the built-in demo collection (no download)"),
}


def usage() -> str:
    lines = ["usage: densekit <command> [options]   (densekit <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"densekit: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.run(rest) or 0)
    except DensekitError as error:
        print(f"densekit {name}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
