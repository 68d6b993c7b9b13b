"""densekit: train, evaluate and mine hard negatives for dense retrievers (bi-encoders).

The public names below are imported on first use, so ``import densekit`` (and the ``densekit`` command's
help) stays fast; ``from densekit import X`` works as usual.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "ModelArguments": "densekit.modeling.model_args",
    "BiEncoderRetriever": "densekit.modeling.retriever",
    "PretrainedEncoder": "densekit.modeling.encoders",
    "DataArguments": "densekit.data.data_args",
    "MaterializedQRelConfig": "densekit.data.qrels",
    "MultiLevelDataset": "densekit.data.datasets",
    "BinaryDataset": "densekit.data.datasets",
    "RetrievalCollator": "densekit.data.collator",
    "EvaluationArguments": "densekit.evaluation.evaluation_args",
    "RetrievalEvaluator": "densekit.evaluation.evaluator",
    "FastResultHeapq": "densekit.search.topk",
    "RetrievalTrainer": "densekit.training.trainer",
    "RetrievalTrainingArguments": "densekit.training.training_args",
    "IRMetrics": "densekit.training.ir_metrics",
    "RetrievalLoss": "densekit.modeling.losses",
    "InputError": "densekit.errors",
    "ConfigError": "densekit.errors",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'densekit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from densekit.data.collator import RetrievalCollator
    from densekit.data.data_args import DataArguments
    from densekit.data.datasets import BinaryDataset, MultiLevelDataset
    from densekit.data.qrels import MaterializedQRelConfig
    from densekit.errors import ConfigError, InputError
    from densekit.evaluation.evaluation_args import EvaluationArguments
    from densekit.evaluation.evaluator import RetrievalEvaluator
    from densekit.modeling.encoders import PretrainedEncoder
    from densekit.modeling.model_args import ModelArguments
    from densekit.modeling.retriever import BiEncoderRetriever
    from densekit.modeling.losses import RetrievalLoss
    from densekit.search.topk import FastResultHeapq
    from densekit.training.ir_metrics import IRMetrics
    from densekit.training.trainer import RetrievalTrainer
    from densekit.training.training_args import RetrievalTrainingArguments
