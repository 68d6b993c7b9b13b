"""Reader model and training: DPR's objective goes down on a tiny BERT, checkpoints reload with the same logits,
load in ``transformers.DPRReader`` with the same logits, resume exactly; the bundled MiniLM loads as encoder."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer, DPRReader

from densekit.reader.model import ReaderModel
from densekit.reader.preprocess import PreprocessSettings, preprocess
from densekit.reader.training import ReaderCollator, ReaderTrainDataset, ReaderTrainer, ReaderTrainingArguments
from tests.test_reader_preprocess import results_entries, write_results


def sample_inputs(vocab: int = 1000) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 1000 + vocab, (3, 24), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0  # a padded row
    return {"input_ids": ids, "attention_mask": mask}


def assert_same_logits(a: dict, b, atol: float = 1e-5) -> None:
    get = (lambda o, k: o[k]) if isinstance(b, dict) else (lambda o, k: getattr(o, k))
    for key in ("start_logits", "end_logits", "relevance_logits"):
        torch.testing.assert_close(a[key], get(b, key), atol=atol, rtol=0)


def make_trainer(tiny_model_dir, tmp_path, output, max_steps=6, save_steps=3, seed=0, **overrides):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    data, _ = preprocess(write_results(tmp_path / "train.json", results_entries(8)), tokenizer,
                         PreprocessSettings(sequence_length=64, is_train=True), cache_dir=tmp_path / "cache")
    model = ReaderModel.from_pretrained(tiny_model_dir, seed=seed)
    dataset = ReaderTrainDataset(data, tokenizer, passages_per_question=3, seed=seed)
    collator = ReaderCollator(pad_token_id=tokenizer.pad_token_id, passages_per_question=3)
    args = ReaderTrainingArguments(**{
        "output_dir": str(output), "max_steps": max_steps, "save_steps": save_steps, "per_device_train_batch_size": 2,
        "learning_rate": 2e-3, "warmup_steps": 0, "lr_scheduler_type": "constant", "logging_steps": 1,
        "use_cpu": True, "seed": seed, "disable_tqdm": True, "dataloader_num_workers": 0, **overrides})
    trainer = ReaderTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                            processing_class=tokenizer, reader_metadata={"sequence_length": 64})
    return trainer, dataset, collator


def batch_loss(model, batch) -> float:
    model.eval()
    with torch.no_grad():
        return float(model(**batch)["loss"])


def test_training_reduces_loss_and_checkpoints_reload(tiny_model_dir, tmp_path):
    trainer, dataset, collator = make_trainer(tiny_model_dir, tmp_path, tmp_path / "out", max_steps=12, save_steps=12)
    fixed = collator([dataset[i] for i in range(len(dataset))])
    before = batch_loss(trainer.model, fixed)
    trainer.train()
    trainer.save_model()
    after = batch_loss(trainer.model, fixed)
    assert after < before * 0.8, (before, after)

    inputs = sample_inputs()
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(**inputs)
        for folder in (tmp_path / "out", tmp_path / "out" / "checkpoint-12"):
            reloaded = ReaderModel.from_pretrained(folder).eval()
            assert_same_logits(reloaded(**inputs), expected, atol=0)
            hf = DPRReader.from_pretrained(folder).eval()  # transformers' own class, same logits
            assert_same_logits(expected, hf(**inputs))
    marker = json.loads((tmp_path / "out" / "densekit_reader.json").read_text())
    assert marker["layout"] == "dpr" and marker["sequence_length"] == 64
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "dpr"


def test_resume_from_checkpoint_continues_exactly(tiny_model_dir, tmp_path):
    whole, _, _ = make_trainer(tiny_model_dir, tmp_path, tmp_path / "whole", max_steps=4, save_steps=2)
    whole.train()
    first, _, _ = make_trainer(tiny_model_dir, tmp_path, tmp_path / "parts", max_steps=4, save_steps=2)
    first.args.max_steps = 2
    first.train()
    resumed, _, _ = make_trainer(tiny_model_dir, tmp_path, tmp_path / "parts", max_steps=4, save_steps=2)
    resumed.train(resume_from_checkpoint=str(tmp_path / "parts" / "checkpoint-2"))
    for (name, a), (_, b) in zip(whole.model.state_dict().items(), resumed.model.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)


def test_a_checkpoint_that_does_not_match_is_refused(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    from densekit.errors import InputError

    model = ReaderModel.from_pretrained(tiny_model_dir, seed=0)
    model.save_pretrained(tmp_path / "r")
    state = load_file(str(tmp_path / "r" / "model.safetensors"))
    del state["span_predictor.qa_classifier.bias"]
    save_file(state, str(tmp_path / "r" / "model.safetensors"))
    with pytest.raises(InputError, match="qa_classifier.bias"):
        ReaderModel.from_pretrained(tmp_path / "r")


def test_bundled_minilm_loads_as_encoder_and_saves_as_dpr_reader(minilm_dir, tmp_path):
    model = ReaderModel.from_pretrained(minilm_dir, seed=1).eval()
    assert type(model.encoder_model).__name__ == "BertModel" and model.config.hidden_size == 384
    assert model.encoder_model.pooler is None  # as DPRReader's bert_model
    inputs = sample_inputs()
    with torch.no_grad():
        out = model(**inputs)
        assert out["start_logits"].shape == (3, 24) and out["relevance_logits"].shape == (3,)
        model.save_pretrained(tmp_path / "minilm_reader")
        assert_same_logits(out, DPRReader.from_pretrained(tmp_path / "minilm_reader").eval()(**inputs), atol=1e-4)


def test_non_bert_encoder_saves_densekit_layout(tmp_path):
    from transformers import RobertaConfig, RobertaModel

    config = RobertaConfig(vocab_size=3000, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    model = ReaderModel(RobertaModel(config, add_pooling_layer=False)).eval()
    model.init_heads(seed=0)
    model.save_pretrained(tmp_path / "roberta_reader")
    marker = json.loads((tmp_path / "roberta_reader" / "densekit_reader.json").read_text())
    assert marker["layout"] == "densekit" and marker["encoder_model_type"] == "roberta"
    inputs = sample_inputs(vocab=1500)
    with torch.no_grad():
        assert_same_logits(ReaderModel.from_pretrained(tmp_path / "roberta_reader").eval()(**inputs), model(**inputs),
                           atol=0)



@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback of mixed precision")
def test_bf16_trains_on_cpu_and_fp16_is_refused_with_what_to_do(tiny_model_dir, tmp_path):
    """``--bf16`` alone runs as CPU autocast (transformers refuses it without a GPU unless use_cpu is set), and
    its loss stays close to the float32 run's; ``--fp16`` without CUDA is a ConfigError naming ``--bf16``."""
    from densekit.errors import ConfigError

    losses = {}
    for bf16 in (False, True):
        trainer, _, _ = make_trainer(tiny_model_dir, tmp_path, tmp_path / f"bf16_{bf16}", max_steps=3, save_steps=3,
                                     bf16=bf16, use_cpu=False)
        assert trainer.args.bf16 == bf16 and (trainer.args.use_cpu or not bf16)
        losses[bf16] = trainer.train().training_loss
    assert losses[True] != losses[False] and abs(losses[True] - losses[False]) < 0.05 * losses[False], losses
    with pytest.raises(ConfigError, match="bf16"):
        ReaderTrainingArguments(output_dir=str(tmp_path / "fp16"), fp16=True)
