"""Gradient cache exactness, with dropout on, for the models issue 11 adds: a T5 encoder (with a projection
head) and an untied pair of BERT towers.

Two ways the cache redraws a chunk's dropout masks, each pinned here:

- **seeded dropout** (:func:`densekit.modeling.seeded_dropout.make_seedable`): in transformers 5, T5's
  attention dropout goes through the attention interface (``dropout=`` with the relative position bias as a
  ``position_bias`` float mask), so the seeded attention covers it and every T5 dropout is seeded. The
  reference is then ONE unchunked full-batch forward of each tower and one backward, every row with the
  seed the cache gives it.
- **RNG replay** (a model not made seedable): torch's generator state is saved before each chunk and
  replayed; the reference is the same chunked forwards kept in one graph and one backward (the comparison
  tests/test_modeling_grad_cache.py makes for generator mode).
"""
from __future__ import annotations

import pytest
import torch

from densekit.modeling.grad_cache import grad_cache_step
from densekit.modeling.model_args import ModelArguments
from densekit.modeling.retriever import BiEncoderRetriever
from densekit.modeling.seeded_dropout import is_seedable, make_seedable
from tests.test_modeling_grad_cache import (P_CHUNK, Q, Q_CHUNK, G, assert_grads_close, chunks_by_hand, grads_of,
                                            make_loss_fn, seeded_full_batch_step)
from tests.tiny_models import build_tiny_t5


@pytest.fixture(scope="module")
def tiny_t5_dropout_dir(tmp_path_factory):
    return build_tiny_t5(tmp_path_factory.mktemp("t5_dropout"), dropout=0.1)


@pytest.fixture(scope="module")
def tiny_umt5_dropout_dir(tmp_path_factory):
    """umT5: a relative position bias computed in every layer (T5 and mT5 compute it once)."""
    return build_tiny_t5(tmp_path_factory.mktemp("umt5_dropout"), dropout=0.1, family="umt5")


def batch(rows, seed, vocab, length=8):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (rows, length), generator=g)
    lengths = torch.randint(3, length + 1, (rows,), generator=g)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


def t5_retriever(path):
    return BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=str(path), pooling="mean",
                                                             normalize=False, projection_dim=8)).train()


def untied_retriever(path):
    return BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=str(path), untie_encoder=True,
                                                             pooling="cls", normalize=False)).train()


def encode_by_batch(model, queries):
    """One encode function for the reference: queries through the query tower, anything else the passage one."""
    return lambda inputs: model.encode_query(inputs) if inputs is queries else model.encode_passage(inputs)


def chunked_reference_step(model, queries, passages, loss_fn):
    """The cache's chunked forwards (each tower its own), all kept in one graph, and one backward."""
    q = torch.cat([model.encode_query(chunk) for chunk in chunks_by_hand(queries, Q_CHUNK)])
    p = torch.cat([model.encode_passage(chunk) for chunk in chunks_by_hand(passages, P_CHUNK)])
    loss = loss_fn(q, p)
    loss.backward()
    return loss.detach()


def cached_step(model, queries, passages, loss_fn, **kw):
    return grad_cache_step(model.encode_query, queries, passages, loss_fn, query_chunk_size=Q_CHUNK,
                           passage_chunk_size=P_CHUNK, passage_encode_fn=model.encode_passage, model=model, **kw)


def models():
    return {"t5": (t5_retriever, "tiny_t5_dropout_dir", 100), "umt5": (t5_retriever, "tiny_umt5_dropout_dir", 100),
            "untied": (untied_retriever, "tiny_dropout_model_dir", 5000)}


@pytest.mark.parametrize("name", ["t5", "umt5", "untied"])
@pytest.mark.parametrize("workers", [1, 2])
def test_seeded_cached_step_equals_one_full_batch_step_with_dropout(name, workers, request):
    build, fixture, vocab = models()[name]
    model = build(request.getfixturevalue(fixture))
    assert make_seedable(model)  # T5: the attention dropout (with its position bias) is seeded too
    queries, passages = batch(Q, 1, vocab), batch(Q * G, 2, vocab)
    loss_fn = make_loss_fn("infonce")

    torch.manual_seed(21)
    cached_loss = cached_step(model, queries, passages, loss_fn, workers=workers)
    cached = grads_of(model)
    ref_loss = seeded_full_batch_step(encode_by_batch(model, queries), queries, passages, loss_fn, seed=21)
    reference = grads_of(model)
    assert torch.allclose(cached_loss, ref_loss, atol=1e-6)
    assert_grads_close(cached, reference, atol=1e-5, rtol=1e-5)
    _assert_every_part_trained(name, reference)

    torch.manual_seed(999)  # dropout is really on: another seed, other gradients
    cached_step(model, queries, passages, loss_fn, workers=workers)
    other = grads_of(model)
    assert any(not torch.allclose(other[n], reference[n], atol=1e-5) for n in reference)


@pytest.mark.parametrize("name", ["t5", "untied"])
def test_rng_replay_cached_step_equals_full_batch_step_with_dropout(name, request):
    build, fixture, vocab = models()[name]
    model = build(request.getfixturevalue(fixture))
    assert not is_seedable(model)  # torch's dropout: the cache replays the generator state per chunk
    queries, passages = batch(Q, 3, vocab), batch(Q * G, 4, vocab)
    loss_fn = make_loss_fn("kl")

    torch.manual_seed(5)
    cached_loss = cached_step(model, queries, passages, loss_fn)
    cached = grads_of(model)
    torch.manual_seed(5)
    ref_loss = chunked_reference_step(model, queries, passages, loss_fn)
    reference = grads_of(model)
    assert torch.allclose(cached_loss, ref_loss, atol=1e-6)
    assert_grads_close(cached, reference)
    _assert_every_part_trained(name, reference)


def _assert_every_part_trained(name, grads):
    if name in ("t5", "umt5"):  # the encoder and the projection head get gradients, and no decoder exists
        assert any(n.startswith("encoder.projection.") for n in grads)
        assert not any("decoder" in n for n in grads)
    else:  # both towers, separately
        assert any(n.startswith("encoder.query_encoder.") for n in grads)
        assert any(n.startswith("encoder.passage_encoder.") for n in grads)


def test_seeded_t5_attention_outside_a_block_is_sdpa_and_inside_draws_row_masks(tiny_t5_dropout_dir):
    """The seeded attention leaves T5's outputs alone without dropout, and inside a block a row's vector does
    not depend on the other rows of its batch (what makes the unchunked reference possible)."""
    from densekit.modeling.seeded_dropout import seeded

    torch.manual_seed(0)  # the same new projection head in both
    plain = t5_retriever(tiny_t5_dropout_dir).eval()
    torch.manual_seed(0)
    seedable = t5_retriever(tiny_t5_dropout_dir).eval()
    make_seedable(seedable)
    rows = batch(4, 7, 100)
    with torch.no_grad():
        assert torch.allclose(plain.encode_query(rows), seedable.encode_query(rows), atol=1e-6)
        seedable.train()
        with seeded([10, 11, 12, 13]):
            whole = seedable.encode_query(rows)
        with seeded([12, 13]):
            part = seedable.encode_query({k: v[2:] for k, v in rows.items()})
    assert torch.allclose(whole[2:], part, atol=1e-6)
