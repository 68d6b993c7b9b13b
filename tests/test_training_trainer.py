"""RetrievalTrainer / RetrievalTrainingArguments: the seed's training workflow as written, gradient cache
equal to the plain step, checkpoints that reload in densekit and sentence-transformers, epochs, eval
scores for IRMetrics, mixed precision on CPU, and configuration errors."""
from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoTokenizer, TrainerCallback

from densekit import DataArguments, MaterializedQRelConfig, ModelArguments, MultiLevelDataset
from densekit import BiEncoderRetriever, RetrievalCollator
from densekit.data.datasets import BinaryDataset
from densekit.errors import ConfigError
from densekit.training import RetrievalTrainer, RetrievalTrainingArguments

G = 2


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def examples(n=6):
    return [{"query": f"what is thing {i}?", "passage": [f"thing {i} is a kind of object {i}",
                                                         f"unrelated words {i * 3} here"], "label": [1, 0]}
            for i in range(n)]


def train_args(tmp_path, **kw):
    defaults = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=6, max_steps=1,
                    learning_rate=1e-3, save_strategy="no", logging_steps=1, disable_tqdm=True,
                    dataloader_pin_memory=False)
    defaults.update(kw)
    return RetrievalTrainingArguments(**defaults)


def make_trainer(model_dir, tokenizer, args, data=None, eval_data=None, **model_kw):
    model = BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=str(model_dir), **model_kw))
    data_args = DataArguments(group_size=G, query_max_len=16, passage_max_len=16)
    collator = RetrievalCollator(data_args=data_args, tokenizer=tokenizer, append_eos=model.append_eos_token)
    return RetrievalTrainer(args=args, model=model, tokenizer=tokenizer, data_collator=collator,
                            train_dataset=data if data is not None else examples(), eval_dataset=eval_data)


