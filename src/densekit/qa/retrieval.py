"""Retrieval accuracy by answer matching (DPR's ``dense_retriever.py`` validation) and DPR's results JSON.

DPR judges a retriever by *top-k accuracy*: the share of questions with at least one passage containing
an answer (:mod:`densekit.qa.answers`) among their k best. That needs no qrels, only answers, so it also
credits passages other than the one a question was written on (half of SQuAD's questions have their
answer in another paragraph as well): it is not qrel Recall@k, and reports say which one they show.

The rankings come from densekit's one search path: :func:`search_questions` runs
:meth:`densekit.evaluation.evaluator.RetrievalEvaluator.search` over a :class:`QuestionDataset` (every
question of a qa file against a passage file: no judgments needed), so the embedding cache,
``encoding_cache_dir`` and torchrun work as for qrel evaluation; or they come from a TREC run
(:func:`rankings_from_run`), e.g. ``densekit search`` over the shard folders of ``densekit encode``.
:func:`match_answers` then marks every retrieved passage, tokenising each passage once however many
questions retrieve it, and :func:`write_qa_evaluation` writes the results JSON the reader trains on::

    [{"question": "...", "answers": ["..."], "qid": "q0",
      "ctxs": [{"id": "...", "title": "...", "text": "...", "score": 71.2, "has_answer": true}, ...]}]

(``ctxs`` best first; ``qid`` is densekit's addition, DPR ignores it; DPR writes ``score`` as a string,
densekit as a number, and :func:`read_results` accepts both.)
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
from tqdm import tqdm

from densekit.data.formats.qa import QAExample
from densekit.errors import ConfigError, InputError
from densekit.files import atomic_write
from densekit.qa.answers import AnswerMatcher, MatchMode, prepare_text

if TYPE_CHECKING:
    from densekit.data.store import TextStore

PathLike = Union[str, Path]
DEFAULT_TOP_K = (1, 5, 20, 100)
RESULTS_FIX = ('a results file is a JSON list of {"question", "answers": [...], "ctxs": [{"id", "title", "text", '
               '"score", "has_answer"}]} (densekit evaluate --qa_file writes one).')


@dataclass
class RetrievedPassage:
    """One entry of ``ctxs``."""

    id: str
    title: str
    text: str
    score: float
    has_answer: bool

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "text": self.text, "score": self.score,
                "has_answer": self.has_answer}


@dataclass
class QuestionResult:
    """One question of a results file: its answers and its retrieved passages, best first."""

    question: str
    answers: list[str]
    ctxs: list[RetrievedPassage] = field(default_factory=list)
    qid: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        item: dict[str, Any] = {"question": self.question, "answers": self.answers}
        if self.qid is not None:
            item["qid"] = self.qid
        item["ctxs"] = [c.to_json() for c in self.ctxs]
        return item

    @property
    def first_hit(self) -> Optional[int]:
        """0-based rank of the first passage with an answer (None: no passage has one)."""
        return next((i for i, c in enumerate(self.ctxs) if c.has_answer), None)


# --------------------------------------------------------------------------------------- matching
@dataclass
class Ranking:
    """A question's retrieved passages: row indices into the passage store and scores, best first."""

    rows: np.ndarray
    scores: np.ndarray


