"""Seeded dropout: a row's masks are a function of (row seed, call, element), right in rate and scale, the
same in any batch and on any thread, and a prepared model is unchanged outside ``seeded`` blocks."""
from __future__ import annotations

import copy
import math
import threading

import pytest
import torch
from transformers import AutoModel, GPT2Config, GPT2Model

from densekit.modeling.seeded_dropout import (
    ATTENTION_NAME, SeededDropout, is_seedable, make_seedable, restore_torch_dropout, seeded, seeded_dropout)

N = 200_000


def keep_mask(seed: int, p: float = 0.1, n: int = N, calls: int = 1, dtype=torch.float32) -> torch.Tensor:
    with seeded([seed]):
        for _ in range(calls):
            out = seeded_dropout(torch.ones(1, n, dtype=dtype), p)
    return out[0] != 0


def test_same_seed_same_mask_other_seed_or_call_other_mask():
    first = keep_mask(1)
    assert torch.equal(first, keep_mask(1))
    assert not torch.equal(first, keep_mask(2))
    assert not torch.equal(first, keep_mask(1, calls=2))  # the second call of a block draws a new mask


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_and_scale_match_dropout(p):
    with seeded([7]):
        out = seeded_dropout(torch.ones(1, N), p)
    kept = out != 0
    sigma = math.sqrt(N * p * (1 - p))
    assert abs(int(kept.sum()) - N * (1 - p)) < 6 * sigma
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / (1 - p)))


def test_masks_of_two_seeds_and_neighbouring_elements_look_independent():
    a, b = keep_mask(11, p=0.5).float(), keep_mask(12, p=0.5).float()
    sigma = 0.5 / math.sqrt(N)
    assert abs(float((a == b).float().mean()) - 0.5) < 6 * sigma       # two seeds agree by chance only
    assert abs(float((a[1:] == a[:-1]).float().mean()) - 0.5) < 6 * sigma  # no pattern along a tensor


def test_p_zero_is_identity_and_p_one_drops_everything():
    x = torch.randn(1, 100)
    with seeded([3]):
        assert torch.equal(seeded_dropout(x, 0.0), x)
        assert torch.equal(seeded_dropout(x, 1.0), torch.zeros_like(x))
        assert torch.equal(seeded_dropout(x, 0.5, training=False), x)


def test_backward_applies_the_forward_mask_and_scale():
    x = torch.randn(2, 500, requires_grad=True)
    with seeded([5, 6]):
        out = seeded_dropout(x, 0.3)
    upstream = torch.randn(2, 500)
    out.backward(upstream)
    kept = out.detach() != 0
    assert torch.allclose(x.grad, upstream * kept / 0.7)
    assert 500 < int(kept.sum()) < 900


def test_other_dtypes_draw_the_same_mask_as_float32():
    assert torch.equal(keep_mask(9, dtype=torch.float64), keep_mask(9))
    assert torch.equal(keep_mask(9, dtype=torch.bfloat16), keep_mask(9))


def test_a_rows_mask_does_not_depend_on_the_other_rows_of_its_batch():
    seeds = [31, 32, 33, 34]
    with seeded(seeds):
        whole = seeded_dropout(torch.ones(4, 3, 50), 0.5)
    with seeded(seeds[2:]):
        tail = seeded_dropout(torch.ones(2, 3, 50), 0.5)
    with seeded([seeds[1]]):
        one = seeded_dropout(torch.ones(1, 3, 50), 0.5)
    assert torch.equal(whole[2:], tail) and torch.equal(whole[1:2], one)
    assert not torch.equal(whole[0], whole[1])


def test_a_tensor_without_one_row_per_seed_is_refused():
    with seeded([1, 2]), pytest.raises(ValueError, match="dim 0 must be the batch"):
        seeded_dropout(torch.ones(3, 4), 0.1)


def test_a_mask_does_not_depend_on_the_thread():
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("mask", keep_mask(21)))
    thread.start()
    thread.join()
    assert torch.equal(result["mask"], keep_mask(21))


def test_outside_a_block_it_is_torch_dropout():
    module = SeededDropout(0.4)
    torch.manual_seed(0)
    ours = module(torch.ones(1000))
    torch.manual_seed(0)
    assert torch.equal(ours, torch.nn.functional.dropout(torch.ones(1000), 0.4))
    assert torch.equal(module.eval()(torch.ones(10)), torch.ones(10))


def batch(rows=4, length=12):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 5000, (rows, length), generator=g)
    mask = torch.ones(rows, length, dtype=torch.long)
    mask[1, 7:] = 0
    return {"input_ids": ids * mask, "attention_mask": mask}


