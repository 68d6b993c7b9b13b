"""Gradient cache: the cached step's parameter gradients equal one full-batch step's.

The encoder is a tiny BERT (from conftest) with masked mean pooling. With dropout on, the reference is
the same chunked forwards kept in one autograd graph (same seed, hence the same dropout masks) and a
single ``loss.backward()``: the full-batch gradient with identical dropout. With dropout off, the
reference is one unchunked forward of the whole batch.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
from transformers import AutoModel

from densekit.errors import ConfigError
from densekit.modeling.grad_cache import RandState, grad_cache_step, split_rows
from densekit.modeling.losses import InfoNCELoss, KLDistillationLoss

Q, G = 5, 3                      # 5 queries, groups of 3 -> 15 passages
Q_CHUNK, P_CHUNK = 2, 4          # neither divides its batch


def load_encoder(model_dir):
    model = AutoModel.from_pretrained(model_dir)
    model.train()  # from_pretrained returns eval mode; dropout must be live

    def encode(batch):
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)

    return model, encode


def random_batch(rows, seed, length=8):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 5000, (rows, length), generator=g)
    lengths = torch.randint(3, length + 1, (rows,), generator=g)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


def make_loss_fn(kind):
    if kind == "infonce":
        loss, label = InfoNCELoss(temperature=0.1), torch.tensor([[1, 0, 0]] * Q)
    else:
        loss = KLDistillationLoss(temperature=0.5)
        label = torch.randn(Q, G, generator=torch.Generator().manual_seed(9)) * 3
    return lambda q, p: loss(q.float() @ p.float().T, label)


def chunks_by_hand(inputs, size):
    n = len(inputs["input_ids"])
    return [{k: v[i:i + size] for k, v in inputs.items()} for i in range(0, n, size)]


def reference_step(encode, queries, passages, loss_fn, q_chunk, p_chunk, autocast_dtype=None):
    """Same chunked forwards as the cache, but all kept in one graph and one backward.

    Like the cache, each chunk runs in its own autocast region (so weights are cast, and their
    gradients summed, per chunk in float32) and the loss sees float32 representations.
    """
    def run(chunk):
        with torch.autocast("cpu", dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext():
            return encode(chunk)

    q = torch.cat([run(c) for c in chunks_by_hand(queries, q_chunk)])
    p = torch.cat([run(c) for c in chunks_by_hand(passages, p_chunk)])
    loss = loss_fn(q, p)
    loss.backward()
    return loss.detach()


def grads_of(model):
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def assert_grads_close(got, expected, atol=1e-5, rtol=1e-6):
    """Within 1e-5, plus a few float32 ulps for entries of size ~100 summed in another order."""
    assert got.keys() == expected.keys() and len(got) > 10
    for name in expected:
        assert torch.allclose(got[name], expected[name], atol=atol, rtol=rtol), (
            name, (got[name] - expected[name]).abs().max())
    assert sum(float(g.abs().sum()) for g in expected.values()) > 0


def assert_other_seed_gives_other_gradients(trained, encode, queries, passages, loss_fn, reference, **kw):
    """Dropout really is on: another seed gives other gradients, so a match with the reference is not vacuous."""
    torch.manual_seed(999)
    grad_cache_step(encode, queries, passages, loss_fn, query_chunk_size=Q_CHUNK, passage_chunk_size=P_CHUNK, **kw)
    other = grads_of(trained)
    assert any(not torch.allclose(other[n], reference[n], atol=1e-5) for n in reference)


@pytest.mark.parametrize("kind", ["infonce", "kl"])
def test_cached_step_matches_full_batch_gradients_with_dropout(tiny_dropout_model_dir, kind):
    model, encode = load_encoder(tiny_dropout_model_dir)
    queries, passages = random_batch(Q, 1), random_batch(Q * G, 2)
    loss_fn = make_loss_fn(kind)

    torch.manual_seed(123)
    cached_loss = grad_cache_step(encode, queries, passages, loss_fn,
                                  query_chunk_size=Q_CHUNK, passage_chunk_size=P_CHUNK)
    cached = grads_of(model)
    torch.manual_seed(123)
    ref_loss = reference_step(encode, queries, passages, loss_fn, Q_CHUNK, P_CHUNK)
    reference = grads_of(model)

    assert torch.allclose(cached_loss, ref_loss, atol=1e-6) and not cached_loss.requires_grad
    assert_grads_close(cached, reference)

    assert_other_seed_gives_other_gradients(model, encode, queries, passages, loss_fn, reference)


def test_cached_step_matches_single_unchunked_forward_without_dropout(tiny_model_dir):
    model, encode = load_encoder(tiny_model_dir)
    queries, passages = random_batch(Q, 3), random_batch(Q * G, 4)
    loss_fn = make_loss_fn("infonce")

    grad_cache_step(encode, queries, passages, loss_fn, query_chunk_size=Q_CHUNK, passage_chunk_size=P_CHUNK)
    cached = grads_of(model)
    loss_fn(encode(queries), encode(passages)).backward()
    # one batched forward rounds differently from chunked ones: float32 relative error, not exactness
    assert_grads_close(cached, grads_of(model), atol=1e-5, rtol=1e-5)


def test_cached_step_leaves_the_rng_stream_where_plain_chunked_forwards_would(tiny_dropout_model_dir):
    model, encode = load_encoder(tiny_dropout_model_dir)
    queries, passages = random_batch(Q, 5), random_batch(Q * G, 6)
    loss_fn = make_loss_fn("infonce")
    torch.manual_seed(7)
    grad_cache_step(encode, queries, passages, loss_fn, query_chunk_size=Q_CHUNK, passage_chunk_size=P_CHUNK)
    after_cached = torch.rand(4)
    torch.manual_seed(7)
    reference_step(encode, queries, passages, loss_fn, Q_CHUNK, P_CHUNK)
    assert torch.equal(after_cached, torch.rand(4))


def test_grad_scaler_scales_parameter_gradients_and_unscale_recovers_them(tiny_model_dir):
    model, encode = load_encoder(tiny_model_dir)
    queries, passages = random_batch(Q, 7), random_batch(Q * G, 8)
    loss_fn = make_loss_fn("infonce")
    grad_cache_step(encode, queries, passages, loss_fn, query_chunk_size=Q_CHUNK, passage_chunk_size=P_CHUNK)
    plain = grads_of(model)

    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    loss = grad_cache_step(encode, queries, passages, loss_fn, query_chunk_size=Q_CHUNK,
                           passage_chunk_size=P_CHUNK, scaler=scaler)
    name = next(iter(plain))
    weight = dict(model.named_parameters())[name]
    assert torch.allclose(weight.grad, plain[name] * 1024.0, rtol=1e-4, atol=1e-4)
    scaler.unscale_(torch.optim.SGD(model.parameters(), lr=0.1))
    assert_grads_close(grads_of(model), plain)
    assert float(loss) < 100  # the returned loss is not scaled


def test_bf16_autocast_on_cpu_matches_reference_under_the_same_autocast(tiny_dropout_model_dir):
    model, encode = load_encoder(tiny_dropout_model_dir)
    queries, passages = random_batch(Q, 9), random_batch(Q * G, 10)
    loss_fn = make_loss_fn("infonce")
    torch.manual_seed(5)
    grad_cache_step(encode, queries, passages, loss_fn, query_chunk_size=Q_CHUNK,
                    passage_chunk_size=P_CHUNK, autocast_dtype=torch.bfloat16)
    cached = grads_of(model)
    torch.manual_seed(5)
    reference_step(encode, queries, passages, loss_fn, Q_CHUNK, P_CHUNK, autocast_dtype=torch.bfloat16)
    reference = grads_of(model)
    assert_grads_close(cached, reference)


class CountingNoSync(torch.nn.Module):
    """A stand-in for a DDP module: counts the passes run inside no_sync()."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
        self.inside = False
        self.unsynced_backwards = 0
        self.synced_backwards = 0

    @contextlib.contextmanager
    def no_sync(self):
        self.inside = True
        try:
            yield
        finally:
            self.inside = False

    def forward(self, batch):
        out = self.linear(batch["x"])
        if out.requires_grad:
            out.register_hook(self._count)
        return out

    def _count(self, grad):
        if self.inside:
            self.unsynced_backwards += 1
        else:
            self.synced_backwards += 1