def match_answers(examples: Sequence[QAExample], rankings: Sequence[Optional[Ranking]], passages: "TextStore",
                  mode: MatchMode = "string", source: Optional[PathLike] = None,
                  progress: bool = True) -> list[QuestionResult]:
    """A :class:`QuestionResult` per example: its ranking's passages, each marked ``has_answer``.

    ``rankings[i]`` belongs to ``examples[i]`` (None or empty: nothing retrieved, counted as a miss).
    Each passage is tokenised once (:func:`prepare_text`) and reused by every question that retrieves it,
    which is what makes 1,743 x 100 matches take a second rather than minutes. ``source`` (the qa file)
    names the file in the error for an answer that is not a valid regular expression.
    """
    if len(examples) != len(rankings):
        raise ValueError(f"{len(examples)} examples but {len(rankings)} rankings")
    prepared: dict[int, str] = {}
    all_ids = passages.ids  # a Python list built once
    results: list[QuestionResult] = []
    for example, ranking in tqdm(list(zip(examples, rankings)), desc="matching answers", unit="question",
                                 disable=not progress):
        try:
            matcher = AnswerMatcher(example.answers, mode)
        except InputError as error:
            raise InputError(error.reason, path=source, line=example.line or None, fix=error.fix) from None
        ctxs: list[RetrievedPassage] = []
        if ranking is not None and len(ranking.rows):
            keep = ranking.rows >= 0  # -1 pads a search shallower than the corpus is small
            rows, scores = ranking.rows[keep], ranking.scores[keep]
            texts, titles = passages.texts(rows), passages.titles(rows)
            ids = [all_ids[r] for r in rows.tolist()]
            for row, score, pid, title, text in zip(rows.tolist(), scores.tolist(), ids, titles, texts):
                ready = prepared.get(row)
                if ready is None:
                    ready = prepared[row] = prepare_text(text, mode)
                ctxs.append(RetrievedPassage(pid, title, text, float(score), matcher.match_prepared(ready)))
        results.append(QuestionResult(example.question, list(example.answers), ctxs, example.qid))
    return results


def top_k_accuracy(results: Sequence[QuestionResult], ks: Iterable[int] = DEFAULT_TOP_K) -> dict[int, float]:
    """DPR's top-k accuracy: for each k, the share of questions with an answer in their first k passages.

    Every question counts, including those with fewer than k (or no) passages retrieved.
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ConfigError(f"top-k cut-offs must be >= 1, got {ks}.")
    if not results:
        raise ConfigError("no question to score.")
    first = np.array([r.first_hit if r.first_hit is not None else np.iinfo(np.int64).max for r in results],
                     dtype=np.int64)
    return {k: float(np.mean(first < k)) for k in ks}


# ------------------------------------------------------------------------------------ results file
def write_results(path: PathLike, results: Iterable[QuestionResult]) -> int:
    """Write DPR's retriever-results JSON atomically (one question per line); returns the count."""
    count = 0
    with atomic_write(path, "w") as handle:
        handle.write("[")
        for result in results:
            handle.write(("," if count else "") + "\n" + json.dumps(result.to_json(), ensure_ascii=False))
            count += 1
        handle.write("\n]\n")
    return count


def _bad(path: PathLike, line: int, what: str) -> InputError:
    return InputError(what, path=path, line=line, fix=RESULTS_FIX)


def read_results(path: PathLike) -> list[QuestionResult]:
    """Read a results JSON (densekit's or DPR's: ``score`` as number or string, ``has_answer`` required)."""
    from densekit.data.formats.dpr import check_answers, iter_json_list

    results: list[QuestionResult] = []
    for index, (line, item) in enumerate(iter_json_list(path)):
        if not isinstance(item, dict):
            raise _bad(path, line, f"item {index} is a {type(item).__name__}, not an object.")
        question = item.get("question")
        if not isinstance(question, str):
            raise _bad(path, line, f'item {index} has no string "question".')
        answers = check_answers(item.get("answers"), path, line, where=f" of item {index}")
        ctxs_raw = item.get("ctxs")
        if not isinstance(ctxs_raw, list):
            raise _bad(path, line, f'"ctxs" of item {index} is not a list.')
        ctxs = []
        for rank, ctx in enumerate(ctxs_raw):
            if not isinstance(ctx, dict) or not isinstance(ctx.get("text"), str) or ctx.get("id") in (None, ""):
                raise _bad(path, line, f'ctx {rank} of item {index} needs an "id" and a string "text".')
            try:
                score = float(ctx.get("score"))
            except (TypeError, ValueError):
                raise _bad(path, line, f'ctx {rank} of item {index} has score {ctx.get("score")!r}, not a number.') \
                    from None
            if not isinstance(ctx.get("has_answer"), bool):
                raise _bad(path, line, f'ctx {rank} of item {index} has no true/false "has_answer".')
            ctxs.append(RetrievedPassage(str(ctx["id"]), ctx.get("title") or "", ctx["text"], score,
                                         ctx["has_answer"]))
        qid = item.get("qid")
        results.append(QuestionResult(question, answers, ctxs, None if qid is None else str(qid)))
    if not results:
        raise InputError("the results file has no questions.", path=path, fix=RESULTS_FIX)
    return results


