"""``densekit mine``: hard negatives for the judged queries of a dataset (OpenMatch build_hn / ANCE style)."""
from __future__ import annotations

from densekit.cli.arguments import parse_dataclasses
from densekit.cli.evaluate import DatasetArguments, build_evaluator
from densekit.data.data_args import DataArguments
from densekit.evaluation.evaluation_args import EvaluationArguments
from densekit.modeling.model_args import ModelArguments


def run(argv) -> int:
    model_args, data_args, eval_args, dataset_args = parse_dataclasses(
        (ModelArguments, DataArguments, EvaluationArguments, DatasetArguments), argv, prog="densekit mine")
    build_evaluator(model_args, data_args, eval_args, dataset_args).mine_hard_negatives()
    return 0
