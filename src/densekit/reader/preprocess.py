"""Reader preprocessing: tokenise passages once, locate answer spans, choose positives and negatives; cached.

What the reader reads is ``[CLS] question [SEP] title [SEP] text`` truncated to ``sequence_length`` (the input of
DPR's reader and of ``transformers.DPRReaderTokenizer``: no closing ``[SEP]``). Why passages are stored apart
from questions: the same paragraph is retrieved for many questions, so its title and text are tokenised once
(with the character offsets and word ids the span decoder needs) and each question keeps references to them;
the sequences are assembled per batch.

Answer spans are located the way DPR's preprocessing does it in spirit (the answer as a token sequence of the
passage), with the fast tokenizer's offsets: every case-insensitive occurrence of an answer string in the
passage text whose first and last characters fall on token boundaries (``Ge`` inside ``General`` is no span),
and which ends inside the truncated window.

Training questions (``is_train``): positives are the retrieved passages with ``has_answer`` in which a span was
found (the first ``max_positives``), or with ``gold`` passages, that gold passage alone (inserted when it was
not retrieved); negatives are the first ``max_negatives`` passages without ``has_answer``. A question without a
positive is dropped, as DPR does. Prediction keeps the first ``max_passages`` passages in retrieval order.

Why a cache, and what keys it: tokenising a large results file takes minutes. The cache folder holds one JSON
file per key (never pickle), the key being a hash of the results file's bytes, the gold file's bytes, the
tokenizer fingerprint (densekit.modeling.encoding_spec.tokenizer_fingerprint, as for embeddings), the
settings and this module's format version; a change to any of them writes a new entry, so a stale one is
never read. An entry is written atomically and its checksum is checked before it is reused.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from tqdm.auto import tqdm

from densekit.cache import fingerprint, sha256_file
from densekit.errors import ConfigError, InputError
from densekit.files import atomic_write
from densekit.reader.results import Context, ReaderQuestion, read_gold_passages, read_results

logger = logging.getLogger(__name__)
FORMAT_VERSION = 1


@dataclass(frozen=True)
class PreprocessSettings:
    """Everything besides the input files and the tokenizer that changes the preprocessed data."""

    sequence_length: int
    is_train: bool
    max_positives: int = 20
    max_negatives: int = 50
    max_passages: Optional[int] = None  # prediction: passages kept per question
    max_questions: Optional[int] = None  # the first N questions of the file only

    def __post_init__(self) -> None:
        if self.sequence_length < 8:
            raise ConfigError(f"--sequence_length must be at least 8, got {self.sequence_length}.")


@dataclass
class Passage:
    """A tokenised passage: title ids, text ids with character offsets into ``text`` and word ids."""

    id: str
    title: str
    text: str
    title_ids: list[int]
    text_ids: list[int]
    offsets: list[list[int]]
    words: list[int]


@dataclass
class PassageRef:
    """A question's passage: its index in :attr:`ReaderData.passages` and the answer spans found in it
    (inclusive ``[start, end]`` in text-token positions, i.e. counted from the passage's first text token)."""

    passage: int
    score: float = 0.0
    has_answer: bool = False
    spans: list[list[int]] = field(default_factory=list)


@dataclass
class PreparedQuestion:
    """A question ready for the reader: token ids, and its passages (training: positives and negatives apart)."""

    question: str
    answers: list[str]
    question_ids: list[int]
    passages: list[PassageRef] = field(default_factory=list)  # prediction: retrieval order
    positives: list[PassageRef] = field(default_factory=list)  # training
    negatives: list[PassageRef] = field(default_factory=list)  # training


@dataclass
class ReaderData:
    """Preprocessed results: the passage table and the questions referring to it."""

    passages: list[Passage]
    questions: list[PreparedQuestion]
    settings: PreprocessSettings
    stats: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, "settings": dataclasses.asdict(self.settings), "stats": self.stats,
                "passages": [dataclasses.asdict(p) for p in self.passages],
                "questions": [dataclasses.asdict(q) for q in self.questions]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ReaderData":
        def ref(raw: dict) -> PassageRef:
            return PassageRef(**raw)

        questions = [PreparedQuestion(question=q["question"], answers=q["answers"], question_ids=q["question_ids"],
                                      passages=[ref(r) for r in q["passages"]],
                                      positives=[ref(r) for r in q["positives"]],
                                      negatives=[ref(r) for r in q["negatives"]]) for q in data["questions"]]
        return cls(passages=[Passage(**p) for p in data["passages"]], questions=questions,
                   settings=PreprocessSettings(**data["settings"]), stats=data.get("stats", {}))


# ------------------------------------------------------------------------------------------ sequences
_TEMPLATES: dict[int, tuple[Any, tuple[list[int], list[int], list[int]]]] = {}


def pair_template(tokenizer: Any) -> tuple[list[int], list[int], list[int]]:
    """The special tokens the tokenizer puts before, between and after a text pair (``[CLS]``, ``[SEP]``,
    ``[SEP]`` for BERT), found by encoding a known pair once. Why not ``build_inputs_with_special_tokens``:
    tokenizers-backed tokenizers of recent transformers versions do not all have it."""
    cached = _TEMPLATES.get(id(tokenizer))
    if cached is not None and cached[0] is tokenizer:
        return cached[1]
    first = tokenizer("a", add_special_tokens=False)["input_ids"]
    second = tokenizer("b", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", "b")["input_ids"]
    for i in range(len(full)):
        if full[i:i + len(first)] != first:
            continue
        for j in range(i + len(first), len(full)):
            if full[j:j + len(second)] == second:
                template = (full[:i], full[i + len(first):j], full[j + len(second):])
                _TEMPLATES[id(tokenizer)] = (tokenizer, template)
                return template
    raise ConfigError(f"cannot find how {type(tokenizer).__name__} joins a text pair; the reader needs a "
                      "tokenizer with a pair template (BERT, RoBERTa, ...).")


def question_title_ids(tokenizer: Any, question_ids: Sequence[int], title_ids: Sequence[int]) -> list[int]:
    """``[CLS] question [SEP] title [SEP]`` (the tokenizer's own pair template)."""
    before, between, after = pair_template(tokenizer)
    return [*before, *question_ids, *between, *title_ids, *after]


def build_sequence(tokenizer: Any, question_ids: Sequence[int], passage: Passage,
                   sequence_length: int) -> tuple[list[int], int, int]:
    """``(input_ids, text_start, text_count)``: the reader's input for one passage, truncated to
    ``sequence_length``; passage text tokens are ``input_ids[text_start : text_start + text_count]``."""
    prefix = question_title_ids(tokenizer, question_ids, passage.title_ids)
    ids = (prefix + passage.text_ids)[:sequence_length]
    text_start = min(len(prefix), len(ids))
    return ids, text_start, len(ids) - text_start


def text_window(tokenizer: Any, question_ids: Sequence[int], passage: Passage, sequence_length: int) -> int:
    """How many text tokens of ``passage`` fit after the question and title."""
    prefix = len(question_title_ids(tokenizer, question_ids, passage.title_ids))
    return max(0, min(len(passage.text_ids), sequence_length - prefix))


# --------------------------------------------------------------------------------------- answer spans
def find_answer_spans(passage: Passage, answers: Sequence[str], window: Optional[int] = None) -> list[list[int]]:
    """Inclusive text-token spans ``[start, end]`` of every occurrence of an answer in the passage text that
    starts and ends on token boundaries (case-insensitive), ending before ``window`` tokens; sorted, unique."""
    starts = {offset[0]: i for i, offset in reversed(list(enumerate(passage.offsets)))}
    ends = {offset[1]: i for i, offset in enumerate(passage.offsets)}
    limit = len(passage.text_ids) if window is None else window
    spans = set()
    for answer in answers:
        answer = answer.strip()
        if not answer:
            continue
        for match in re.finditer(re.escape(answer), passage.text, flags=re.IGNORECASE):
            start, end = starts.get(match.start()), ends.get(match.end())
            if start is not None and end is not None and start <= end < limit:
                spans.add((start, end))
    return [list(span) for span in sorted(spans)]


# ------------------------------------------------------------------------------------------- building
class _PassageTable:
    """Distinct passages (by id, title and text) and the index of each, tokenised in bulk at the end."""

    def __init__(self) -> None:
        self.index: dict[tuple[str, str, str], int] = {}
        self.items: list[Context] = []

    def add(self, ctx: Context) -> int:
        key = (ctx.id, ctx.title, ctx.text)
        if key not in self.index:
            self.index[key] = len(self.items)
            self.items.append(ctx)
        return self.index[key]

    def tokenize(self, tokenizer: Any, batch: int = 1024, show_progress: bool = True) -> list[Passage]:
        passages: list[Passage] = []
        for lo in tqdm(range(0, len(self.items), batch), desc="tokenize passages", unit="batch",
                       disable=not show_progress):
            chunk = self.items[lo:lo + batch]
            # verbose=False: passages longer than the model's limit are expected (truncated per sequence later)
            texts = tokenizer([c.text for c in chunk], add_special_tokens=False, return_offsets_mapping=True,
                              verbose=False)
            titles = tokenizer([c.title for c in chunk], add_special_tokens=False)
            for j, ctx in enumerate(chunk):
                words = texts.word_ids(j)
                passages.append(Passage(id=ctx.id, title=ctx.title, text=ctx.text,
                                        title_ids=titles["input_ids"][j], text_ids=texts["input_ids"][j],
                                        offsets=[list(o) for o in texts["offset_mapping"][j]],
                                        words=[w if w is not None else -1 for w in words]))
        return passages


def check_fast_tokenizer(tokenizer: Any) -> None:
    """The reader needs character offsets (to find and decode answers), which only fast tokenizers give."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"the reader needs a fast tokenizer (offset mappings); {type(tokenizer).__name__} is "
                          "not one. Save the model with a tokenizer.json (AutoTokenizer use_fast=True).")


def prepare(questions: Sequence[ReaderQuestion], tokenizer: Any, settings: PreprocessSettings,
            gold: Optional[dict[str, Context]] = None, show_progress: bool = True) -> ReaderData:
    """Tokenise and select passages for ``questions`` (see the module docstring for the rules)."""
    check_fast_tokenizer(tokenizer)
    if settings.max_questions:
        questions = questions[:settings.max_questions]
    table = _PassageTable()
    plans: list[tuple[ReaderQuestion, list[tuple[int, Context]], Optional[int]]] = []
    for item in questions:
        if settings.is_train:
            chosen = [c for c in item.ctxs if c.has_answer][:max(settings.max_positives * 4, 50)] \
                + [c for c in item.ctxs if not c.has_answer][:settings.max_negatives]
        else:
            chosen = item.ctxs[:settings.max_passages] if settings.max_passages else item.ctxs
        refs = [(table.add(c), c) for c in chosen]
        gold_index = None
        if settings.is_train and gold is not None and item.question in gold:
            gold_index = table.add(gold[item.question])
        plans.append((item, refs, gold_index))
    passages = table.tokenize(tokenizer, show_progress=show_progress)
    question_ids = tokenizer([p[0].question for p in plans], add_special_tokens=False)["input_ids"] if plans else []
    prepared, dropped, spans_found = [], 0, 0
    for (item, refs, gold_index), q_ids in zip(plans, question_ids):
        def make_ref(index: int, ctx: Context, with_spans: bool) -> PassageRef:
            spans = find_answer_spans(passages[index], item.answers,
                                      text_window(tokenizer, q_ids, passages[index], settings.sequence_length)) \
                if with_spans else []
            return PassageRef(passage=index, score=ctx.score, has_answer=ctx.has_answer, spans=spans)

        question = PreparedQuestion(question=item.question, answers=item.answers, question_ids=q_ids)
        if not settings.is_train:
            question.passages = [make_ref(i, c, with_spans=True) for i, c in refs]
        else:
            if gold_index is not None:
                gold_ref = make_ref(gold_index, table.items[gold_index], with_spans=True)
                question.positives = [gold_ref] if gold_ref.spans else []
                gold_id = table.items[gold_index].id
                question.negatives = [make_ref(i, c, False) for i, c in refs if not c.has_answer and c.id != gold_id]
            else:
                candidates = [make_ref(i, c, with_spans=True) for i, c in refs if c.has_answer]
                question.positives = [r for r in candidates if r.spans][:settings.max_positives]
                question.negatives = [make_ref(i, c, False) for i, c in refs if not c.has_answer]
            question.negatives = question.negatives[:settings.max_negatives]
            if not question.positives:
                dropped += 1
                continue
            spans_found += sum(len(r.spans) for r in question.positives)
        prepared.append(question)
    stats = {"questions_in": len(questions), "questions_kept": len(prepared), "questions_without_positive": dropped,
             "passages": len(passages), "answer_spans": spans_found}
    if settings.is_train and dropped:
        logger.warning("%d of %d questions have no passage with a locatable answer span and are left out of training.",
                       dropped, len(questions))
    return ReaderData(passages=passages, questions=prepared, settings=settings, stats=stats)


# ---------------------------------------------------------------------------------------------- cache
def cache_key(results_path: str | Path, tokenizer: Any, settings: PreprocessSettings,
              gold_path: Optional[str | Path] = None) -> str:
    """Hash of everything that changes the preprocessed data (see the module docstring)."""
    from densekit.modeling.encoding_spec import tokenizer_fingerprint

    return fingerprint("reader-preprocess", FORMAT_VERSION, sha256_file(results_path),
                       sha256_file(gold_path) if gold_path else None, tokenizer_fingerprint(tokenizer),
                       dataclasses.asdict(settings))


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_cached(entry: Path, key: str) -> Optional[ReaderData]:
    """The entry's data if its manifest names ``key`` and the data file matches its checksum; else None."""
    manifest_path, data_path = entry / "manifest.json", entry / "data.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        raw = data_path.read_bytes()
    except (OSError, ValueError):
        return None
    if manifest.get("key") != key or manifest.get("format") != FORMAT_VERSION or \
            manifest.get("sha256") != _sha256_bytes(raw):
        logger.warning("reader cache entry %s does not match its manifest; it is rebuilt.", entry)
        return None
    return ReaderData.from_json(json.loads(raw))


def preprocess(results_path: str | Path, tokenizer: Any, settings: PreprocessSettings, *,
               cache_dir: Optional[str | Path] = None, gold_path: Optional[str | Path] = None,
               show_progress: bool = True) -> tuple[ReaderData, bool]:
    """``(data, reused)``: the preprocessed results file, from the cache when a valid entry exists.

    Without ``cache_dir`` nothing is cached. The entry is ``<cache_dir>/<key>/`` with ``data.json`` and,
    written last, ``manifest.json`` (key, format, SHA-256 of data.json).
    """
    check_fast_tokenizer(tokenizer)
    results_path = Path(results_path)
    if not results_path.is_file():
        raise InputError("results file not found.", path=results_path, fix="give the JSON written by the retriever")
    entry = key = None
    if cache_dir is not None:
        key = cache_key(results_path, tokenizer, settings, gold_path)
        entry = Path(cache_dir) / key
        cached = load_cached(entry, key)
        if cached is not None:
            logger.info("reader data: reusing %s (%d questions)", entry, len(cached.questions))
            return cached, True
    gold = read_gold_passages(gold_path) if gold_path else None
    data = prepare(read_results(results_path), tokenizer, settings, gold=gold, show_progress=show_progress)
    if entry is not None:
        raw = json.dumps(data.to_json(), ensure_ascii=False).encode("utf-8")
        with atomic_write(entry / "data.json", "wb") as handle:
            handle.write(raw)
        manifest = {"key": key, "format": FORMAT_VERSION, "sha256": _sha256_bytes(raw),
                    "results_file": str(results_path), "gold_passages": str(gold_path) if gold_path else None,
                    "settings": dataclasses.asdict(settings), "stats": data.stats}
        with atomic_write(entry / "manifest.json") as handle:
            json.dump(manifest, handle, indent=1)
        logger.info("reader data: wrote %s (%s)", entry, data.stats)
    return data, False