def test_every_chunk_pass_but_the_last_runs_under_no_sync():
    model = CountingNoSync()
    queries, passages = {"x": torch.randn(5, 4)}, {"x": torch.randn(10, 4)}
    grad_cache_step(model, queries, passages, lambda q, p: InfoNCELoss()(q @ p.T, None),
                    query_chunk_size=2, passage_chunk_size=4, model=model)
    assert (model.unsynced_backwards, model.synced_backwards) == (3 + 3 - 1, 1)


def test_split_rows_splits_every_key_with_a_short_last_chunk():
    chunks = split_rows({"input_ids": torch.arange(7)[:, None], "ids": list("abcdefg")}, 3)
    assert [len(c["ids"]) for c in chunks] == [3, 3, 1]
    assert chunks[2]["ids"] == ["g"] and chunks[2]["input_ids"].tolist() == [[6]]
    assert len(split_rows({"x": torch.zeros(4)}, None)) == 1


@pytest.mark.parametrize("inputs, size", [({"a": torch.zeros(3), "b": torch.zeros(4)}, 2),
                                          ({"a": torch.zeros(3)}, 0), ({}, 2)])
def test_split_rows_refuses_inconsistent_inputs(inputs, size):
    with pytest.raises(ConfigError):
        split_rows(inputs, size)


