"""BiEncoderRetriever training forward: the named loss, its value against a reference, label defaults,
group scores for eval, and configuration errors (unknown loss / encoder, LoRA, 4-bit without CUDA)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from densekit.errors import ConfigError
from densekit.modeling.losses import InfoNCELoss, MarginMSELoss
from densekit.modeling.model_args import ModelArguments
from densekit.modeling.retriever import BiEncoderRetriever

Q, G = 3, 2


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture
def batch(tokenizer):
    queries = [f"query number {i}" for i in range(Q)]
    passages = [f"passage {i} {'good' if g == 0 else 'bad'} text" for i in range(Q) for g in range(G)]
    return {"query": tokenizer(queries, padding=True, return_tensors="pt"),
            "passage": tokenizer(passages, padding=True, return_tensors="pt"),
            "label": torch.tensor([[1.0, 0.0]] * Q)}


def make(tiny_model_dir, **kw):
    return BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=str(tiny_model_dir), **kw))


def test_from_model_args_instantiates_the_named_loss(tiny_model_dir):
    assert isinstance(make(tiny_model_dir).loss_fn, InfoNCELoss)
    assert isinstance(make(tiny_model_dir, loss="margin_mse").loss_fn, MarginMSELoss)


def test_forward_loss_equals_reference_cross_entropy_with_in_batch_negatives(tiny_model_dir, batch):
    model = make(tiny_model_dir, temperature=0.5).train()
    out = model(**batch)
    q, p = model.encode_query(batch["query"]), model.encode_passage(batch["passage"])
    reference = F.cross_entropy((q @ p.T) / 0.5, torch.arange(Q) * G)
    assert out.logits.shape == (Q, Q * G)
    assert torch.allclose(out.loss, reference, atol=1e-6)
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_without_label_the_first_passage_of_each_group_is_the_positive_in_training(tiny_model_dir, batch):
    model = make(tiny_model_dir).train()
    with_label = model(**batch).loss
    without = model(query=batch["query"], passage=batch["passage"]).loss
    assert without is not None and torch.allclose(with_label, without, atol=1e-7)


def test_eval_mode_without_label_gives_no_loss_but_with_label_does(tiny_model_dir, batch):
    model = make(tiny_model_dir).eval()
    with torch.no_grad():
        assert model(query=batch["query"], passage=batch["passage"]).loss is None
        assert model(**batch).loss is not None


def test_one_side_only_returns_embeddings_and_no_loss(tiny_model_dir, batch):
    model = make(tiny_model_dir).train()
    out = model(query=batch["query"], label=batch["label"])
    assert out.loss is None and out.logits is None and out.query.shape[0] == Q


def test_group_scores_are_each_query_against_its_own_group(tiny_model_dir, batch):
    model = make(tiny_model_dir).eval()
    with torch.no_grad():
        out = model(**batch)
        scores = model.group_scores(out.query, out.passage)
    expected = torch.stack([out.logits[i, i * G:(i + 1) * G] for i in range(Q)])
    assert scores.shape == (Q, G) and torch.allclose(scores, expected, atol=1e-6)


def test_unknown_loss_name_lists_the_available_losses(tiny_model_dir):
    with pytest.raises(ConfigError, match="Available losses:.*infonce"):
        make(tiny_model_dir, loss="no_such_loss")


def test_unknown_encoder_name_lists_the_available_encoders(tiny_model_dir):
    with pytest.raises(ConfigError, match="Available:.*default"):
        make(tiny_model_dir, encoder_class="no_such_encoder")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
@pytest.mark.parametrize("flag", ["load_in_4bit", "load_in_8bit"])
def test_quantized_loading_without_cuda_says_what_to_install_or_drop(tiny_model_dir, flag):
    with pytest.raises(ConfigError, match=r"bitsandbytes|CUDA") as info:
        make(tiny_model_dir, **{flag: True})
    assert "load_in" in str(info.value)


def test_both_quantization_flags_are_refused(tiny_model_dir):
    with pytest.raises(ConfigError, match="choose one"):
        ModelArguments(model_name_or_path=str(tiny_model_dir), load_in_4bit=True, load_in_8bit=True)


def test_lora_trains_only_adapters_and_reloads_with_same_embeddings(tiny_model_dir, batch, tmp_path):
    model = make(tiny_model_dir, use_peft=True, lora_r=4, lora_target_modules=["query", "value"]).train()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    model(**batch).loss.backward()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    model.eval()
    model.save_pretrained(tmp_path / "lora", tokenizer=None)
    assert (tmp_path / "lora" / "adapter_config.json").is_file()
    assert model.save_sentence_transformers_config(tmp_path / "lora") is False
    reloaded = BiEncoderRetriever.from_pretrained(tmp_path / "lora").eval()
    with torch.no_grad():
        before = model.encode_query(batch["query"])
        after = reloaded.encode_query(batch["query"])
        base = make(tiny_model_dir).eval().encode_query(batch["query"])
    assert torch.allclose(before, after, atol=1e-5)
    assert not torch.allclose(before, base, atol=1e-4)


def test_lora_with_unknown_target_modules_is_a_config_error(tiny_model_dir):
    with pytest.raises(ConfigError, match="lora_target_modules"):
        make(tiny_model_dir, use_peft=True, lora_target_modules=["no_such_module"])
