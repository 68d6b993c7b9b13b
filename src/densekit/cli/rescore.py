"""``densekit rescore``: score mined candidates with a teacher, filter likely false negatives, write targets.

The teacher is a local cross-encoder (any ``AutoModelForSequenceClassification`` folder) or a bi-encoder
folder (``--teacher_kind auto`` tells them apart by ``config.json``); densekit.evaluation.rescoring explains
the scores, the cache and the filters::

    densekit rescore --teacher CROSS_ENCODER --dataset scifact --split train \\
        --candidates hn/mined_run.trec --drop_margin 0.5 --output_dir rescored \\
        --encoding_cache_dir cache          # an interrupted or repeated run resumes / reuses the scores

Writes ``output_dir/teacher_scores.tsv`` (every scored pair, positives included: distillation targets),
``filtered_negatives.tsv`` (kept negatives, mined_qrels.tsv layout: ``densekit train --negative_qrel_path``),
``filtered_teacher_scores.tsv`` (positives + kept negatives with teacher scores), ``rescore.json`` and
``report.md``. Under ``torchrun`` each process scores its share of the pairs and rank 0 writes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from densekit.cli.arguments import parse_dataclasses
from densekit.cli.evaluate import DatasetArguments
from densekit.errors import ConfigError


@dataclass
class RescoreDatasetArguments(DatasetArguments):
    """The dataset the candidates were mined from (its train split by default)."""

    split: str = field(default="train", metadata={"help": "qrels split inside the BEIR folder (its judged "
                                                          "positives: label > 0)"})


@dataclass
class RescoreArguments:
    """Teacher, candidates, filters and outputs of ``densekit rescore``."""

    teacher: str = field(metadata={"help": "local teacher folder: a cross-encoder (ForSequenceClassification) "
                                           "or a bi-encoder checkpoint"})
    candidates: list[str] = field(metadata={"help": "mined_run.trec or mined_qrels.tsv (densekit mine), or any "
                                                    "TREC run / BEIR qrels naming the candidates"})
    output_dir: str = field(metadata={"help": "where teacher_scores.tsv, filtered_negatives.tsv, rescore.json, "
                                              "report.md are written"})
    include_positives: bool = field(default=True, metadata={
        "help": "also score each candidate query's judged positives (KL / margin-MSE targets need them; "
                "--drop_margin too)"})
    teacher_kind: str = field(default="auto", metadata={"help": "auto | cross-encoder | bi-encoder"})
    batch_size: int = field(default=32, metadata={"help": "pairs (cross-encoder) or texts (bi-encoder) per forward"})
    max_length: Optional[int] = field(default=None, metadata={
        "help": "token budget of a (query, passage) pair (cross-encoder) or of each text (bi-encoder); default: "
                "the teacher's limit"})
    drop_above: Optional[float] = field(default=None, metadata={
        "help": "drop a negative whose teacher score is above this"})
    drop_margin: Optional[float] = field(default=None, metadata={
        "help": "drop a negative whose teacher score is above (the query's lowest positive teacher score - M)"})
    encoding_cache_dir: Optional[str] = field(default=None, metadata={
        "help": "cache folder: scores (cross-encoder) or vectors (bi-encoder) are reused and resumed by block"})
    cache_block_size: int = field(default=4096, metadata={"help": "pairs per cached block (the resume unit)"})
    device: Optional[str] = field(default=None, metadata={"help": "cpu, cuda, cuda:1 ... (default: cuda if present)"})
    disable_tqdm: bool = field(default=False, metadata={"help": "no progress bars"})


def init_distributed() -> None:
    """Join the process group torchrun describes (WORLD_SIZE > 1); a no-op under plain ``python``."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)


def run(argv) -> int:
    from densekit.cli.evaluate import qrel_config_from
    from densekit.data.data_args import DataArguments
    from densekit.data.datasets import MultiLevelDataset
    from densekit.evaluation.rescoring import RescoreSettings, rescore, teacher_kind

    args, dataset_args = parse_dataclasses((RescoreArguments, RescoreDatasetArguments), argv, prog="densekit rescore")
    settings = RescoreSettings(
        teacher=args.teacher, candidates=list(args.candidates), output_dir=args.output_dir,
        include_positives=args.include_positives, teacher_kind=args.teacher_kind, batch_size=args.batch_size,
        max_length=args.max_length, drop_above=args.drop_above, drop_margin=args.drop_margin,
        encoding_cache_dir=args.encoding_cache_dir, cache_block_size=args.cache_block_size, device=args.device,
        progress=not args.disable_tqdm)
    teacher_kind(settings.teacher, settings.teacher_kind)  # a bad teacher folder fails before data is read
    if settings.device and settings.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"--device {settings.device} but no CUDA device is available; use --device cpu.")
    dataset = MultiLevelDataset(DataArguments(), qrel_config_from(dataset_args),
                                store_cache_dir=dataset_args.store_cache_dir)
    init_distributed()
    rescore(settings, dataset.queries, dataset.corpus, dataset.qrels)
    return 0
