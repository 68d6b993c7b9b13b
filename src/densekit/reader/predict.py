"""Reader prediction: read each question's top passages once, answer for every top-k setting, score Exact Match.

For a question and a setting ``k`` (``--eval_top_docs``), the answer comes from the passage with the highest
selection logit among the first ``k`` retrieved passages, and is the best span in it (:mod:`densekit.reader.spans`),
as in DPR's ``train_reader.py`` prediction. Why read once: the passages of a smaller ``k`` are a prefix of a
larger one's, so one forward pass over the first ``max(k)`` passages (at most ``passages_per_question_predict``)
serves every setting. Exact Match is SQuAD's (densekit.qa.answers.exact_match), token F1 is reported beside it.

Outputs (``output_dir``): ``predictions.json`` (per question: question, answers, and per k the prediction, its
passage id and rank, the selection logit and span score, EM; and every passage read, with its selection logit,
best span and span score, to see why a passage won), ``metrics.json`` (EM@k and F1@k under
``aggregate``, as in every densekit metrics.json, then counts and run info) and ``report.md``.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from tqdm.auto import tqdm

from densekit.errors import ConfigError
from densekit.files import atomic_write
from densekit.qa.answers import exact_match, f1_score
from densekit.reader.model import ReaderModel
from densekit.reader.preprocess import ReaderData, build_sequence
from densekit.reader.spans import best_span, span_text

logger = logging.getLogger(__name__)


@dataclass
class PassageReading:
    """What the reader made of one passage of a question: its selection logit and best span."""

    rank: int  # position in the question's retrieved list (0-based)
    passage_id: str
    relevance: float
    span_score: float
    text: str


def read_passages(model: ReaderModel, tokenizer: Any, data: ReaderData, *, batch_size: int = 32,
                  max_answer_length: int = 10, max_passages: Optional[int] = None,
                  device: Optional[torch.device | str] = None, show_progress: bool = True) -> list[list[PassageReading]]:
    """For every question, a :class:`PassageReading` per passage (the first ``max_passages``), in retrieval order."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    pairs: list[tuple[int, int]] = [(qi, pi) for qi, q in enumerate(data.questions)
                                    for pi in range(len(q.passages[:max_passages]))]
    readings: list[list[PassageReading]] = [[] for _ in data.questions]
    was_training = model.training
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    try:
        with torch.inference_mode(), tqdm(total=len(pairs), desc="read passages", unit="passage",
                                          disable=not show_progress) as bar:
            for lo in range(0, len(pairs), batch_size):
                chunk = pairs[lo:lo + batch_size]
                built = []
                for qi, pi in chunk:
                    question = data.questions[qi]
                    passage = data.passages[question.passages[pi].passage]
                    built.append(build_sequence(tokenizer, question.question_ids, passage, data.settings.sequence_length))
                length = max(len(ids) for ids, _, _ in built)
                input_ids = torch.full((len(built), length), pad, dtype=torch.long)
                attention = torch.zeros((len(built), length), dtype=torch.long)
                for row, (ids, _, _) in enumerate(built):
                    input_ids[row, :len(ids)] = torch.tensor(ids)
                    attention[row, :len(ids)] = 1
                out = model(input_ids=input_ids.to(device), attention_mask=attention.to(device))
                starts, ends = out["start_logits"].float().cpu(), out["end_logits"].float().cpu()
                relevance = out["relevance_logits"].float().cpu()
                for row, ((qi, pi), (_, text_start, text_count)) in enumerate(zip(chunk, built)):
                    question = data.questions[qi]
                    passage = data.passages[question.passages[pi].passage]
                    span = best_span(starts[row], ends[row], text_start, text_count, max_answer_length)
                    text = span_text(passage.text, passage.offsets, passage.words, span.start, span.end) if span else ""
                    readings[qi].append(PassageReading(rank=pi, passage_id=passage.id,
                                                       relevance=float(relevance[row]),
                                                       span_score=span.score if span else float("-inf"), text=text))
                bar.update(len(chunk))
    finally:
        model.train(was_training)
    return readings


def finite(value: float) -> Optional[float]:
    """``value``, or None for the -inf of a passage without a span (JSON has no infinity)."""
    return value if math.isfinite(value) else None


def choose(readings: Sequence[PassageReading], k: int) -> Optional[PassageReading]:
    """The reading with the highest selection logit among the first ``k`` passages (earliest on ties)."""
    best = None
    for reading in readings[:k]:
        if best is None or reading.relevance > best.relevance:
            best = reading
    return best