# ------------------------------------------------------------------------------- the seed, as written
def write_seed_files(folder):
    """corpus.jsonl, queries.jsonl, train_qrel.tsv (1 positive + 3 judged negatives per query) and a dev set."""
    topics = ["cats", "dogs", "rain", "sun", "bread", "chess"]
    with open(folder / "corpus.jsonl", "w") as f:
        for t in topics:
            for n in range(3):
                f.write(json.dumps({"_id": f"{t}-{n}", "title": t, "text": f"about {t}, part {n}"}) + "\n")
    with open(folder / "queries.jsonl", "w") as f:
        for t in topics:
            f.write(json.dumps({"_id": f"q-{t}", "text": f"tell me about {t}"}) + "\n")
    with open(folder / "train_qrel.tsv", "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for i, t in enumerate(topics):
            f.write(f"q-{t}\t{t}-0\t1\n")
            for k in (1, 2, 3):
                f.write(f"q-{t}\t{topics[(i + k) % 6]}-1\t0\n")
    with open(folder / "dev_qrel.tsv", "w") as f, open(folder / "dev_qrel_positives.tsv", "w") as pos, \
            open(folder / "dev_mined_negs.tsv", "w") as neg:
        for handle in (f, pos, neg):
            handle.write("query-id\tcorpus-id\tscore\n")
        for i, t in enumerate(topics):
            f.write(f"q-{t}\t{t}-1\t1\nq-{t}\t{topics[(i + 1) % 6]}-2\t0\n")
            pos.write(f"q-{t}\t{t}-1\t1\n")
            neg.write(f"q-{t}\t{topics[(i + 2) % 6]}-2\t1\n")  # mined "negatives" carry a retrieval score


def test_seed_training_workflow_runs_as_written_and_saves(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_seed_files(tmp_path)
    train_args = RetrievalTrainingArguments(output_dir="./my_model", learning_rate=1e-5,
                                            per_device_train_batch_size=3, num_train_epochs=1,
                                            disable_tqdm=True, dataloader_pin_memory=False)
    model_args = ModelArguments(model_name_or_path=str(tiny_model_dir), encoder_class="default", pooling="mean",
                                normalize=False, loss="infonce")
    model = BiEncoderRetriever.from_model_args(args=model_args)
    data_args = DataArguments(dataset_name="msmarco", group_size=4, query_max_len=32, passage_max_len=128)
    pos_conf = MaterializedQRelConfig(qrel_path="train_qrel.tsv", corpus_path="corpus.jsonl",
                                      query_path="queries.jsonl", min_score=1)
    neg_conf = MaterializedQRelConfig(qrel_path="train_qrel.tsv", corpus_path="corpus.jsonl",
                                      query_path="queries.jsonl", max_score=1)
    dataset = BinaryDataset(data_args=data_args, positive_configs=pos_conf, negative_configs=neg_conf,
                            format_query=model.format_query, format_passage=model.format_passage)
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    tokenizer.pad_token_id = tokenizer.eos_token_id
    tokenizer.padding_side = "right"
    data_collator = RetrievalCollator(data_args=data_args, tokenizer=tokenizer, append_eos=model.append_eos_token)
    trainer = RetrievalTrainer(args=train_args, model=model, tokenizer=tokenizer, data_collator=data_collator,
                               train_dataset=dataset)
    result = trainer.train()
    trainer.save_model()
    assert result.global_step == 2 and math.isfinite(result.training_loss)
    assert (tmp_path / "my_model" / "model.safetensors").is_file()
    reloaded = BiEncoderRetriever.from_pretrained("./my_model")
    assert reloaded.encoder.pooling == "mean" and reloaded.encoder.normalize is False


def test_seed_ir_metrics_during_training_block_reports_eval_metrics(tiny_model_dir, tmp_path, monkeypatch):
    from densekit.training.ir_metrics import IRMetrics

    monkeypatch.chdir(tmp_path)
    write_seed_files(tmp_path)
    model_args = ModelArguments(model_name_or_path=str(tiny_model_dir), pooling="mean", loss="infonce")
    model = BiEncoderRetriever.from_model_args(args=model_args)
    data_args = DataArguments(dataset_name="msmarco", group_size=4, query_max_len=32, passage_max_len=128)
    dataset = MultiLevelDataset(data_args=data_args, qrel_config=[
        MaterializedQRelConfig(qrel_path="train_qrel.tsv", corpus_path="corpus.jsonl", query_path="queries.jsonl",
                               min_score=1),
        MaterializedQRelConfig(qrel_path="train_qrel.tsv", corpus_path="corpus.jsonl", query_path="queries.jsonl",
                               max_score=1)], format_query=model.format_query, format_passage=model.format_passage)
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    data_collator = RetrievalCollator(data_args=data_args, tokenizer=tokenizer, append_eos=model.append_eos_token)
    train_args = RetrievalTrainingArguments(
        output_dir="./my_model", learning_rate=1e-5, per_device_train_batch_size=3, max_steps=2,
        disable_tqdm=True, dataloader_pin_memory=False, save_strategy="no",
        batch_eval_metrics=True, label_names=["label"], eval_strategy="steps", eval_steps=1,
    )
    eval_mqrel = [
        MaterializedQRelConfig(qrel_path="dev_qrel_positives.tsv", corpus_path="corpus.jsonl",
                               query_path="queries.jsonl", score_transform=1),
        MaterializedQRelConfig(qrel_path="dev_mined_negs.tsv", corpus_path="corpus.jsonl",
                               query_path="queries.jsonl", score_transform=0),
    ]
    arg_overrides = {"group_size": 100, "passage_selection_strategy": "most_relevant"}
    eval_dataset = MultiLevelDataset(data_args=data_args, format_query=model.format_query,
                                     format_passage=model.format_passage, qrel_config=eval_mqrel,
                                     data_args_overrides=arg_overrides, num_proc=8)
    metric_callback = IRMetrics(k_values=[10, 100])
    trainer = RetrievalTrainer(args=train_args, model=model, tokenizer=tokenizer, data_collator=data_collator,
                               train_dataset=dataset, eval_dataset=eval_dataset, compute_metrics=metric_callback)
    trainer.train(ignore_keys_for_eval=["query", "passage"])
    evals = [log for log in trainer.state.log_history if "eval_loss" in log]
    assert len(evals) == 2
    ndcg = [value for key, value in evals[-1].items() if key.startswith("eval_") and "10" in key.lower()
            and "ndcg" in key.lower()]
    assert ndcg and all(0.0 <= v <= 1.0 for v in ndcg)
    # 2 documents per query (1 relevant): nDCG@10 is 1 or 1/log2(3); the mean must be one of their mixes
    assert 1 / math.log2(3) - 1e-6 <= ndcg[0] <= 1.0 + 1e-6


# --------------------------------------------------------------------------------------- gradient cache
class CaptureGrads(TrainerCallback):
    def __init__(self):
        self.grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("accumulation", [1, 2])
def test_grad_cache_step_gives_the_same_gradients_as_the_plain_step(tiny_model_dir, tokenizer, tmp_path,
                                                                    accumulation, monkeypatch):
    import densekit.training.trainer as trainer_module

    calls = []
    real_step = trainer_module.grad_cache_step
    monkeypatch.setattr(trainer_module, "grad_cache_step", lambda *a, **k: calls.append(k) or real_step(*a, **k))
    grads, losses = [], []
    for cached in (False, True):
        chunks = dict(query_chunk_size=2, passage_chunk_size=4) if cached else {}
        args = train_args(tmp_path, per_device_train_batch_size=6 // accumulation, max_grad_norm=0,
                          gradient_accumulation_steps=accumulation, grad_cache=cached, **chunks)
        trainer = make_trainer(tiny_model_dir, tokenizer, args, temperature=0.2)
        capture = CaptureGrads()
        trainer.add_callback(capture)
        losses.append(trainer.train().training_loss)
        grads.append(capture.grads)
    assert len(calls) == accumulation and calls[0]["query_chunk_size"] == 2
    plain, cached = grads
    assert plain.keys() == cached.keys() and plain
    for name, grad in plain.items():
        assert torch.allclose(cached[name], grad, atol=1e-5), name
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


def test_grad_cache_on_two_cpu_workers_trains_as_on_one(tiny_dropout_model_dir, tokenizer, tmp_path):
    """Dropout on: the trainer seeds it per chunk, so two workers (one chunk per core) and one worker
    draw the same masks and take the same step."""
    from densekit.modeling.seeded_dropout import is_seedable

    grads = []
    for workers in (1, 2):
        args = train_args(tmp_path, grad_cache=True, query_chunk_size=2, passage_chunk_size=4,
                          grad_cache_workers=workers, max_grad_norm=0, seed=3)
        trainer = make_trainer(tiny_dropout_model_dir, tokenizer, args)
        capture = CaptureGrads()
        trainer.add_callback(capture)
        trainer.train()
        assert is_seedable(trainer.model)
        grads.append(capture.grads)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, grad in grads[0].items():
        assert torch.allclose(grads[1][name], grad, atol=1e-5), name
    assert sum(float(g.abs().sum()) for g in grads[0].values()) > 0


def test_grad_cache_workers_without_grad_cache_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="grad_cache=True"):
        train_args(tmp_path, grad_cache_workers=2)


@pytest.mark.parametrize("grad_cache, workers", [(False, None), (True, 1), (True, 2)])
def test_bf16_training_runs_on_cpu(tiny_model_dir, tokenizer, tmp_path, grad_cache, workers):
    chunks = dict(query_chunk_size=3, grad_cache_workers=workers) if grad_cache else {}
    args = train_args(tmp_path, bf16=True, grad_cache=grad_cache, **chunks)
    trainer = make_trainer(tiny_model_dir, tokenizer, args)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    result = trainer.train()
    assert math.isfinite(result.training_loss)
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())


