"""Fast inference path: equal to the plain Hugging Face forward, never stale, never used while training."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel, GPT2Config, GPT2Model, RobertaConfig, RobertaModel

from densekit.modeling.encoders import DefaultEncoder
from densekit.modeling.fast_inference import ChunkedParallelForward, accelerate_for_inference
from densekit.modeling.model_args import ModelArguments

TEXTS = [
    "a", "dense retrieval with a bi-encoder", "the quick brown fox jumps over the lazy dog " * 3,
    "short one", "mean pooling of token states", "x " * 40, "another medium sized text here", "end",
]


@pytest.fixture
def two_threads():
    """The fast path splits work only with more than one intra-op thread; restore the setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _encoder(path, **kwargs) -> DefaultEncoder:
    return DefaultEncoder(ModelArguments(model_name_or_path=str(path), pooling="mean", normalize=True, **kwargs)).eval()


def _batch(path, texts, padding_side="right"):
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    tokenizer.padding_side = padding_side
    return dict(tokenizer(texts, padding=True, return_tensors="pt"))


def _both(path, batch):
    """(fast path, plain HF path) embeddings of the same batch with the same weights."""
    encoder = _encoder(path)
    with torch.inference_mode():
        fast = encoder.encode(**batch)
        encoder.fast_inference = False
        plain = encoder.encode(**batch)
    return fast, plain


@pytest.mark.parametrize("texts", [TEXTS, TEXTS[:1], [TEXTS[5]] * 4], ids=["mixed", "one_row", "all_full_length"])
def test_fast_path_equals_hf_forward(tiny_model_dir, two_threads, texts):
    fast, plain = _both(tiny_model_dir, _batch(tiny_model_dir, texts))
    assert fast.shape == plain.shape == (len(texts), 32)
    assert (fast - plain).abs().max().item() < 1e-5


def test_fast_path_equals_hf_forward_with_left_padding(tiny_model_dir, two_threads):
    fast, plain = _both(tiny_model_dir, _batch(tiny_model_dir, TEXTS, padding_side="left"))
    assert (fast - plain).abs().max().item() < 1e-5


def test_fast_path_is_really_taken_and_splits_the_batch(tiny_model_dir, two_threads, monkeypatch):
    encoder = _encoder(tiny_model_dir)
    sizes = []
    real_forward = ChunkedParallelForward._forward

    def spy(self, inputs, reduce):
        sizes.append(tuple(inputs["input_ids"].shape))
        return real_forward(self, inputs, reduce)

    monkeypatch.setattr(ChunkedParallelForward, "_forward", spy)
    batch = _batch(tiny_model_dir, TEXTS)
    with torch.inference_mode():
        encoder.encode(**batch)
    assert len(sizes) == 2 and sum(rows for rows, _ in sizes) == len(TEXTS)
    assert min(width for _, width in sizes) < batch["input_ids"].shape[1]  # the short chunk was trimmed
    assert torch.get_num_threads() == 2  # the caller's thread setting survives the workers


def test_fast_path_follows_weight_changes(tiny_model_dir, two_threads):
    encoder = _encoder(tiny_model_dir)
    batch = _batch(tiny_model_dir, TEXTS)
    with torch.inference_mode():
        before = encoder.encode(**batch)
    with torch.no_grad():
        encoder.model.encoder.layer[0].intermediate.dense.weight.mul_(1.5)
    with torch.inference_mode():
        after = encoder.encode(**batch)
        encoder.fast_inference = False
        reference = encoder.encode(**batch)
    assert (after - before).abs().max().item() > 1e-3
    assert (after - reference).abs().max().item() < 1e-5


def test_training_mode_uses_hf_forward_and_gradients_flow(tiny_model_dir, two_threads, monkeypatch):
    encoder = _encoder(tiny_model_dir).train()

    def forbidden(*args, **kwargs):
        raise AssertionError("fast path used while training")

    monkeypatch.setattr(ChunkedParallelForward, "__call__", forbidden)
    embeddings = encoder.encode(**_batch(tiny_model_dir, TEXTS))
    embeddings.sum().backward()
    grad = encoder.model.encoder.layer[0].attention.self.query.weight.grad
    assert grad is not None and grad.abs().sum().item() > 0


def test_flag_off_never_builds_fast_path(tiny_model_dir, two_threads, monkeypatch):
    encoder = _encoder(tiny_model_dir, fast_inference=False)
    monkeypatch.setattr(ChunkedParallelForward, "__call__", lambda *a, **k: pytest.fail("fast path used"))
    with torch.inference_mode():
        assert encoder.encode(**_batch(tiny_model_dir, TEXTS)).shape == (len(TEXTS), 32)


def test_unsupported_architecture_falls_back():
    gpt2 = GPT2Model(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=50, n_positions=16))
    assert accelerate_for_inference(gpt2) is None
    assert accelerate_for_inference(torch.nn.Linear(2, 2)) is None


def test_roberta_fast_path_equals_hf_forward(two_threads):
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=40, pad_token_id=1)
    model = RobertaModel(config).eval()
    fast = accelerate_for_inference(model)
    assert fast is not None
    lengths = [20, 3, 11, 1, 17, 20]
    ids = torch.full((len(lengths), 20), 1)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.randint(3, 60, (length,))
        mask[row, :length] = 1

    def mean(hidden, m):
        return (hidden * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True)

    with torch.inference_mode():
        got = fast(ids, mask, mean)
        expected = mean(model(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
    assert (got - expected).abs().max().item() < 1e-5


def test_bert_model_type_is_supported():
    model = BertModel(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=16))
    assert isinstance(accelerate_for_inference(model), ChunkedParallelForward)


@pytest.mark.integration
def test_minilm_fast_path_equals_sentence_transformers(minilm_dir, two_threads):
    from sentence_transformers import SentenceTransformer

    texts = TEXTS * 3
    st = SentenceTransformer(minilm_dir, device="cpu")
    expected = st.encode(texts, batch_size=32, convert_to_tensor=True)
    encoder = _encoder(minilm_dir)
    batch = _batch(minilm_dir, texts)
    with torch.inference_mode():
        got = encoder.encode(**batch)
    assert (got - expected).abs().max().item() < 1e-5
