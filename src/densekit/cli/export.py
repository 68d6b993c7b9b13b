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

``dpr``: ``question_encoder/`` and ``ctx_encoder/``, folders that transformers' ``DPRQuestionEncoder`` /
``DPRContextEncoder`` load (each with the tokenizer) and that give densekit's query and passage vectors as
``pooler_output``. An untied model's query tower becomes the question encoder and its passage tower the
context encoder; a shared encoder goes into both. Only what DPR computes can be exported: a BERT with cls
pooling, no normalization and no prefixes, with or without a projection head (DPR's ``projection_dim``);
anything else is refused before anything is written (:func:`densekit.modeling.dpr.check_dpr_expressible`).
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
    format: str = field(default="sentence-transformers",
                        metadata={"help": "target layout: sentence-transformers, or dpr (question_encoder/ and "
                                          "ctx_encoder/ for transformers' DPR classes)"})
    metrics: Optional[str] = field(default=None, metadata={"help": "metrics.json of an evaluation, shown in the "
                                                                   "model card"})
    overwrite: bool = field(default=False, metadata={"help": "replace a non-empty --output_dir"})


def _tower_settings(tower: Any) -> dict[str, Any]:
    head = getattr(tower, "projection", None)
    return {"pooling": getattr(tower, "pooling", None), "normalize": bool(getattr(tower, "normalize", False)),
            "projection_dim": head.out_features if head is not None else None}


def resolved_config(retriever: Any) -> dict[str, Any]:
    """The encoding settings a user of the exported model must know (what the model card shows); for untied
    towers, the query tower's, plus the passage tower's where they differ."""
    encoder = retriever.encoder
    args = retriever.args
    query, passage = retriever.tower("query"), retriever.tower("passage")
    settings = _tower_settings(query)
    config = {"encoder_class": type(encoder).__name__, **settings,
              "similarity": "cosine" if settings["normalize"] else "dot product",
              "max_length": retriever.max_length, "query_prefix": args.query_prefix,
              "passage_prefix": args.passage_prefix, "passage_template": args.passage_template,
              "append_eos_token": bool(retriever.append_eos_token)}
    if passage is not query:
        config["towers"] = "untied (separate query and passage encoders)"
        if _tower_settings(passage) != settings:
            config["passage_tower"] = _tower_settings(passage)
    return config


def check_sentence_transformers(retriever: Any) -> None:
    """Refuse, before writing, a model whose embeddings sentence-transformers would compute differently."""
    if retriever.tower("query") is not retriever.tower("passage"):
        raise ConfigError("--format sentence-transformers writes one encoder; this model has separate query and "
                          "passage towers. Use --format dpr (a question and a context encoder), or load it with "
                          "BiEncoderRetriever.from_pretrained.")
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


#: DPR's folder names (what its classes' base_model_prefix and the DPR repository call the two encoders).
DPR_FOLDERS = {"query": "question_encoder", "passage": "ctx_encoder"}


def check_dpr(retriever: Any) -> None:
    """Refuse, before writing, a model transformers' DPR classes would encode differently (per tower)."""
    from densekit.modeling.dpr import check_dpr_expressible

    untied = retriever.tower("query") is not retriever.tower("passage")
    for kind in ("query", "passage"):
        check_dpr_expressible(retriever.tower(kind), kind, untied=untied)
    if retriever.args.passage_template != DEFAULT_TEMPLATE:
        logger.warning("passage_template %r is not applied by DPRContextEncoder: format passages with it yourself "
                       "before encoding.", retriever.args.passage_template)


def export_dpr(retriever: Any, tokenizer: Any, folder: Path) -> None:
    """``question_encoder/`` from the query tower and ``ctx_encoder/`` from the passage tower."""
    from densekit.modeling.dpr import write_dpr_encoder

    for kind, name in DPR_FOLDERS.items():
        write_dpr_encoder(retriever.tower(kind), kind, folder / name, tokenizer=tokenizer)


#: format name -> the library whose classes load the exported folder (the model card's library_name and usage)
LIBRARY_OF_FORMAT = {"sentence-transformers": "sentence-transformers", "dpr": "transformers"}

#: format name -> (check run before anything is written, writer)
EXPORTERS: dict[str, tuple[Callable[[Any], None], Callable[[Any, Any, Path], None]]] = {
    "sentence-transformers": (check_sentence_transformers, export_sentence_transformers),
    "dpr": (check_dpr, export_dpr),
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
                         library_name=LIBRARY_OF_FORMAT[args.format],
                         title=target.resolve().name)
        _replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f"densekit export: {source} -> {target} ({args.format}, pooling "
          f"{getattr(retriever.tower('query'), 'pooling', None)}, model card {target / 'README.md'})")
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
