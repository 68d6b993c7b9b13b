"""CPU-only speed-ups stay on the CPU: seeded dropout (numba masks), the seeded attention, the gradient
cache's CPU workers and the chunked parallel forward are used for a model on the CPU, and for a model on a
GPU torch's dropout, fused SDPA attention and one chunk at a time are kept.

The GPU is simulated where a real one is needed: ``fast_inference.model_device_types`` (what
``cpu_tricks_apply`` decides from) reports ``cuda`` while the tensors stay on the CPU; the decision itself
is checked on real parameters, including the meta device. Every test also runs the CPU path.
"""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from densekit import BiEncoderRetriever, DataArguments, ModelArguments, RetrievalCollator
from densekit.errors import ConfigError
from densekit.modeling import fast_inference, seeded_dropout
from densekit.modeling import grad_cache as gc
from densekit.modeling.fast_inference import accelerate_for_inference, cpu_tricks_apply
from densekit.training import RetrievalTrainer, RetrievalTrainingArguments


def test_the_decision_follows_where_the_parameters_are():
    assert cpu_tricks_apply(torch.nn.Linear(2, 2))
    assert not cpu_tricks_apply(torch.nn.Linear(2, 2, device="meta"))
    mixed = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2, device="meta"))
    assert not cpu_tricks_apply(mixed)


def pretend_gpu(monkeypatch) -> None:
    """From now on the model looks as if it were on a GPU, and the seeded-dropout kernel fails if called."""
    def no_kernel(*args, **kwargs):
        raise AssertionError("the seeded-dropout kernel ran for a model on a GPU")

    monkeypatch.setattr(fast_inference, "model_device_types", lambda model: {"cuda"})
    monkeypatch.setattr(seeded_dropout, "_masked", no_kernel)


@pytest.fixture
def kernel_calls(monkeypatch):
    """Count the seeded-dropout kernel's calls (CPU path)."""
    calls = []
    real = seeded_dropout._masked
    monkeypatch.setattr(seeded_dropout, "_masked", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def attention_implementations(model: torch.nn.Module) -> list[str]:
    """Record, at every forward of a self-attention module, which attention implementation it runs."""
    seen: list[str] = []
    for module in model.modules():
        if type(module).__name__.endswith("SelfAttention"):
            module.register_forward_pre_hook(lambda mod, args: seen.append(mod.config._attn_implementation))
    return seen


def make_trainer(model_dir, tmp_path, **kw):
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=str(model_dir)))
    collator = RetrievalCollator(data_args=DataArguments(group_size=2, query_max_len=16, passage_max_len=16),
                                 tokenizer=tokenizer)
    args = RetrievalTrainingArguments(**{**dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4,
                                                max_steps=1, learning_rate=1e-3, save_strategy="no",
                                                disable_tqdm=True, report_to="none"), **kw})
    data = [{"query": f"question {i}", "passage": [f"answer {i} here", f"other text {i}"], "label": [1, 0]}
            for i in range(4)]
    return RetrievalTrainer(args=args, model=model, tokenizer=tokenizer, data_collator=collator, train_dataset=data)


@pytest.mark.parametrize("grad_cache", [False, True])
def test_the_trainer_seeds_dropout_on_the_cpu_and_keeps_torchs_dropout_and_sdpa_on_a_gpu(
        tiny_dropout_model_dir, tmp_path, monkeypatch, kernel_calls, grad_cache):
    chunks = dict(grad_cache=True, query_chunk_size=2, passage_chunk_size=4) if grad_cache else {}
    trainer = make_trainer(tiny_dropout_model_dir, tmp_path, **chunks)
    seen = attention_implementations(trainer.model)
    states = []
    real_state = gc.RandState
    monkeypatch.setattr(gc, "RandState", lambda *a: states.append(a) or real_state(*a))

    trainer.train()  # on the CPU: seeded masks and the seeded attention
    assert kernel_calls and set(seen) == {seeded_dropout.ATTENTION_NAME} and not states
    assert any(type(m) is seeded_dropout.SeededDropout for m in trainer.model.modules())

    seen.clear()
    pretend_gpu(monkeypatch)
    trainer.train()  # the same model, now "on a GPU": the step puts torch's dropout and SDPA back
    assert seen and set(seen) == {"sdpa"}
    assert not any(isinstance(m, seeded_dropout.SeededDropout) for m in trainer.model.modules())
    assert any(type(m) is torch.nn.Dropout and m.p > 0 for m in trainer.model.modules())
    if grad_cache:  # chunks replay torch's generator state instead of row seeds
        assert len(states) == 3  # 2 query chunks + 2 passage chunks, the last one kept (no replay)


def test_grad_cache_runs_chunks_in_turn_on_a_gpu_and_refuses_workers(tiny_dropout_model_dir, monkeypatch):
    model = AutoModel.from_pretrained(tiny_dropout_model_dir).train()
    assert seeded_dropout.make_seedable(model)  # seedable, yet on a "GPU" it must not be seeded

    def encode(batch):
        return model(**batch).last_hidden_state[:, 0]

    def loss_fn(q, p):
        return torch.nn.functional.cross_entropy(q @ p.T, torch.arange(len(q)) * 2)

    ids = torch.randint(1000, 2000, (4, 6))
    queries, passages = {"input_ids": ids}, {"input_ids": torch.randint(1000, 2000, (8, 6))}
    used = []
    real_map = gc.map_on_workers
    monkeypatch.setattr(gc, "map_on_workers",
                        lambda fn, items, n, per: used.append(n) or real_map(fn, items, n, per))
    torch.set_num_threads(2)  # restored by conftest; with two threads the CPU default is two workers
    gc.grad_cache_step(encode, queries, passages, loss_fn, query_chunk_size=4, passage_chunk_size=8,
                               model=model, workers=2)
    assert used == [2, 2, 2]

    used.clear()
    pretend_gpu(monkeypatch)
    with pytest.raises(ConfigError, match="CPU only"):
        gc.grad_cache_step(encode, queries, passages, loss_fn, query_chunk_size=2, model=model, workers=2)
    gc.grad_cache_step(encode, queries, passages, loss_fn, query_chunk_size=2, passage_chunk_size=4,
                               model=model)
    assert set(used) == {1}


def test_fast_inference_is_for_models_on_the_cpu_only(tiny_model_dir, monkeypatch):
    model = AutoModel.from_pretrained(tiny_model_dir).eval()
    batch = {"input_ids": torch.randint(1000, 2000, (6, 5)), "attention_mask": torch.ones(6, 5, dtype=torch.long)}

    def first_token(hidden, mask):
        return hidden[:, 0]

    calls = []
    monkeypatch.setattr(fast_inference, "map_on_workers", lambda fn, items, n, threads_per_worker: calls.append(n)
                        or [fn(item) for item in items])
    torch.set_num_threads(2)  # restored by conftest
    fast = accelerate_for_inference(model)
    assert fast is not None
    expected = model(**batch).last_hidden_state[:, 0]
    assert torch.allclose(fast(reduce=first_token, **batch), expected, atol=1e-5) and calls == [2]

    calls.clear()
    pretend_gpu(monkeypatch)
    assert accelerate_for_inference(model) is None
    assert torch.allclose(fast(reduce=first_token, **batch), expected, atol=1e-5) and not calls
