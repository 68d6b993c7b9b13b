"""``densekit export``: write a trained model in another library's layout, with a model card.

::

    densekit export --model_name_or_path out/checkpoint-200 --output_dir exported --format sentence-transformers \\
        --metrics eval/metrics.json

``sentence-transformers``: weights, tokenizer and the sentence-transformers module files, so that
``SentenceTransformer(exported)`` computes densekit's embeddings (prefixes become the ``query`` /
``document`` prompts). Only ``cls`` and ``mean`` pooling of full weights can be expressed that way:
last-token pooling depends on the eos token densekit appends, and a LoRA folder holds adapters only; both
are refused before anything is written. The folder gets a README.md model card (:mod:`densekit.model_card`).
It is written next to ``--output_dir`` and renamed into place when complete.
"""
from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from densekit.cli.arguments import parse_dataclasses
from densekit.errors import ConfigError
from densekit.model_card import read_evaluation, read_provenance, write_model_card

logger = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "{title} {text}"


@dataclass
class ExportArguments:
    """What to export, where, and in which layout."""

    model_name_or_path: Optional[str] = field(default=None, metadata={"help": "densekit model folder to export"})
    output_dir: Optional[str] = field(default=None, metadata={"help": "folder to write (must not exist, or be empty, "
                                                                      "unless --overwrite)"})
    format: str = field(default="sentence-transformers", metadata={"help": "target layout: sentence-transformers"})
    metrics: Optional[str] = field(default=None, metadata={"help": "metrics.json of an evaluation, shown in the "
                                                                   "model card"})
    overwrite: bool = field(default=False, metadata={"help": "replace a non-empty --output_dir"})


def resolved_config(retriever: Any) -> dict[str, Any]:
    """The encoding settings a user of the exported model must know (what the model card shows)."""
    encoder = retriever.encoder
    args = retriever.args
    return {"encoder_class": type(encoder).__name__, "pooling": getattr(encoder, "pooling", None),
            "normalize": bool(getattr(encoder, "normalize", False)),
            "similarity": "cosine" if getattr(encoder, "normalize", False) else "dot product",
            "max_length": retriever.max_length, "query_prefix": args.query_prefix,
            "passage_prefix": args.passage_prefix, "passage_template": args.passage_template,
            "append_eos_token": bool(retriever.append_eos_token)}


def check_sentence_transformers(retriever: Any) -> None:
    """Refuse, before writing, a model whose embeddings sentence-transformers would compute differently."""
    pooling = getattr(retriever.encoder, "pooling", None)
    model = getattr(retriever.encoder, "model", None)
    if pooling not in ("cls", "mean"):
        raise ConfigError(f"--format sentence-transformers needs cls or mean pooling; this model uses {pooling!r} "
                          "pooling, whose embeddings depend on the eos token densekit appends to every input, which "
                          "SentenceTransformer does not do. Use the model with BiEncoderRetriever.from_pretrained.")
    if model is None or hasattr(model, "peft_config"):
        raise ConfigError("--format sentence-transformers needs full weights; this folder holds LoRA adapters. "
                          "Merge them into the base model first (peft's merge_and_unload), save, and export that.")
    if retriever.args.passage_template != DEFAULT_TEMPLATE:
        logger.warning("passage_template %r is not applied by SentenceTransformer.encode: format passages with it "
                       "yourself before encoding (the model card says so).", retriever.args.passage_template)


def export_sentence_transformers(retriever: Any, tokenizer: Any, folder: Path) -> None:
    """Weights, tokenizer and the sentence-transformers module files into ``folder``."""
    retriever.save_pretrained(folder, tokenizer=tokenizer)
    if not retriever.save_sentence_transformers_config(folder):  # checked before; kept as a guard
        raise ConfigError("this model cannot be expressed as a sentence-transformers folder.")


#: format name -> (check run before anything is written, writer)
EXPORTERS: dict[str, tuple[Callable[[Any], None], Callable[[Any, Any, Path], None]]] = {
    "sentence-transformers": (check_sentence_transformers, export_sentence_transformers),
}


def export(args: ExportArguments, command: Optional[str] = None) -> Path:
    """Check everything, load the model, write the folder atomically (temp sibling + rename); returns it."""
    if args.format not in EXPORTERS:
        raise ConfigError(f"--format {args.format!r} is unknown; known formats: {', '.join(sorted(EXPORTERS))}.")
    if not args.model_name_or_path or not args.output_dir:
        raise ConfigError("give --model_name_or_path (the densekit model folder) and --output_dir.")
    source, target = Path(args.model_name_or_path), Path(args.output_dir)
    if not source.is_dir():
        raise ConfigError(f"--model_name_or_path {source} is not a folder; give a model folder written by densekit "
                          "train (or a checkpoint-N folder of it).")
    if target.resolve() == source.resolve():
        raise ConfigError("--output_dir is the model folder itself; export into another folder.")
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not args.overwrite:
        raise ConfigError(f"--output_dir {target} exists and is not empty; choose another folder or add --overwrite.")
    evaluation = read_evaluation(args.metrics) if args.metrics else None
    training_data, negatives = read_provenance(source)

    from transformers import AutoTokenizer

    from densekit.modeling.retriever import BiEncoderRetriever

    retriever = BiEncoderRetriever.from_pretrained(source)
    check, write = EXPORTERS[args.format]
    check(retriever)
    tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=retriever.args.trust_remote_code)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        write(retriever, tokenizer, staging)
        write_model_card(staging, command=command or "densekit export", config=resolved_config(retriever),
                         training_data=training_data, evaluation=evaluation, negatives=negatives,
                         library_name="sentence-transformers" if args.format == "sentence-transformers" else "densekit",
                         title=target.resolve().name)
        _replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f"densekit export: {source} -> {target} ({args.format}, pooling "
          f"{retriever.encoder.pooling}, model card {target / 'README.md'})")
    return target


def _replace_folder(staging: Path, target: Path) -> None:
    """Move the finished ``staging`` folder to ``target``; an old ``target`` is removed only after that."""
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it 0700
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def run(argv) -> int:
    (args,) = parse_dataclasses((ExportArguments,), argv, prog="densekit export")
    export(args, command=shlex.join(["densekit", "export", *argv]))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run(sys.argv[1:]))
