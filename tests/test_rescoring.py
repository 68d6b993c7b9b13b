"""Teacher rescoring: exact cross-encoder / bi-encoder scores, cache reuse, filters, bad inputs, KL targets."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from densekit.data.data_args import DataArguments
from densekit.data.formats import read_qrels
from densekit.data.qrels import MaterializedQRelConfig
from densekit.errors import ConfigError, InputError
from densekit.evaluation import rescoring
from densekit.evaluation.rescoring import (DROP_ABOVE, DROP_MARGIN, KEPT, FilterSettings, RescoreSettings,
                                           filter_negatives, rescore)
from tests.conftest import minilm_path
from tests.helpers import write_beir

# each query: its two judged documents (topic-0 positive, topic-1 positive) and candidates from other topics
CANDIDATES = {
    "q-cats": ["dogs-0", "cats-2", "cats-1", "rain-1"],  # cats-1 is a judged positive: scored as one
    "q-dogs": ["cats-0", "dogs-2", "sun-0"],
    "q-rain": ["sun-1", "rain-2"],
}


def build_cross_encoder(directory: Path, *, num_labels: int = 1, seed: int = 0) -> Path:
    """A randomly initialised 2-layer BertForSequenceClassification with the MiniLM tokenizer (offline), whose
    scores differ by whole units between pairs."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, num_labels=num_labels, initializer_range=0.5)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    with torch.no_grad():  # spread the scores (a near-constant teacher would make the checks vacuous)
        model.classifier.weight.mul_(10.0)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_candidates(path: Path, candidates=CANDIDATES) -> Path:
    """mined_qrels.tsv layout: header, query-id, corpus-id, retriever score (best first)."""
    lines = ["query-id\tcorpus-id\tscore"]
    for qid, docs in candidates.items():
        lines += [f"{qid}\t{did}\t{0.9 - 0.1 * rank}" for rank, did in enumerate(docs)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory) -> Path:
    return build_cross_encoder(tmp_path_factory.mktemp("cross_encoder"))


@pytest.fixture
def beir(tmp_path) -> Path:
    return write_beir(tmp_path / "beir", split="train")


def stores(beir: Path):
    from densekit.data.datasets import MultiLevelDataset

    dataset = MultiLevelDataset(DataArguments(), MaterializedQRelConfig(
        qrel_path=beir / "qrels" / "train.tsv", corpus_path=beir / "corpus.jsonl", query_path=beir / "queries.jsonl"))
    return dataset.queries, dataset.corpus, dataset.qrels


def run_rescore(teacher, beir, out, candidates, **kw):
    queries, corpus, qrels = stores(beir)
    settings = RescoreSettings(teacher=str(teacher), candidates=[str(candidates)], output_dir=str(out),
                               progress=False, **kw)
    return rescore(settings, queries, corpus, qrels)