# -------------------------------------------------------------------------------------- rankings
def rankings_from_run(run: Mapping[str, Mapping[str, float]], query_ids: Sequence[Optional[str]],
                      passages: "TextStore", n_docs: int, run_path: PathLike) -> list[Optional[Ranking]]:
    """Each question's top ``n_docs`` of a TREC run (``read_run`` output) as passage rows, best first.

    ``query_ids[i]`` is the run's id of question i (None: not in the run). A document id the passage file
    does not have is an InputError naming the run file and its line.
    """
    rankings: list[Optional[Ranking]] = []
    for qid in query_ids:
        docs = run.get(qid) if qid is not None else None
        if not docs:
            rankings.append(None)
            continue
        ranked = sorted(docs.items(), key=lambda kv: -kv[1])[:n_docs]  # stable: ties keep the file's order
        ids = [d for d, _ in ranked]
        rows = passages.lookup(ids)
        if (rows < 0).any():
            missing = ids[int(np.flatnonzero(rows < 0)[0])]
            raise InputError(f"passage {missing!r} (query {qid!r}) is not in the passage file "
                             f"{passages._source_label()}.", path=run_path, line=_run_line(run_path, qid, missing),
                             fix="score a run against the passages it was retrieved from (--passages).")
        rankings.append(Ranking(rows, np.array([s for _, s in ranked], dtype=np.float64)))
    return rankings


def _run_line(path: PathLike, qid: str, doc_id: str) -> Optional[int]:
    """Line of ``qid``/``doc_id`` in a run file (only looked up to report an error)."""
    from densekit.data.formats.lines import numbered_lines

    for lineno, line in numbered_lines(path, "run"):
        fields = line.split()
        if len(fields) >= 3 and fields[0] == qid and fields[2] == doc_id:
            return lineno
    return None


def run_ids_for(examples: Sequence[QAExample], run: Mapping[str, Any], queries: Optional["TextStore"],
                qa_path: PathLike, run_path: PathLike) -> list[Optional[str]]:
    """The run's query id of each question.

    Without ``queries`` the question's own id (``q<position>`` in a qa file) is the run's id. With a
    queries file (the one encoded for the run, e.g. BEIR ``queries.jsonl``) each question is found by its
    text; a question that is not in it is an InputError naming the qa file and line.
    """
    if queries is None:
        ids: list[Optional[str]] = [e.qid for e in examples]
        if not any(q in run for q in ids):
            raise InputError(f"none of the qa file's question ids ({examples[0].qid!r}, ...) is in the run.",
                             path=run_path, fix="give the queries file the run was encoded from (--queries "
                                                "queries.jsonl): questions are then found by their text.")
        return ids
    by_text: dict[str, str] = {}
    for qid, text in zip(queries.ids, queries.texts(range(len(queries)))):
        key = text.strip()
        if key not in by_text or (by_text[key] not in run and qid in run):
            by_text[key] = qid
    ids = []
    for example in examples:
        qid = by_text.get(example.question.strip())
        if qid is None:
            raise InputError(f"question {example.question[:80]!r} is not in the queries file "
                             f"{queries._source_label()}.", path=qa_path, line=example.line or None,
                             fix="--queries must be the query file the run was encoded from.")
        ids.append(qid)
    return ids


