"""Answer-aware training data: hard negatives are retrieved passages *without* an answer.

With answers instead of qrels, a retrieved passage that contains an answer is a likely positive (DPR's
NQ files take them as positives; Tevatron's EM hard-negative miner and OpenMatch's nq ``build_hn`` do
the same), and one without an answer is a safe hard negative: that removes the false negatives that
plain top-k mining puts in (on SQuAD half of the questions have their answer in other paragraphs too).

Per question, from its ranked passages (a results JSON of ``densekit evaluate --qa_file`` or a fresh
search) :func:`mine_question` takes:

- positives: the gold passages of a DPR retriever file (``positive_ctxs``, when the questions come from
  one), then the first ``answer_positives`` retrieved passages with an answer;
- hard negatives: the first ``num_hard_negatives`` retrieved passages without an answer, after skipping
  the top ``skip_top`` ranks (never a gold passage);
- in-article negatives (``in_article_negatives``, SQuAD-like data where an article has many paragraphs):
  other passages with the title of the question's first positive, without an answer; those retrieved
  come first in rank order, then the others in a seeded random order.

A question without any positive is left out (counted). :func:`write_training_files` writes DPR retriever
JSON (``train.json``), Tevatron jsonl (``train.jsonl``) and/or a BEIR folder (``beir/``: positives judged
1, negatives 0), the last one being what ``densekit train --dataset beir --negative_qrel_path
beir/qrels/train.tsv`` reads (as ``densekit convert`` makes from the DPR file).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

from densekit.data.formats.qa import QAExample
from densekit.errors import ConfigError, InputError
from densekit.files import atomic_write
from densekit.qa.answers import AnswerMatcher, MatchMode, prepare_text
from densekit.qa.retrieval import QuestionResult

if TYPE_CHECKING:
    from densekit.data.store import TextStore

PathLike = Union[str, Path]
OUTPUT_FORMATS = ("dpr", "tevatron", "beir")


@dataclass
class AnswerMiningSettings:
    """How positives and negatives are chosen (see module doc)."""

    num_hard_negatives: int = 30
    skip_top: int = 0
    answer_positives: int = 1
    gold_positives: bool = True
    in_article_negatives: int = 0
    seed: int = 0
    match: MatchMode = "string"

    def __post_init__(self) -> None:
        for name in ("num_hard_negatives", "skip_top", "answer_positives", "in_article_negatives"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must be >= 0, got {getattr(self, name)}.")
        if not self.gold_positives and self.answer_positives == 0:
            raise ConfigError("no positive source: keep --gold_positives true or set --answer_positives >= 1.")


@dataclass
class MinedQuestion:
    """One training question: passages as ``{"passage_id", "title", "text"}`` (+ ``score`` when retrieved)."""

    qid: str
    question: str
    answers: list[str]
    positives: list[dict[str, Any]] = field(default_factory=list)
    hard_negatives: list[dict[str, Any]] = field(default_factory=list)
    in_article: list[dict[str, Any]] = field(default_factory=list)


def _ctx(pid: str, title: str, text: str, score: Optional[float] = None) -> dict[str, Any]:
    out: dict[str, Any] = {"passage_id": pid, "title": title, "text": text}
    if score is not None:
        out["score"] = score
    return out


class ArticleIndex:
    """Rows of a passage store grouped by title, with each passage prepared for answer matching once."""

    def __init__(self, passages: "TextStore", mode: MatchMode) -> None:
        self.passages = passages
        self.mode = mode
        self.ids = passages.ids
        self.titles = passages.titles(range(len(passages)))
        self.by_title: dict[str, list[int]] = {}
        for row, title in enumerate(self.titles):
            if title:
                self.by_title.setdefault(title, []).append(row)
        self._prepared: dict[int, str] = {}
        self._texts: dict[int, str] = {}

    def text(self, row: int) -> str:
        if row not in self._texts:
            self._texts[row] = self.passages.text_at(row)
        return self._texts[row]

    def prepared(self, row: int) -> str:
        if row not in self._prepared:
            self._prepared[row] = prepare_text(self.text(row), self.mode)
        return self._prepared[row]


def mine_question(result: QuestionResult, settings: AnswerMiningSettings, gold: Sequence[dict[str, str]] = (),
                  articles: Optional[ArticleIndex] = None) -> MinedQuestion:
    """Positives and negatives of one question from its ranked passages (``result.ctxs``, best first)."""
    qid = result.qid if result.qid is not None else ""
    mined = MinedQuestion(qid, result.question, list(result.answers))
    taken: set[str] = set()
    if settings.gold_positives:
        for ctx in gold:
            if ctx["passage_id"] not in taken:
                mined.positives.append(_ctx(ctx["passage_id"], ctx.get("title", ""), ctx["text"]))
                taken.add(ctx["passage_id"])
    gold_ids = {ctx["passage_id"] for ctx in gold}
    with_answer = [c for c in result.ctxs if c.has_answer and c.id not in taken]
    for c in with_answer[: settings.answer_positives]:
        mined.positives.append(_ctx(c.id, c.title, c.text, c.score))
        taken.add(c.id)
    for c in result.ctxs[settings.skip_top:]:
        if len(mined.hard_negatives) >= settings.num_hard_negatives:
            break
        if not c.has_answer and c.id not in gold_ids and c.id not in taken:
            mined.hard_negatives.append(_ctx(c.id, c.title, c.text, c.score))
            taken.add(c.id)
    if settings.in_article_negatives and articles is not None and mined.positives:
        title = mined.positives[0]["title"]
        rows = articles.by_title.get(title, [])
        matcher = AnswerMatcher(result.answers, settings.match)
        ranked = {c.id: (i, c.score) for i, c in enumerate(result.ctxs)}
        candidates = [r for r in rows if articles.ids[r] not in taken and articles.ids[r] not in gold_ids]
        retrieved = sorted((r for r in candidates if articles.ids[r] in ranked), key=lambda r: ranked[articles.ids[r]][0])
        others = [r for r in candidates if articles.ids[r] not in ranked]
        random.Random(f"{settings.seed}:{qid}:{result.question}").shuffle(others)
        for row in retrieved + others:
            if len(mined.in_article) >= settings.in_article_negatives:
                break
            if matcher.match_prepared(articles.prepared(row)):
                continue
            pid = articles.ids[row]
            score = ranked[pid][1] if pid in ranked else None
            mined.in_article.append(_ctx(pid, articles.titles[row], articles.text(row), score))
            taken.add(pid)
    return mined


def mine_answer_negatives(results: Sequence[QuestionResult], settings: AnswerMiningSettings,
                          examples: Optional[Sequence[QAExample]] = None,
                          passages: Optional["TextStore"] = None) -> tuple[list[MinedQuestion], dict[str, int]]:
    """:func:`mine_question` for every result; ``examples[i]`` (same order) gives question i's gold passages.

    Returns the questions kept (those with a positive) and counts.
    """
    if examples is not None and len(examples) != len(results):
        raise ConfigError(f"{len(examples)} questions in the qa file but {len(results)} in the results.")
    if settings.in_article_negatives and passages is None:
        raise ConfigError("--in_article_negatives needs the passage collection (--passages).")
    articles = ArticleIndex(passages, settings.match) if settings.in_article_negatives and passages is not None \
        else None
    kept: list[MinedQuestion] = []
    counts = {"questions": len(results), "kept": 0, "skipped_no_positive": 0, "positives": 0,
              "gold_positives": 0, "hard_negatives": 0, "in_article_negatives": 0}
    for i, result in enumerate(results):
        gold: Sequence[dict[str, str]] = ()
        if examples is not None:
            if examples[i].question.strip() != result.question.strip():
                raise InputError(f"question {i} of the results ({result.question[:60]!r}) is not question {i} of "
                                 f"the qa file ({examples[i].question[:60]!r}).", line=examples[i].line or None,
                                 fix="give the qa file the results were made from.")
            gold = examples[i].gold
        if result.qid is None:
            result.qid = examples[i].qid if examples is not None else f"q{i}"
        mined = mine_question(result, settings, gold=gold, articles=articles)
        if not mined.positives:
            counts["skipped_no_positive"] += 1
            continue
        kept.append(mined)
        counts["kept"] += 1
        counts["positives"] += len(mined.positives)
        counts["gold_positives"] += min(len(gold), len(mined.positives)) if settings.gold_positives else 0
        counts["hard_negatives"] += len(mined.hard_negatives)
        counts["in_article_negatives"] += len(mined.in_article)
    return kept, counts


def to_dpr(mined: MinedQuestion) -> dict[str, Any]:
    """A DPR retriever item (hard negatives: retrieved ones, then in-article ones)."""
    return {"id": mined.qid, "question": mined.question, "answers": mined.answers,
            "positive_ctxs": mined.positives, "negative_ctxs": [],
            "hard_negative_ctxs": mined.hard_negatives + mined.in_article}


def to_tevatron(mined: MinedQuestion) -> dict[str, Any]:
    """A Tevatron training line (``answers`` kept, as in Tevatron's wikipedia-nq)."""
    def passage(ctx: dict[str, Any]) -> dict[str, Any]:
        return {"docid": ctx["passage_id"], "title": ctx["title"], "text": ctx["text"]}

    return {"query_id": mined.qid, "query": mined.question, "answers": mined.answers,
            "positive_passages": [passage(c) for c in mined.positives],
            "negative_passages": [passage(c) for c in mined.hard_negatives + mined.in_article]}


def write_training_files(output_dir: PathLike, mined: Sequence[MinedQuestion], formats: Sequence[str],
                         split: str = "train") -> dict[str, Path]:
    """Write ``train.json`` (dpr), ``train.jsonl`` (tevatron) and/or ``beir/`` into ``output_dir``."""
    from densekit.data.formats.dpr import write_dpr

    unknown = sorted(set(formats) - set(OUTPUT_FORMATS))
    if unknown or not formats:
        raise ConfigError(f"--output_format {' '.join(formats)}: use one or more of {', '.join(OUTPUT_FORMATS)}.")
    if not mined:
        raise ConfigError("no question has a positive passage, so there is nothing to train on; check the "
                          "answers, --answer_positives, or search deeper (--n_docs).")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    dpr_path = output_dir / "train.json"
    if "dpr" in formats or "beir" in formats:
        write_dpr(dpr_path, (to_dpr(m) for m in mined))
        paths["dpr"] = dpr_path
    if "tevatron" in formats:
        with atomic_write(output_dir / "train.jsonl") as handle:
            for m in mined:
                handle.write(json.dumps(to_tevatron(m), ensure_ascii=False) + "\n")
        paths["tevatron"] = output_dir / "train.jsonl"
    if "beir" in formats:
        from densekit.data.formats.collection import write_beir_folder
        from densekit.data.formats.dpr import read_dpr

        write_beir_folder(read_dpr(dpr_path), output_dir / "beir", split=split)
        paths["beir"] = output_dir / "beir"
        if "dpr" not in formats:
            dpr_path.unlink()
            del paths["dpr"]
    return paths