# ------------------------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("pooling, normalize", [("cls", True), ("mean", False)])
def test_saved_checkpoint_reloads_in_densekit_and_sentence_transformers(tiny_model_dir, tokenizer, tmp_path,
                                                                         pooling, normalize):
    from sentence_transformers import SentenceTransformer

    args = train_args(tmp_path, max_steps=2)
    trainer = make_trainer(tiny_model_dir, tokenizer, args, pooling=pooling, normalize=normalize,
                           query_prefix="query: ")
    trainer.train()
    out = tmp_path / "saved"
    trainer.save_model(str(out))
    model = trainer.model.eval()
    texts = ["a first query", "another, longer query text"]
    with torch.no_grad():
        expected = model.encode_query(tokenizer([model.format_query(t) for t in texts], padding=True,
                                                return_tensors="pt"))
        expected_passages = model.encode_passage(tokenizer(texts, padding=True, return_tensors="pt"))
        original = BiEncoderRetriever.from_model_args(ModelArguments(
            model_name_or_path=str(tiny_model_dir), pooling=pooling)).eval().encode_passage(
            tokenizer(texts, padding=True, return_tensors="pt"))
        reloaded = BiEncoderRetriever.from_pretrained(out).eval()
        again = reloaded.encode_query(tokenizer([reloaded.format_query(t) for t in texts], padding=True,
                                                return_tensors="pt"))
    assert torch.allclose(again, expected, atol=1e-5)
    assert not torch.allclose(original, expected_passages, atol=1e-4)  # training changed the weights

    st = SentenceTransformer(str(out), device="cpu")
    st_queries = st.encode(texts, prompt_name="query", convert_to_tensor=True)
    st_passages = st.encode(texts, convert_to_tensor=True)
    assert torch.allclose(st_queries.cpu(), expected, atol=1e-5)
    assert torch.allclose(st_passages.cpu(), expected_passages, atol=1e-5)
    modules = json.loads((out / "modules.json").read_text())
    assert [m["path"] for m in modules][-1] == ("2_Normalize" if normalize else "1_Pooling")