# ----------------------------------------------------------------------------------- model search
def question_dataset(data_args, passages_path: PathLike, examples: Sequence[QAExample], source: PathLike,
                     format_query=None, format_passage=None, store_cache_dir: Optional[PathLike] = None):
    """A :class:`~densekit.data.datasets.MultiLevelDataset` of every question against a passage file.

    It has no judgments (``qrels`` is empty) and its ``query_ids`` are all the questions, so
    ``RetrievalEvaluator.search`` ranks the passages for each of them exactly as for judged queries
    (same encoding specs, cache keys and distributed sharding).
    """
    from densekit.data.datasets import MultiLevelDataset, _default_format_passage, _default_format_query
    from densekit.data.qrels import require_files
    from densekit.data.store import TextStore, load_store

    dataset = MultiLevelDataset.__new__(MultiLevelDataset)
    dataset.data_args = dataclasses.replace(data_args)
    dataset.format_query = format_query or _default_format_query
    dataset.format_passage = format_passage or _default_format_passage
    dataset.configs = []
    dataset.corpus_paths = [Path(passages_path).resolve()]
    dataset.query_paths = [Path(source).resolve()]
    require_files(dataset.corpus_paths, "passages")
    dataset.corpus = load_store(dataset.corpus_paths, kind="corpus", cache_dir=store_cache_dir)
    dataset.queries = TextStore.from_rows(((e.qid, "", e.question, e.line) for e in examples), source=source,
                                          kind="queries")
    dataset.corpus_cache = dataset.query_cache = None
    dataset.qrels = {}
    dataset.query_ids = [e.qid for e in examples]
    dataset.epoch = 0
    return dataset


def rankings_from_search(result) -> list[Ranking]:
    """The rankings of a :class:`~densekit.evaluation.output.SearchResult` whose documents are the store rows."""
    return [Ranking(np.asarray(result.indices[i], dtype=np.int64), np.asarray(result.scores[i], dtype=np.float64))
            for i in range(len(result.query_ids))]


# ------------------------------------------------------------------------------------------ report
def accuracy_name(k: int) -> str:
    return f"Accuracy@{k}"


def write_qa_evaluation(output_dir: PathLike, results: Sequence[QuestionResult], ks: Iterable[int], *,
                        settings: Mapping[str, Any], results_path: Optional[PathLike] = None,
                        fingerprints: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
    """Write the results JSON, metrics.json and report.md; print a summary line; return the metrics.

    ``metrics.json``: ``aggregate`` (Accuracy@k), ``first_hit_rank`` per question id (1-based, null: no
    passage with an answer), counts and settings. The results JSON goes to ``results_path`` (default
    ``output_dir/results.json``).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    accuracy = top_k_accuracy(results, ks)
    aggregate = {accuracy_name(k): value for k, value in accuracy.items()}
    results_path = Path(results_path) if results_path else output_dir / "results.json"
    write_results(results_path, results)
    counts = {"num_questions": len(results),
              "questions_without_passages": sum(1 for r in results if not r.ctxs),
              "questions_without_answer_in_passages": sum(1 for r in results if r.first_hit is None),
              "passages_per_question": max((len(r.ctxs) for r in results), default=0)}
    payload = {"aggregate": aggregate,
               "first_hit_rank": {(r.qid if r.qid is not None else str(i)): (None if r.first_hit is None
                                                                            else r.first_hit + 1)
                                  for i, r in enumerate(results)},
               "settings": {**settings, "results_file": str(results_path)}, **counts}
    if fingerprints:
        payload["fingerprints"] = dict(fingerprints)
    with atomic_write(output_dir / "metrics.json") as handle:
        json.dump(payload, handle, indent=1)
    from densekit.evaluation.output import markdown_report

    report = markdown_report(aggregate, payload["settings"], fingerprints=fingerprints)
    head, _, rest = report.partition("\n\n")
    note = (f"Top-k accuracy (DPR): the share of {counts['num_questions']} questions with an answer "
            f"({settings.get('match', 'string')} match) in their k best passages; not qrel Recall@k. "
            f"{counts['questions_without_answer_in_passages']} questions have no answer in their "
            f"{counts['passages_per_question']} passages"
            + (f", {counts['questions_without_passages']} have no passage at all" if counts[
                "questions_without_passages"] else "") + f". Results for the reader: `{results_path}`.")
    with atomic_write(output_dir / "report.md") as handle:
        handle.write(head + "\n\n" + note + "\n\n" + rest)
    parts = " ".join(f"{name}={value:.4f}" for name, value in aggregate.items())
    print(f"densekit evaluate: {parts} | {counts['num_questions']} questions, answer match "
          f"{settings.get('match', 'string')} -> {results_path}", flush=True)
    return {"aggregate": aggregate, **counts}
