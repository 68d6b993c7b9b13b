"""EvaluationArguments: options of encoding, search and scoring (a ``transformers.TrainingArguments``).

It subclasses TrainingArguments so that launchers, ``HfArgumentParser`` and distributed setup work as
for training; of the inherited options, evaluation reads ``output_dir``, ``per_device_eval_batch_size``,
``report_to``, ``disable_tqdm`` and the process and device fields. Everything else is ignored (encoding
runs in float32: reduced precision would change the vectors the cache keys promise).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Union

from transformers import TrainingArguments

from densekit.errors import ConfigError


@dataclass
class EvaluationArguments(TrainingArguments):
    """Options for :class:`densekit.RetrievalEvaluator`.

    ``per_device_matmul_batch_size`` is the number of corpus vectors scored against the queries in one
    matrix product of the streaming top-k search: larger is faster, memory grows with it.
    ``precompute_corpus_embs`` encodes the whole corpus before searching (fastest with a cache); otherwise
    encoding and search are interleaved block by block so memory stays bounded by the block size.
    """

    output_dir: Optional[str] = field(default="./densekit_eval", metadata={"help": "Where results are written."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Texts per encoder forward pass."})
    per_device_matmul_batch_size: int = field(
        default=40_960, metadata={"help": "Corpus vectors per similarity matmul in the top-k search."}
    )
    search_topk: int = field(default=1000, metadata={"help": "Documents retrieved per query."})
    precompute_corpus_embs: bool = field(
        default=False, metadata={"help": "Encode the whole corpus before searching instead of block by block."}
    )
    encoding_cache_dir: Optional[str] = field(
        default=None, metadata={"help": "Folder of the embedding cache shared by encode/evaluate/mine."}
    )
    broadcast_output: bool = field(
        default=True, metadata={"help": "In distributed runs, give every rank the results (False: rank 0 only)."}
    )
    measures: list[str] = field(
        default_factory=lambda: ["nDCG@10", "Recall@100", "MRR@10", "MAP"],
        metadata={"help": "IR measures, e.g. ndcg_cut.10 recall.100 recip_rank P.10 map or nDCG@10 MRR@10."},
    )
    run_tag: str = field(default="densekit", metadata={"help": "Tag written in the last column of run.trec."})
    encoding_block_size: int = field(
        default=16_384, metadata={"help": "Corpus texts encoded per block between search/checkpoint steps."}
    )
    # Union order as in TrainingArguments: HfArgumentParser reads the field as a str option.
    report_to: Union[None, str, list[str]] = field(default="none", metadata={"help": "Where to log metrics (wandb or none)."})
    no_annot_in_mined_hn: bool = field(
        default=False,
        metadata={"help": "Mining: leave every annotated document of the dataset out of the mined negatives."},
    )
    merge_mined_qrels: bool = field(
        default=False,
        metadata={"help": "Mining: also write merged_qrels.tsv = the dataset's judgments + mined documents as 0."},
    )
    # Hard-negative selection (densekit.evaluation.mining explains each rule and the positive reference).
    mine_num_negatives: Optional[int] = field(
        default=None,
        metadata={"help": "Mining: negatives kept per query (k). Unset: search_topk, which is then also the "
                          "window size below mine_skip_top; set: search_topk is the search depth (R)."},
    )
    mine_skip_top: int = field(
        default=0, metadata={"help": "Mining: skip the top r ranks (likely unjudged positives)."})
    mine_max_rank: Optional[int] = field(
        default=None,
        metadata={"help": "Mining: deepest rank considered (R) and the search depth. Unset: search_topk when "
                          "mine_num_negatives is set, else mine_skip_top + k (+ the most judged documents of a "
                          "query with no_annot_in_mined_hn), as before these options."},
    )
    mine_sample: bool = field(
        default=False,
        metadata={"help": "Mining: a seeded uniform sample of k negatives from the window instead of the top k."})
    mine_seed: int = field(default=0, metadata={"help": "Mining: seed of mine_sample (per query)."})
    mine_relative_margin: Optional[float] = field(
        default=None,
        metadata={"help": "Mining: drop candidates scoring above this fraction of the reference positive's score, "
                          "in (0, 1] (NV-Retriever TopK-PercPos: 0.95)."},
    )
    mine_absolute_margin: Optional[float] = field(
        default=None,
        metadata={"help": "Mining: drop candidates scoring above the reference positive's score minus this (>= 0)."})
    mine_max_score: Optional[float] = field(
        default=None, metadata={"help": "Mining: drop candidates scoring above this value."})
    mine_positive_reference: Literal["min", "mean", "max"] = field(
        default="min",
        metadata={"help": "Mining: with several positives, the margins are measured from their min (default: "
                          "the weakest positive, safest against false negatives), mean or max score."},
    )
    audit_qrels: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Mining audit: qrel files (e.g. other splits) in which kept negatives judged > 0 are "
                          "counted as suspected false negatives."},
    )
    mine_audit: bool = field(
        default=True, metadata={"help": "Mining: write the pool audit (audit.md + audit.png) in output_dir."})
    mine_audit_sample: int = field(
        default=20, metadata={"help": "Mining audit: rows (kept and dropped) shown with their texts."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.search_topk < 1:
            raise ConfigError(f"search_topk must be >= 1, got {self.search_topk}.")
        if self.per_device_matmul_batch_size < 1:
            raise ConfigError("per_device_matmul_batch_size must be >= 1.")
        if self.encoding_block_size < 1:
            raise ConfigError("encoding_block_size must be >= 1.")
        from densekit.evaluation.metrics import parse_measures
        from densekit.evaluation.mining import MiningSettings

        if self.mine_max_rank is not None and self.mine_max_rank < 1:
            raise ConfigError(f"--mine_max_rank must be >= 1, got {self.mine_max_rank}.")
        if self.mine_audit_sample < 0:
            raise ConfigError(f"--mine_audit_sample must be >= 0, got {self.mine_audit_sample}.")
        MiningSettings.from_args(self)  # a bad mining setting fails now, not after encoding
        from densekit.data.qrels import require_files

        require_files([Path(p) for p in self.audit_qrels or []], "--audit_qrels qrels")

        parse_measures(self.measures)  # fail now on an unknown measure name, not after encoding
