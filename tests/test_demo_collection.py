"""The stdlib-docstring demo collection: BEIR layout, reproducibility, caching, and a task that is neither
trivial nor impossible (checked with a small TF-IDF retriever scored by pytrec_eval)."""
from __future__ import annotations

import inspect
import json
import re
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import pytrec_eval

from densekit import demo_collection
from densekit.demo_collection import (
    DEMO_MODULES, MIN_WORDS, build_demo_collection, demo_collection_dir, python_version_tag,
)
from densekit.errors import ConfigError

FILES = ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv", "qrels/train.tsv", "README.md")


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "query-id\tcorpus-id\tscore"
    qrels: dict[str, dict[str, int]] = {}
    for line in lines[1:]:
        query_id, doc_id, score = line.split("\t")
        qrels.setdefault(query_id, {})[doc_id] = int(score)
    return qrels


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return build_demo_collection(tmp_path_factory.mktemp("demo_a"))


@pytest.fixture(scope="module")
def collection(built):
    """Corpus, the test queries and their judgments."""
    qrels = read_qrels(built / "qrels" / "test.tsv")
    queries = [q for q in read_jsonl(built / "queries.jsonl") if q["_id"] in qrels]
    return read_jsonl(built / "corpus.jsonl"), queries, qrels


def test_training_split_is_disjoint_from_the_test_queries(built, collection):
    corpus, test_queries, test_qrels = collection
    train_qrels = read_qrels(built / "qrels" / "train.tsv")
    all_queries = read_jsonl(built / "queries.jsonl")
    train_queries = [q for q in all_queries if q["_id"] in train_qrels]
    assert len(all_queries) == len(test_queries) + len(train_queries)  # every query in exactly one split
    assert 200 <= len(train_queries) and not set(train_qrels) & set(test_qrels)
    assert not {q["text"] for q in train_queries} & {q["text"] for q in test_queries}
    test_docs = {d for judged in test_qrels.values() for d in judged}
    assert not test_docs & {d for judged in train_qrels.values() for d in judged}
    haystack = "\n".join(d["text"].lower() for d in corpus)
    assert not any(q["text"].lower() in haystack for q in train_queries)  # no query in the corpus verbatim


def test_two_builds_are_byte_identical(built, tmp_path):
    second = build_demo_collection(tmp_path / "demo_b")
    for name in FILES:
        assert (built / name).read_bytes() == (second / name).read_bytes(), name


def test_collection_sizes_are_in_the_intended_range(collection):
    corpus, queries, qrels = collection
    assert 2000 <= len(corpus) <= 5000
    assert 200 <= len(queries) <= 500
    assert set(qrels) == {q["_id"] for q in queries}


def test_ids_are_unique_and_every_judgment_points_at_a_corpus_document(collection):
    corpus, queries, qrels = collection
    doc_ids = [d["_id"] for d in corpus]
    assert len(doc_ids) == len(set(doc_ids))
    assert len({q["_id"] for q in queries}) == len(queries)
    assert len({q["text"] for q in queries}) == len(queries)
    for judged in qrels.values():
        assert set(judged) <= set(doc_ids)
        assert set(judged.values()) <= {1, 2}
        assert 2 in judged.values()  # every query has at least one of its own paragraphs to find


def test_documents_are_nontrivial_normalized_and_deduplicated(collection):
    corpus, _, _ = collection
    texts = [d["text"] for d in corpus]
    assert len(texts) == len(set(texts))
    for doc in corpus:
        assert len(re.findall(r"[A-Za-z]+", doc["text"])) >= MIN_WORDS
        assert doc["text"] == " ".join(doc["text"].split())
        assert doc["title"] == doc["_id"].split("#")[0]


PARAGRAPH_CHECK = textwrap.dedent("""
    import importlib, inspect, json, re, sys
    modules, corpus = json.load(sys.stdin)

    def resolve(dotted):
        # The stdlib object a document id names (longest importable module prefix, then attributes).
        parts = dotted.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            name = ".".join(parts[:cut])
            if name in modules:
                obj = importlib.import_module(name)
                for attr in parts[cut:]:
                    obj = getattr(obj, attr) if inspect.ismodule(obj) else inspect.getattr_static(obj, attr)
                return obj.__func__ if isinstance(obj, (classmethod, staticmethod)) else obj
        raise AssertionError(dotted + " is not under a demo module")

    def words(text):
        return re.sub(r"[-=~^*]{3,}", " ", text).split()

    wrong = []
    for doc in corpus:
        doc_id, _, index = doc["_id"].partition("#")
        paragraphs = re.split(r"\\n[ \\t]*\\n", inspect.cleandoc(resolve(doc_id).__doc__))
        if words(doc["text"]) != words(paragraphs[int(index or 0)]):
            wrong.append(doc["_id"])
    print(json.dumps(wrong))
""")


def test_every_document_is_the_paragraph_its_id_names(collection):
    """Checked against the live objects in a fresh interpreter (-I -S), as the build reads them: libraries
    imported by other tests in this process may swap stdlib attributes (pytest, torch and wandb do)."""
    import subprocess

    corpus, _, _ = collection
    payload = json.dumps([sorted(DEMO_MODULES), corpus])
    done = subprocess.run([sys.executable, "-I", "-S", "-c", PARAGRAPH_CHECK], input=payload, capture_output=True,
                          text=True, check=True)
    assert json.loads(done.stdout) == []