def test_last_token_pooling_saves_without_sentence_transformers_files(tiny_model_dir, tokenizer, tmp_path):
    trainer = make_trainer(tiny_model_dir, tokenizer, train_args(tmp_path), pooling="last_token")
    trainer.save_model(str(tmp_path / "saved"))
    assert (tmp_path / "saved" / "densekit_config.json").is_file()
    assert not (tmp_path / "saved" / "modules.json").exists()
    assert BiEncoderRetriever.from_pretrained(tmp_path / "saved").encoder.pooling == "last_token"


def test_load_best_model_at_end_loads_the_best_checkpoints_weights(tiny_dropout_model_dir, tokenizer, tmp_path):
    """transformers' loader would read the checkpoint into the retriever's state_dict names, match none, and
    keep the last weights (after crashing on warnings); the trainer reads them as saved."""
    from safetensors.torch import load_file

    args = train_args(tmp_path, max_steps=3, eval_strategy="steps", eval_steps=1, save_strategy="steps",
                      save_steps=1, load_best_model_at_end=True, metric_for_best_model="loss",
                      greater_is_better=True)  # the worst loss "wins": an early checkpoint, not the last
    trainer = make_trainer(tiny_dropout_model_dir, tokenizer, args, eval_data=examples())
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None and not best.endswith("checkpoint-3")
    saved = load_file(f"{best}/model.safetensors")
    weights = trainer.model.encoder.model.state_dict()
    assert saved.keys() == weights.keys()
    assert all(torch.equal(saved[name], weights[name]) for name in saved)
    last = load_file(str(tmp_path / "out" / "checkpoint-3" / "model.safetensors"))
    assert any(not torch.equal(last[name], weights[name]) for name in saved)


