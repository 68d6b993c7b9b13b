"""DataArguments: how queries and passages are turned into model inputs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from densekit.errors import ConfigError


@dataclass
class DataArguments:
    """Options for reading and tokenizing retrieval data (parsed by ``HfArgumentParser`` too).

    ``dataset_name`` lets an encoder format inputs per dataset (for example a task instruction for
    E5-mistral style models). ``query_max_len`` / ``passage_max_len`` are token budgets after special
    tokens; ``None`` means the model's own limit (from a sentence-transformers config when there is one).
    """

    dataset_name: Optional[str] = field(default=None, metadata={"help": "Name passed to the model's formatting."})
    group_size: int = field(default=8, metadata={"help": "Documents per query in a training/eval group."})
    query_max_len: Optional[int] = field(default=None, metadata={"help": "Max query length in tokens."})
    passage_max_len: Optional[int] = field(default=None, metadata={"help": "Max passage length in tokens."})
    passage_selection_strategy: str = field(
        default="most_relevant",
        metadata={"help": "How MultiLevelDataset picks group_size documents: most_relevant or random."},
    )
    # Named sampling_seed, not seed: TrainingArguments owns --seed and both are parsed by one HfArgumentParser.
    sampling_seed: int = field(
        default=42, metadata={"help": "Seed for sampling passages (combined with epoch and example index)."}
    )

    short_negatives: Literal["sample_with_replacement", "skip"] = field(
        default="sample_with_replacement",
        metadata={"help": "BinaryDataset, for a query with fewer than group_size-1 negatives: use them all and "
                          "draw the rest with replacement, or skip the query (both counted in a warning). Applies only to "
                          "judged negatives (--negative_qrel_path); random corpus negatives are never short, so it "
                          "has no effect without them."},
    )

    def __post_init__(self) -> None:
        for name in ("query_max_len", "passage_max_len"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be a positive number of tokens, got {value}.")
        if self.group_size < 1:
            raise ConfigError(f"group_size must be at least 1, got {self.group_size}.")
        if self.passage_selection_strategy not in ("most_relevant", "random"):
            raise ConfigError(
                f"passage_selection_strategy={self.passage_selection_strategy!r} is unknown; "
                "use 'most_relevant' or 'random'."
            )
        if self.short_negatives not in ("sample_with_replacement", "skip"):
            raise ConfigError(
                f"short_negatives={self.short_negatives!r} is unknown; use 'sample_with_replacement' or 'skip'."
            )