def direct_scores(teacher: Path, beir: Path, pairs, max_length: int, num_labels: int = 1) -> list[float]:
    """One unbatched, unpadded forward per pair: the reference the batched scores must equal."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(teacher))
    model = AutoModelForSequenceClassification.from_pretrained(str(teacher)).eval()
    corpus = {d["_id"]: d for d in map(json.loads, (beir / "corpus.jsonl").read_text().splitlines())}
    queries = {d["_id"]: d["text"] for d in map(json.loads, (beir / "queries.jsonl").read_text().splitlines())}
    out = []
    with torch.no_grad():
        for qid, did in pairs:
            doc = corpus[did]
            inputs = tokenizer(queries[qid], f"{doc['title']} {doc['text']}", truncation=True,
                               max_length=max_length, return_tensors="pt")
            logits = model(**inputs).logits[0]
            out.append(float(logits[0] if num_labels == 1 else logits[1] - logits[0]))
    return out


def score_list(path: Path) -> list[tuple[str, str, float]]:
    return [(q, d, s) for q, docs in read_qrels(path).items() for d, s in docs.items()]


# ------------------------------------------------------------------------------------------ scores
@pytest.mark.parametrize("num_labels", [1, 2])
def test_cross_encoder_scores_equal_direct_forward(tmp_path, beir, num_labels):
    teacher = build_cross_encoder(tmp_path / f"ce{num_labels}", num_labels=num_labels) if num_labels == 2 else None
    teacher = teacher or build_cross_encoder(tmp_path / "ce1")
    # max_length 24 truncates some pairs, so truncation must agree too
    info = run_rescore(teacher, beir, tmp_path / "out", write_candidates(tmp_path / "c.tsv"), batch_size=3,
                       cache_block_size=5, max_length=24)
    scored = score_list(tmp_path / "out" / "teacher_scores.tsv")
    expected = direct_scores(teacher, beir, [(q, d) for q, d, _ in scored], max_length=24, num_labels=num_labels)
    np.testing.assert_allclose([s for _, _, s in scored], expected, atol=1e-5, rtol=0)
    # positives first (cats-1 once, as a positive), then the candidates in file order
    assert [d for q, d, _ in scored if q == "q-cats"] == ["cats-0", "cats-1", "dogs-0", "cats-2", "rain-1"]
    counts = info["counts"]
    assert (counts["pairs"], counts["positives"], counts["negatives"]) == (len(scored), 6, 8)
    assert info["teacher"]["kind"] == "cross-encoder"


def test_cache_reuse_resume_and_invalidation(tmp_path, beir, monkeypatch):
    teacher = build_cross_encoder(tmp_path / "ce")
    candidates = write_candidates(tmp_path / "c.tsv")
    kw = dict(encoding_cache_dir=str(tmp_path / "cache"), cache_block_size=4, batch_size=2)
    # an interrupted run: the second block fails; the first block stays in the cache
    real = rescoring.CrossEncoderTeacher.score
    calls = []

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(rescoring.CrossEncoderTeacher, "score", failing)
    with pytest.raises(KeyboardInterrupt):
        run_rescore(teacher, beir, tmp_path / "a", candidates, **kw)
    monkeypatch.setattr(rescoring.CrossEncoderTeacher, "score", real)
    resumed = run_rescore(teacher, beir, tmp_path / "a", candidates, **kw)
    n = resumed["counts"]["pairs"]
    assert resumed["counts"]["computed"] == n - 4  # the finished block was reused
    again = run_rescore(teacher, beir, tmp_path / "b", candidates, **kw)
    assert again["counts"]["computed"] == 0
    assert (tmp_path / "a" / "teacher_scores.tsv").read_bytes() == (tmp_path / "b" / "teacher_scores.tsv").read_bytes()
    build_cross_encoder(teacher, seed=1)  # new weights in the same folder
    changed = run_rescore(teacher, beir, tmp_path / "c", candidates, **kw)
    assert changed["counts"]["computed"] == n
    assert changed["teacher"]["weights"] != again["teacher"]["weights"]


# ----------------------------------------------------------------------------------------- filters
def test_filter_rules_by_hand():
    # positives score 2.0 and 3.0: the reference is the lowest, 2.0
    scores = [3.5, 2.5, 1.9, 1.4, 0.2]
    assert filter_negatives(scores, [2.0, 3.0], FilterSettings(drop_above=3.0)) == [DROP_ABOVE] + [KEPT] * 4
    assert filter_negatives(scores, [2.0, 3.0], FilterSettings(drop_margin=0.0)) == [DROP_MARGIN] * 2 + [KEPT] * 3
    # margin 0.5: dropped above 2.0 - 0.5 = 1.5; drop_above is tried first
    assert filter_negatives(scores, [2.0, 3.0], FilterSettings(drop_above=3.0, drop_margin=0.5)) == \
        [DROP_ABOVE, DROP_MARGIN, DROP_MARGIN, KEPT, KEPT]
    assert filter_negatives(scores, [], FilterSettings(drop_margin=0.5)) == [KEPT] * 5  # no positive: no reference
    with pytest.raises(ConfigError):
        FilterSettings(drop_above=float("nan"))


def test_filters_keep_and_drop_the_hand_checked_pairs(tmp_path, beir, cross_encoder):
    candidates = write_candidates(tmp_path / "c.tsv")
    base = run_rescore(cross_encoder, beir, tmp_path / "all", candidates)
    teacher = {(q, d): s for q, d, s in score_list(tmp_path / "all" / "teacher_scores.tsv")}
    margin, above = 1.0, 10.0  # the teacher's scores spread over about -70 .. 20: every rule applies somewhere
    expected_kept, expected = [], {KEPT: 0, DROP_ABOVE: 0, DROP_MARGIN: 0}
    for qid, docs in CANDIDATES.items():
        reference = min(teacher[(qid, f"{qid[2:]}-{n}")] for n in (0, 1))
        for did in docs:
            if did in (f"{qid[2:]}-0", f"{qid[2:]}-1"):
                continue  # judged positive: never a negative
            s = teacher[(qid, did)]
            rule = DROP_ABOVE if s > above else DROP_MARGIN if s > reference - margin else KEPT
            expected[rule] += 1
            if rule == KEPT:
                expected_kept.append((qid, did))
    info = run_rescore(cross_encoder, beir, tmp_path / "f", candidates, drop_above=above, drop_margin=margin)
    counts = info["counts"]
    assert (counts["kept"], counts["dropped_drop_above"], counts["dropped_drop_margin"]) == \
        (expected[KEPT], expected[DROP_ABOVE], expected[DROP_MARGIN])
    assert min(counts["dropped_drop_above"], counts["dropped_drop_margin"], counts["kept"]) > 0
    kept = read_qrels(tmp_path / "f" / "filtered_negatives.tsv")
    assert [(q, d) for q, docs in kept.items() for d in docs] == expected_kept
    # the kept negatives carry the candidate file's score (mined_qrels.tsv layout)
    for q, docs in kept.items():
        for d, s in docs.items():
            assert s == pytest.approx(0.9 - 0.1 * CANDIDATES[q].index(d))
    filtered = read_qrels(tmp_path / "f" / "filtered_teacher_scores.tsv")
    assert sum(len(d) for d in filtered.values()) == counts["positives"] + counts["kept"]
    assert base["counts"]["kept"] == base["counts"]["negatives"]  # no rule: everything kept


# -------------------------------------------------------------------------------------- bi-encoder
def test_bi_encoder_teacher_equals_evaluator_search_scores(tmp_path, beir, tiny_model_dir):
    from transformers import AutoTokenizer

    from densekit.data.collator import RetrievalCollator
    from densekit.data.datasets import MultiLevelDataset
    from densekit.evaluation.evaluation_args import EvaluationArguments
    from densekit.evaluation.evaluator import RetrievalEvaluator
    from densekit.modeling.retriever import BiEncoderRetriever

    info = run_rescore(tiny_model_dir, beir, tmp_path / "out", write_candidates(tmp_path / "c.tsv"),
                       encoding_cache_dir=str(tmp_path / "cache"))
    assert info["teacher"]["kind"] == "bi-encoder"
    model = BiEncoderRetriever.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    dataset = MultiLevelDataset(DataArguments(), MaterializedQRelConfig(
        qrel_path=beir / "qrels" / "train.tsv", corpus_path=beir / "corpus.jsonl", query_path=beir / "queries.jsonl"),
        format_query=model.format_query, format_passage=model.format_passage)
    evaluator = RetrievalEvaluator(EvaluationArguments(output_dir=str(tmp_path / "eval"), disable_tqdm=True),
                                   model=model, tokenizer=tokenizer, eval_dataset=dataset,
                                   data_collator=RetrievalCollator(DataArguments(), tokenizer))
    result = evaluator.search(topk=len(dataset.corpus))
    search = {(q, result.doc_ids[int(i)]): float(s) for row, q in enumerate(result.query_ids)
              for i, s in zip(result.indices[row], result.scores[row])}
    scored = score_list(tmp_path / "out" / "teacher_scores.tsv")
    np.testing.assert_allclose([s for _, _, s in scored], [search[(q, d)] for q, d, _ in scored], atol=1e-5, rtol=0)
    again = run_rescore(tiny_model_dir, beir, tmp_path / "out2", write_candidates(tmp_path / "c.tsv"),
                        encoding_cache_dir=str(tmp_path / "cache"))
    assert again["counts"]["computed"] == 0  # vectors reused from the embedding cache


# -------------------------------------------------------------------------------------- bad input
def test_unknown_candidate_id_names_file_and_line(tmp_path, beir, cross_encoder):
    bad = write_candidates(tmp_path / "c.tsv", {"q-cats": ["dogs-0", "nope-7"]})
    with pytest.raises(InputError) as err:
        run_rescore(cross_encoder, beir, tmp_path / "out", bad)
    assert err.value.path == str(bad) and err.value.line == 3 and "'nope-7'" in str(err.value)
    bad_query = tmp_path / "run.trec"
    bad_query.write_text("q-cats Q0 dogs-0 1 0.5 t\nq-x Q0 dogs-1 1 0.4 t\n")
    with pytest.raises(InputError) as err:
        run_rescore(cross_encoder, beir, tmp_path / "out", bad_query)
    assert err.value.line == 2 and "query id 'q-x'" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_teacher_without_config_and_bad_options_are_config_errors(tmp_path, beir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        run_rescore(tmp_path / "empty", beir, tmp_path / "out", write_candidates(tmp_path / "c.tsv"))
    with pytest.raises(ConfigError, match="include_positives"):
        RescoreSettings(teacher="t", candidates=["c"], output_dir="o", include_positives=False, drop_margin=0.1)


def test_run_candidates_keep_rank_order(tmp_path, beir):
    queries, corpus, _ = stores(beir)
    run = tmp_path / "mined_run.trec"
    run.write_text("q-cats Q0 rain-0 7 0.1 t\nq-cats Q0 dogs-0 2 0.8 t\n")
    assert rescoring.read_candidates([run], queries, corpus) == {"q-cats": [("dogs-0", 0.8), ("rain-0", 0.1)]}


# ------------------------------------------------------------------------------ teacher -> KL loss
def test_teacher_scores_are_the_kl_and_margin_mse_targets(tmp_path, beir, cross_encoder, tiny_model_dir):
    from transformers import AutoTokenizer

    from densekit.data.collator import RetrievalCollator
    from densekit.data.datasets import MultiLevelDataset
    from densekit.modeling.model_args import ModelArguments
    from densekit.modeling.retriever import BiEncoderRetriever

    run_rescore(cross_encoder, beir, tmp_path / "out", write_candidates(tmp_path / "c.tsv"))
    scores_file = tmp_path / "out" / "teacher_scores.tsv"
    teacher = read_qrels(scores_file)
    data_args = DataArguments(group_size=4, query_max_len=16, passage_max_len=32)
    dataset = MultiLevelDataset(data_args, MaterializedQRelConfig(
        qrel_path=scores_file, corpus_path=beir / "corpus.jsonl", query_path=beir / "queries.jsonl"))
    assert dataset.query_ids == list(CANDIDATES)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    batch = RetrievalCollator(data_args, tokenizer)([dataset[i] for i in range(len(dataset))])
    # each group: the query's 4 highest teacher scores, highest first, exactly as written
    expected = [sorted(teacher[q].values(), reverse=True)[:4] for q in dataset.query_ids]
    assert batch["label"].tolist() == torch.tensor(expected, dtype=torch.float32).tolist()
    for name in ("kl", "margin_mse"):
        model = BiEncoderRetriever.from_model_args(ModelArguments(
            model_name_or_path=str(tiny_model_dir), loss=name, temperature=0.5))
        model.train()
        out = model(query=batch["query"], passage=batch["passage"], label=batch["label"])
        with torch.no_grad():
            q = model.encode_query(batch["query"])
            p = model.encode_passage(batch["passage"]).reshape(len(expected), 4, -1)
            student = torch.einsum("qd,qgd->qg", q, p)
        target = torch.tensor(expected, dtype=torch.float32)
        if name == "kl":  # target distribution = softmax(teacher scores / teacher_temperature 1.0)
            reference = F.kl_div(F.log_softmax(student / 0.5, 1), F.log_softmax(target, 1), log_target=True,
                                 reduction="batchmean")
        else:  # margins to the first (highest teacher-scored) passage of each group
            reference = (((student[:, :1] - student[:, 1:]) - (target[:, :1] - target[:, 1:])) ** 2).mean()
        assert float(out.loss.detach()) == pytest.approx(float(reference), abs=1e-5)
        out.loss.backward()  # one training step's gradient flows from the teacher targets
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


# ------------------------------------------------------------------------------------------ torchrun
def _rescore_worker(rank, init_file, teacher, beir, out, candidates, cache):
    import torch.distributed as dist

    torch.set_num_threads(1)  # first: a forked child must not touch the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        run_rescore(teacher, beir, out, candidates, batch_size=2, cache_block_size=3, encoding_cache_dir=str(cache),
                    drop_margin=1.0)
    finally:
        dist.destroy_process_group()


def test_two_processes_write_what_one_process_writes(tmp_path, beir, cross_encoder):
    import torch.multiprocessing as mp

    candidates = write_candidates(tmp_path / "c.tsv")
    run_rescore(cross_encoder, beir, tmp_path / "one", candidates, drop_margin=1.0)
    mp.start_processes(_rescore_worker, args=(tmp_path / "init", cross_encoder, beir, tmp_path / "two", candidates,
                                              tmp_path / "cache"), nprocs=2, start_method="fork", join=True)
    one, two = score_list(tmp_path / "one" / "teacher_scores.tsv"), score_list(tmp_path / "two" / "teacher_scores.tsv")
    assert [(q, d) for q, d, _ in one] == [(q, d) for q, d, _ in two]
    np.testing.assert_allclose([s for *_, s in one], [s for *_, s in two], atol=1e-5, rtol=0)
    kept = [read_qrels(tmp_path / name / "filtered_negatives.tsv") for name in ("one", "two")]
    assert kept[0] == kept[1]
    info = json.loads((tmp_path / "two" / "rescore.json").read_text())
    assert info["counts"]["processes"] == 2 and info["counts"]["computed"] == info["counts"]["pairs"]
    entries = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert entries == ["teacher_scores.rank0of2", "teacher_scores.rank1of2"]  # one cache entry per shard