def test_query_text_is_never_in_the_corpus_verbatim(collection):
    corpus, queries, _ = collection
    haystack = "\n".join(d["text"].lower() for d in corpus)
    for query in queries:
        assert query["text"].lower() not in haystack, query


def test_query_omits_the_object_own_name(collection):
    _, queries, _ = collection
    for query in queries:
        own_name = query["_id"].removeprefix("q:").rsplit(".", 1)[-1].lower()
        words = {re.sub(r"[^a-z0-9_]", "", w.lower()) for w in query["text"].split()}
        assert own_name not in words, query


def test_readme_reports_the_sizes_of_the_files(built, collection):
    corpus, queries, qrels = collection
    readme = (built / "README.md").read_text(encoding="utf-8")
    assert python_version_tag() in readme
    assert f"{len(corpus)} documents" in readme
    assert f"{len(queries)} test queries" in readme
    assert f"{sum(len(j) for j in qrels.values())} judgments" in readme


def tfidf_run(corpus: list[dict], queries: list[dict], k: int = 100) -> dict[str, dict[str, float]]:
    """A plain TF-IDF retriever (log tf, smooth idf, cosine) over title + text, with numpy postings."""
    def weights(text: str) -> dict[str, float]:
        return {tok: 1 + np.log(n) for tok, n in Counter(re.findall(r"[a-z0-9]+", text.lower())).items()}

    doc_weights = [weights(d["title"].replace(".", " ").replace("_", " ") + " " + d["text"]) for d in corpus]
    df = Counter(tok for w in doc_weights for tok in w)
    idf = {tok: np.log((1 + len(corpus)) / (1 + n)) + 1 for tok, n in df.items()}
    lists: dict[str, tuple[list[int], list[float]]] = {}
    for i, w in enumerate(doc_weights):
        norm = np.sqrt(sum((v * idf[t]) ** 2 for t, v in w.items()))
        for tok, v in w.items():
            lists.setdefault(tok, ([], []))[0].append(i)
            lists[tok][1].append(v * idf[tok] / norm)
    postings = {tok: (np.array(ids), np.array(ws)) for tok, (ids, ws) in lists.items()}
    run = {}
    for query in queries:
        scores = np.zeros(len(corpus))
        for tok, v in weights(query["text"]).items():
            if tok in postings:
                ids, ws = postings[tok]
                scores[ids] += v * idf[tok] * ws  # ids are unique per term; the query norm leaves ranks alone
        top = np.argsort(-scores, kind="stable")[:k]
        run[query["_id"]] = {corpus[i]["_id"]: float(scores[i]) for i in top}
    return run


def mean_ndcg10(qrels, run) -> float:
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(run)
    return float(np.mean([m["ndcg_cut_10"] for m in per_query.values()]))


def test_lexical_baseline_is_clearly_above_random_and_below_perfect(collection):
    corpus, queries, qrels = collection
    tfidf = mean_ndcg10(qrels, tfidf_run(corpus, queries))
    rng = np.random.default_rng(0)
    random_run = {q["_id"]: {corpus[i]["_id"]: float(10 - r) for r, i in
                             enumerate(rng.choice(len(corpus), 10, replace=False))} for q in queries}
    chance = mean_ndcg10(qrels, random_run)
    print(f"demo collection: {len(corpus)} docs, {len(queries)} queries, "
          f"TF-IDF nDCG@10={tfidf:.3f}, random={chance:.3f}")
    assert chance < 0.02
    assert 0.1 < tfidf < 0.95


def test_cache_dir_is_built_once_then_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("DENSEKIT_CACHE", str(tmp_path / "env_cache"))
    calls = []
    real_build = demo_collection.build_demo_collection
    monkeypatch.setattr(demo_collection, "build_demo_collection",
                        lambda out: calls.append(out) or real_build(out))
    first = demo_collection_dir()
    second = demo_collection_dir()
    assert first == second == tmp_path / "env_cache" / "demo" / python_version_tag()
    assert len(calls) == 1
    assert all((first / name).is_file() for name in FILES)


def test_cache_root_argument_wins_over_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DENSEKIT_CACHE", str(tmp_path / "env_cache"))
    folder = demo_collection_dir(tmp_path / "explicit")
    assert folder == tmp_path / "explicit" / "demo" / python_version_tag()
    assert not (tmp_path / "env_cache").exists()


def test_incomplete_cache_folder_is_rebuilt(tmp_path):
    folder = demo_collection_dir(tmp_path)
    (folder / "README.md").unlink()
    (folder / "corpus.jsonl").write_text("half-written", encoding="utf-8")
    demo_collection_dir(tmp_path)
    assert (folder / "README.md").is_file()
    assert read_jsonl(folder / "corpus.jsonl")[0]["_id"]


def test_build_ignores_stdlib_patches_and_optimize_flags_of_the_calling_process(built, tmp_path, monkeypatch):
    # torch replaces inspect.getfile on import; docstrings must come from the stdlib as shipped
    monkeypatch.setattr(inspect, "getfile", lambda obj: "patched")
    monkeypatch.setattr(textwrap, "dedent", lambda text: text)
    other = build_demo_collection(tmp_path)
    for name in FILES:
        assert (built / name).read_bytes() == (other / name).read_bytes(), name


def test_unusable_interpreter_raises_a_config_error_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    with pytest.raises(ConfigError, match="standard library"):
        build_demo_collection(tmp_path / "out")
    assert not (tmp_path / "out").exists()