# ------------------------------------------------------------------------------------- epochs and eval
class EpochRecorder(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items, self.epochs = items, []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_dataset_set_epoch_is_called_at_each_epoch(tiny_model_dir, tokenizer, tmp_path):
    data = EpochRecorder(examples())
    args = train_args(tmp_path, max_steps=-1, num_train_epochs=3)
    make_trainer(tiny_model_dir, tokenizer, args, data=data).train()
    assert sorted(set(data.epochs)) == [0, 1, 2]


def test_prediction_step_returns_loss_group_scores_and_labels(tiny_model_dir, tokenizer, tmp_path):
    trainer = make_trainer(tiny_model_dir, tokenizer, train_args(tmp_path))
    batch = trainer.data_collator(examples(3))
    loss, scores, label = trainer.prediction_step(trainer.model.eval(), batch, prediction_loss_only=False)
    model = trainer.model
    with torch.no_grad():
        out = model(**batch)
    assert scores.shape == (3, G) and torch.equal(label, batch["label"])
    assert torch.allclose(scores, torch.stack([out.logits[i, i * G:(i + 1) * G] for i in range(3)]), atol=1e-6)
    assert torch.allclose(loss, out.loss, atol=1e-6)


def test_eval_batch_without_any_positive_still_gives_scores(tiny_model_dir, tokenizer, tmp_path):
    trainer = make_trainer(tiny_model_dir, tokenizer, train_args(tmp_path))
    batch = trainer.data_collator([dict(ex, label=[0, 0]) for ex in examples(2)])
    loss, scores, _ = trainer.prediction_step(trainer.model.eval(), batch, prediction_loss_only=False)
    assert loss is None and scores.shape == (2, G)


# ------------------------------------------------------------------------------------------ bad configs
def test_query_chunk_larger_than_the_batch_says_what_to_change(tmp_path):
    with pytest.raises(ConfigError, match="query_chunk_size=8 is larger than per_device_train_batch_size=4"):
        train_args(tmp_path, per_device_train_batch_size=4, grad_cache=True, query_chunk_size=8)


def test_passage_chunk_larger_than_batch_times_group_is_refused(tiny_model_dir, tokenizer, tmp_path):
    args = train_args(tmp_path, per_device_train_batch_size=3, grad_cache=True, passage_chunk_size=7)
    with pytest.raises(ConfigError, match="passage_chunk_size=7 .* 6 passages"):
        make_trainer(tiny_model_dir, tokenizer, args)


def test_chunk_sizes_without_grad_cache_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="grad_cache=True"):
        train_args(tmp_path, query_chunk_size=2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_fp16_without_cuda_suggests_bf16(tmp_path):
    with pytest.raises(ConfigError, match="bf16"):
        train_args(tmp_path, fp16=True)


def test_unknown_logging_mode_lists_the_choices(tmp_path):
    with pytest.raises(ConfigError, match="local_main_process"):
        train_args(tmp_path, trove_logging_mode="everywhere")


def test_tokenizer_and_processing_class_together_are_refused(tiny_model_dir, tokenizer, tmp_path):
    model = BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=str(tiny_model_dir)))
    with pytest.raises(ConfigError, match="not both"):
        RetrievalTrainer(args=train_args(tmp_path), model=model, tokenizer=tokenizer, processing_class=tokenizer)


def test_defaults_suit_retrieval_batches(tmp_path):
    args = RetrievalTrainingArguments(output_dir=str(tmp_path))
    assert args.remove_unused_columns is False and args.report_to in ([], "none", ["none"])
    assert args.trove_logging_mode == "local_main_process" and args.logs_here()


def test_plain_training_forwards_use_seeded_dropout_and_eval_does_not(tiny_dropout_model_dir, tokenizer, tmp_path,
                                                                      monkeypatch):
    import densekit.training.trainer as trainer_module

    seeds = []
    real = trainer_module.seeded_stream
    monkeypatch.setattr(trainer_module, "seeded_stream", lambda seed: seeds.append(seed) or real(seed))
    grads = []
    for run in range(2):
        args = train_args(tmp_path, max_steps=2, max_grad_norm=0, seed=7)
        trainer = make_trainer(tiny_dropout_model_dir, tokenizer, args)
        capture = CaptureGrads()
        trainer.add_callback(capture)
        trainer.train()
        grads.append(capture.grads)
    assert len(seeds) == 4 and seeds[:2] == seeds[2:] and seeds[0] != seeds[1]  # reproducible, fresh per step
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])
    trainer.evaluate(examples())  # eval forwards: no seeded block
    assert len(seeds) == 4