def test_prepared_bert_is_unchanged_outside_blocks_and_seeded_inside(tiny_dropout_model_dir):
    plain = AutoModel.from_pretrained(tiny_dropout_model_dir).train()
    prepared = copy.deepcopy(plain)
    assert not is_seedable(prepared)
    assert make_seedable(prepared) and make_seedable(prepared)  # idempotent
    assert not any(type(m) is torch.nn.Dropout for m in prepared.modules())
    assert prepared.config._attn_implementation == ATTENTION_NAME
    inputs = batch()

    torch.manual_seed(4)
    expected = plain(**inputs).last_hidden_state
    torch.manual_seed(4)
    assert torch.allclose(prepared(**inputs).last_hidden_state, expected, atol=1e-6)  # global RNG, same masks
    assert torch.allclose(prepared.eval()(**inputs).last_hidden_state, plain.eval()(**inputs).last_hidden_state,
                          atol=1e-6)

    prepared.train()
    with seeded([8, 9, 10, 11]):
        first = prepared(**inputs).last_hidden_state
    torch.rand(10)  # the global stream moving on changes nothing inside a block
    with seeded([8, 9, 10, 11]):
        again = prepared(**inputs).last_hidden_state
    with seeded([8, 9, 10, 12]):
        other = prepared(**inputs).last_hidden_state
    with seeded([10, 11]):  # rows 2 and 3 alone, with their seeds: the same masks as in the batch
        alone = prepared(**{k: v[2:] for k, v in inputs.items()}).last_hidden_state
    assert torch.equal(first, again)
    assert torch.allclose(first[:3], other[:3]) and not torch.allclose(first[3], other[3])
    assert torch.allclose(alone, first[2:], atol=1e-6)


def test_restoring_torch_dropout_undoes_make_seedable(tiny_dropout_model_dir, monkeypatch):
    """What the trainer does for a model on a GPU: nn.Dropout and SDPA again, so even inside a block no
    seeded mask is drawn (the kernel is made to fail) and torch's generator decides the masks."""
    from densekit.modeling import seeded_dropout as module

    plain = AutoModel.from_pretrained(tiny_dropout_model_dir).train()
    model = copy.deepcopy(plain)
    assert make_seedable(model)
    restore_torch_dropout(model)
    restore_torch_dropout(model)  # idempotent
    assert not is_seedable(model) and model.config._attn_implementation == "sdpa"
    assert all(type(m) is not SeededDropout for m in model.modules())
    monkeypatch.setattr(module, "_masked", lambda *a, **k: pytest.fail("seeded kernel called"))
    inputs = batch()
    torch.manual_seed(4)
    expected = plain(**inputs).last_hidden_state
    torch.manual_seed(4)
    with seeded([1, 2, 3, 4]):
        assert torch.allclose(model(**inputs).last_hidden_state, expected, atol=1e-6)
    assert make_seedable(model)  # and back


def test_attention_dropout_alone_is_seeded_too(tmp_path):
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=5000, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.5)
    model = BertModel(config).train()
    assert make_seedable(model)
    inputs = batch()
    with seeded([1, 2, 3, 4]):
        first = model(**inputs).last_hidden_state
    with seeded([1, 2, 3, 4]):
        assert torch.equal(first, model(**inputs).last_hidden_state)
    with seeded([5, 6, 7, 8]):
        assert not torch.allclose(first, model(**inputs).last_hidden_state)


def test_models_densekit_cannot_vouch_for_are_not_seedable(tiny_dropout_model_dir):
    gpt2 = GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=100))
    assert not make_seedable(gpt2)  # its attention dropout is functional under sdpa
    eager = AutoModel.from_pretrained(tiny_dropout_model_dir, attn_implementation="eager")
    assert not make_seedable(eager)  # eager attention kept for output_attentions: not routed
    assert not make_seedable(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1)))  # no HF model


def test_gradient_checkpointing_makes_a_model_unseedable(tiny_dropout_model_dir):
    model = AutoModel.from_pretrained(tiny_dropout_model_dir)
    assert make_seedable(model)
    model.gradient_checkpointing_enable()
    assert not is_seedable(model)  # the cache then replays torch's generator, which checkpointing honours


def test_a_stream_block_takes_any_shape_and_its_seed_decides_the_mask():
    from densekit.modeling.seeded_dropout import seeded_stream

    def draw(seed):
        with seeded_stream(seed):
            return seeded_dropout(torch.ones(3, 5, 7), 0.5), seeded_dropout(torch.ones(11), 0.5)
    first, again, other = draw(1), draw(1), draw(2)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0]) and not torch.equal(first[0].flatten()[:11], first[1])