def test_loss_fn_returning_a_non_scalar_is_a_config_error():
    model = torch.nn.Linear(4, 3)
    with pytest.raises(ConfigError, match="scalar"):
        grad_cache_step(lambda b: model(b["x"]), {"x": torch.randn(2, 4)}, {"x": torch.randn(2, 4)},
                        lambda q, p: q @ p.T)


def test_rand_state_replays_dropout_and_restores_the_outer_stream():
    torch.manual_seed(0)
    state = RandState()
    first = torch.nn.functional.dropout(torch.ones(100), 0.5)
    next_draw = torch.rand(3)
    torch.manual_seed(0)
    torch.nn.functional.dropout(torch.ones(100), 0.5)
    with state.replay():
        assert torch.equal(torch.nn.functional.dropout(torch.ones(100), 0.5), first)
    assert torch.equal(torch.rand(3), next_draw)


def test_rand_state_captures_only_the_cuda_devices_the_step_uses():
    """A CPU step touches no CUDA device (capturing every visible GPU would open a context on each)."""
    from densekit.modeling.grad_cache import _cuda_devices

    model = torch.nn.Linear(2, 2)
    assert _cuda_devices(model, {"x": torch.zeros(2, 2)}, {"x": torch.zeros(2, 2), "ids": [1, 2]}) == []
    assert _cuda_devices(torch.nn.Linear(2, 2, device="meta"), {"x": torch.zeros(1, device="meta")}) == []
    state = RandState([])
    assert state.devices == [] and state.cuda == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_rand_state_replays_cuda_dropout():
    state = RandState()
    first = torch.nn.functional.dropout(torch.ones(100, device="cuda"), 0.5)
    with state.replay():
        assert torch.equal(torch.nn.functional.dropout(torch.ones(100, device="cuda"), 0.5), first)


# ----------------------------------------------------------------------------- seeded dropout, workers
def seeded_full_batch_step(encode, queries, passages, loss_fn, seed):
    """The reference for seeded models: ONE unchunked forward of each tower and one backward, every row in
    the seeded block with the seed the cache gives it (drawn as the cache draws them: one randint of a
    seed per row, queries first, after manual_seed). Row-seeded masks make this the same dropout."""
    from densekit.modeling.seeded_dropout import seeded

    n_queries = len(queries["input_ids"])
    torch.manual_seed(seed)
    seeds = torch.randint(0, 2**62, (n_queries + len(passages["input_ids"]),))
    with seeded(seeds[:n_queries]):
        q = encode(queries)
    with seeded(seeds[n_queries:]):
        p = encode(passages)
    loss = loss_fn(q, p)
    loss.backward()
    return loss.detach()


def seeded_encoder(model_dir):
    from densekit.modeling.seeded_dropout import make_seedable

    model, encode = load_encoder(model_dir)
    assert make_seedable(model)
    return model, encode


@pytest.mark.parametrize("kind", ["infonce", "kl"])
@pytest.mark.parametrize("workers", [1, 2])
def test_seeded_cached_step_matches_one_unchunked_full_batch_step(tiny_dropout_model_dir, kind, workers):
    model, encode = seeded_encoder(tiny_dropout_model_dir)
    queries, passages = random_batch(Q, 1), random_batch(Q * G, 2)
    loss_fn = make_loss_fn(kind)

    torch.manual_seed(123)
    cached_loss = grad_cache_step(encode, queries, passages, loss_fn, query_chunk_size=Q_CHUNK,
                                  passage_chunk_size=P_CHUNK, model=model, workers=workers)
    cached = grads_of(model)
    ref_loss = seeded_full_batch_step(encode, queries, passages, loss_fn, seed=123)
    reference = grads_of(model)
    assert torch.allclose(cached_loss, ref_loss, atol=1e-6)
    # one batched forward rounds differently from chunked ones: float32 relative error, not exactness
    assert_grads_close(cached, reference, atol=1e-5, rtol=1e-5)

    assert_other_seed_gives_other_gradients(model, encode, queries, passages, loss_fn, reference,
                                            model=model, workers=workers)


def test_two_workers_give_one_workers_gradients_and_the_same_result_every_time(tiny_dropout_model_dir):
    model, encode = seeded_encoder(tiny_dropout_model_dir)
    queries, passages = random_batch(Q, 3), random_batch(Q * G, 4)
    loss_fn = make_loss_fn("infonce")
    runs = {}
    for name, workers in (("one", 1), ("two", 2), ("two again", 2)):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(5)
        grad_cache_step(encode, queries, passages, loss_fn, query_chunk_size=Q_CHUNK, passage_chunk_size=P_CHUNK,
                        model=model, workers=workers)
        runs[name] = grads_of(model)
    assert_grads_close(runs["two"], runs["one"])  # the same sum in another order: float rounding only
    assert all(torch.equal(runs["two"][n], runs["two again"][n]) for n in runs["two"])  # thread timing: no effect


