"""Training: RetrievalTrainingArguments, RetrievalTrainer (and IRMetrics in densekit.training.ir_metrics)."""
from densekit.training.trainer import RetrievalTrainer
from densekit.training.training_args import RetrievalTrainingArguments

__all__ = ["RetrievalTrainer", "RetrievalTrainingArguments"]