def score_predictions(data: ReaderData, readings: Sequence[Sequence[PassageReading]],
                      top_docs: Sequence[int]) -> tuple[list[dict], dict[str, Any]]:
    """``(predictions, metrics)``: per question and k the chosen answer; EM and F1 per k over the questions
    that have answers (questions with an empty answer list are predicted but not scored)."""
    if not top_docs or any(k < 1 for k in top_docs):
        raise ConfigError(f"--eval_top_docs needs positive values, got {list(top_docs)}.")
    top_docs = sorted(set(top_docs))
    predictions, em = [], {k: 0.0 for k in top_docs}
    f1 = {k: 0.0 for k in top_docs}
    scored = 0
    for question, question_readings in zip(data.questions, readings):
        entry: dict[str, Any] = {"question": question.question, "answers": question.answers, "predictions": {},
                                 "passages": [{"rank": r.rank, "passage_id": r.passage_id, "relevance": r.relevance,
                                               "span_score": finite(r.span_score), "prediction": r.text}
                                              for r in question_readings]}
        has_answers = bool(question.answers)
        scored += has_answers
        for k in top_docs:
            chosen = choose(question_readings, k)
            text = chosen.text if chosen else ""
            hit = exact_match(text, question.answers) if has_answers else None
            entry["predictions"][str(k)] = {
                "prediction": text, "passage_id": chosen.passage_id if chosen else None,
                "passage_rank": chosen.rank if chosen else None,
                "relevance": chosen.relevance if chosen else None,
                "span_score": finite(chosen.span_score) if chosen else None, "exact_match": hit}
            if has_answers:
                em[k] += float(hit)
                f1[k] += f1_score(text, question.answers)
        predictions.append(entry)
    available = max((len(r) for r in readings), default=0)
    metrics: dict[str, Any] = {f"EM@{k}": round(em[k] / scored, 6) if scored else None for k in top_docs}
    metrics.update({f"F1@{k}": round(f1[k] / scored, 6) if scored else None for k in top_docs})
    metrics.update({"questions": len(predictions), "questions_scored": scored, "max_passages_read": available})
    if any(k > available for k in top_docs):
        logger.warning("eval_top_docs %s: questions have at most %d passages, so larger k read them all.",
                       [k for k in top_docs if k > available], available)
    return predictions, metrics


def write_outputs(output_dir: str | Path, predictions: list[dict], metrics: dict[str, Any],
                  info: dict[str, Any]) -> None:
    """``predictions.json``, ``metrics.json`` (metrics + run info) and ``report.md``, each written atomically."""
    output_dir = Path(output_dir)
    with atomic_write(output_dir / "predictions.json") as handle:
        json.dump(predictions, handle, ensure_ascii=False, indent=1)
    scores = {name: value for name, value in metrics.items() if name.startswith(("EM@", "F1@"))}
    counts = {name: value for name, value in metrics.items() if name not in scores}
    with atomic_write(output_dir / "metrics.json") as handle:  # "aggregate" as in every densekit metrics.json
        json.dump({"aggregate": scores, **counts, "info": info}, handle, indent=1)
    ks = sorted(int(name.split("@")[1]) for name in metrics if name.startswith("EM@"))
    lines = ["# Reader predictions", "",
             f"Results file: `{info.get('results_file')}`; reader: `{info.get('model')}`; "
             f"{metrics['questions']} questions ({metrics['questions_scored']} with answers).", "",
             "| top docs | Exact Match | F1 |", "| ---: | ---: | ---: |"]
    for k in ks:
        em, f1 = metrics[f"EM@{k}"], metrics[f"F1@{k}"]
        lines.append(f"| {k} | {em:.4f} | {f1:.4f} |" if em is not None else f"| {k} | - | - |")
    lines += ["", "The answer for top docs k is the best span (length <= "
              f"{info.get('max_answer_length')} tokens) in the passage with the highest selection logit among the "
              "first k retrieved passages; Exact Match after SQuAD normalisation."]
    with atomic_write(output_dir / "report.md") as handle:
        handle.write("\n".join(lines) + "\n")


def summary_line(metrics: dict[str, Any], seconds: float) -> str:
    """One line for the end of a run: EM per k, question count and time."""
    ems = ", ".join(f"{name} {value:.4f}" for name, value in metrics.items()
                    if name.startswith("EM@") and value is not None)
    return f"reader: {metrics['questions']} questions, {ems} ({seconds:.0f}s)"


def predict(model: ReaderModel, tokenizer: Any, data: ReaderData, output_dir: str | Path, *,
            top_docs: Sequence[int], max_answer_length: int = 10, batch_size: int = 32,
            passages_per_question_predict: Optional[int] = None, info: Optional[dict[str, Any]] = None,
            show_progress: bool = True) -> dict[str, Any]:
    """Read, answer, score and write (see the module docstring); returns the metrics."""
    started = time.time()
    readings = read_passages(model, tokenizer, data, batch_size=batch_size, max_answer_length=max_answer_length,
                             max_passages=passages_per_question_predict, show_progress=show_progress)
    predictions, metrics = score_predictions(data, readings, top_docs)
    info = {**(info or {}), "max_answer_length": max_answer_length, "sequence_length": data.settings.sequence_length,
            "passages_per_question_predict": passages_per_question_predict, "seconds": round(time.time() - started, 1)}
    write_outputs(output_dir, predictions, metrics, info)
    return metrics