def test_existing_gradients_are_added_to_as_with_accumulation(tiny_dropout_model_dir):
    model, encode = seeded_encoder(tiny_dropout_model_dir)
    queries, passages = random_batch(Q, 3), random_batch(Q * G, 4)
    loss_fn = make_loss_fn("infonce")
    torch.manual_seed(6)
    grad_cache_step(encode, queries, passages, loss_fn, query_chunk_size=Q_CHUNK, model=model, workers=2)
    once = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    torch.manual_seed(6)
    grad_cache_step(encode, queries, passages, loss_fn, query_chunk_size=Q_CHUNK, model=model, workers=2)
    twice = grads_of(model)
    assert_grads_close(twice, {n: 2 * g for n, g in once.items()})


def test_workers_default_to_the_torch_threads_only_where_possible(tiny_dropout_model_dir, monkeypatch):
    from densekit.modeling import grad_cache

    used = []
    real = grad_cache.map_on_workers
    monkeypatch.setattr(grad_cache, "map_on_workers",
                        lambda fn, items, n, per: used.append((n, per)) or real(fn, items, n, per))
    model, encode = seeded_encoder(tiny_dropout_model_dir)
    queries, passages = random_batch(16, 3), random_batch(32, 4)
    loss_fn = lambda q, p: InfoNCELoss(temperature=0.1)(q @ p.T, None)  # noqa: E731
    torch.set_num_threads(2)  # restored by conftest's one_torch_thread
    grad_cache_step(encode, queries, passages, loss_fn, query_chunk_size=16, passage_chunk_size=16, model=model)
    assert set(used) == {(2, 1)}  # first pass, then each chunk's parts: two parts of 8 rows, one thread each
    used.clear()
    grad_cache_step(encode, queries, passages, loss_fn, query_chunk_size=4, passage_chunk_size=4, model=model)
    assert set(used) == {(1, 2)}  # parts would be under MIN_PART_ROWS: whole chunks on both threads
    used.clear()
    plain, plain_encode = load_encoder(tiny_dropout_model_dir)  # not seedable: chunks in turn
    grad_cache_step(plain_encode, queries, passages, loss_fn, query_chunk_size=16, model=plain)
    assert set(used) == {(1, 2)}


@pytest.mark.parametrize("case", ["not seeded", "ddp", "zero"])
def test_impossible_worker_counts_are_config_errors(tiny_dropout_model_dir, case):
    model, encode = (seeded_encoder if case == "ddp" else load_encoder)(tiny_dropout_model_dir)
    if case == "ddp":  # a seeded model wrapped by something with no_sync(), as DDP wraps it
        wrapper = torch.nn.Module()
        wrapper.module, wrapper.no_sync = model, contextlib.nullcontext
        model = wrapper
    queries, passages = random_batch(Q, 3), random_batch(Q * G, 4)
    workers = 0 if case == "zero" else 2
    match = {"not seeded": "make_seedable", "ddp": "no_sync", "zero": ">= 1"}[case]
    with pytest.raises(ConfigError, match=match):
        grad_cache_step(encode, queries, passages, lambda q, p: InfoNCELoss()(q.float() @ p.float().T, None),
                        query_chunk_size=2, model=model, workers=workers)


def test_seeded_cached_step_with_lora_dropout_matches_one_full_batch_step(tiny_dropout_model_dir):
    from densekit.modeling.model_args import ModelArguments
    from densekit.modeling.retriever import BiEncoderRetriever
    from densekit.modeling.seeded_dropout import make_seedable

    model = BiEncoderRetriever.from_model_args(ModelArguments(
        model_name_or_path=str(tiny_dropout_model_dir), use_peft=True, lora_r=4, lora_dropout=0.2,
        lora_target_modules=["query", "key", "value"], pooling="mean", normalize=False)).train()
    assert make_seedable(model)  # LoRA's own dropout modules are seeded too
    queries, passages = random_batch(Q, 5), random_batch(Q * G, 6)
    loss_fn = make_loss_fn("infonce")
    torch.manual_seed(11)
    grad_cache_step(model.encode_query, queries, passages, loss_fn, query_chunk_size=Q_CHUNK,
                    passage_chunk_size=P_CHUNK, passage_encode_fn=model.encode_passage, model=model, workers=2)
    cached = grads_of(model)
    assert all("lora" in name for name in cached)  # only the adapters train
    seeded_full_batch_step(lambda batch: model.encode_query(batch) if batch is queries else model.encode_passage(batch),
                           queries, passages, loss_fn, seed=11)
    assert_grads_close(cached, grads_of(model), atol=1e-5, rtol=1e-5)
