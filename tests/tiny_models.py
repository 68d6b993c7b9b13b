"""Tiny T5, Sentence-T5 and DPR checkpoints built from configs (no download), for the tests of encoder-decoder,
sentence-transformers Dense and Hugging Face DPR loading.

The tokenizer is a hand-written WordPiece vocabulary (special tokens, the letters, their ``##`` forms and a
few whole words), so every text tokenizes into known ids and the models stay a few thousand parameters.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

WORDS = ("what are cats dogs the sun is a of and bread how baked rain water star small from clouds "
         "solar system falls felines question about longer much").split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_vocab(path: Path) -> Path:
    """A WordPiece vocab.txt covering lower-case text: specials, characters, ``##`` characters, some words."""
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,?!'-()")
    tokens = SPECIALS + chars + ["##" + c for c in chars] + WORDS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(dict.fromkeys(tokens)) + "\n", encoding="utf-8")
    return path


def make_tokenizer(directory: Path, tokenizer_class: str = "BertTokenizer"):
    """A BERT WordPiece tokenizer (or a subclass: ``DPRQuestionEncoderTokenizer`` ...) over the tiny vocab."""
    import tempfile

    import transformers

    with tempfile.TemporaryDirectory() as scratch:
        return getattr(transformers, tokenizer_class)(vocab=str(write_vocab(Path(scratch) / "vocab.txt")))


#: transformers' class-name prefix of each T5 family build_tiny_t5 builds
T5_FAMILIES = {"t5": "T5", "mt5": "MT5", "umt5": "UMT5"}


def build_tiny_t5(directory: Path, *, dropout: float = 0.0, seed: int = 0, full: bool = True,
                  family: str = "t5") -> Path:
    """A 2-layer, 16-wide T5 saved as ``T5ForConditionalGeneration`` (``full``: encoder and decoder, as the
    hub's t5-base is) or as ``T5EncoderModel``, with the tiny tokenizer. ``family`` "mt5" or "umt5" builds the
    same model as mT5 / umT5 (umT5: a relative position bias in every layer, not only the first)."""
    import torch
    import transformers

    prefix = T5_FAMILIES[family]
    config_class = getattr(transformers, f"{prefix}Config")
    model_class = getattr(transformers, f"{prefix}ForConditionalGeneration" if full else f"{prefix}EncoderModel")
    tokenizer = make_tokenizer(directory)
    config = config_class(vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=2,
                          num_decoder_layers=1, num_heads=2, dropout_rate=dropout, relative_attention_num_buckets=8,
                          relative_attention_max_distance=16, pad_token_id=tokenizer.pad_token_id,
                          decoder_start_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id)
    torch.manual_seed(seed)
    model_class(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def add_st_dense_normalize(directory: Path, *, out_features: int = 12, bias: bool = False, seed: int = 1) -> Path:
    """Turn a T5 folder into a Sentence-T5/GTR layout: Transformer -> mean Pooling -> Dense (identity) ->
    Normalize, written with sentence-transformers' own modules."""
    import torch
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling

    hidden = json.loads((directory / "config.json").read_text())["d_model"]
    torch.manual_seed(seed)
    modules = [("1_Pooling", Pooling(hidden, pooling_mode="mean")),
               ("2_Dense", Dense(hidden, out_features, bias=bias, activation_function=torch.nn.Identity())),
               ("3_Normalize", Normalize())]
    entries = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    for idx, (path, module) in enumerate(modules, start=1):
        (directory / path).mkdir(exist_ok=True)
        module.save(str(directory / path))
        entries.append({"idx": idx, "name": str(idx), "path": path,
                        "type": f"sentence_transformers.models.{type(module).__name__}"})
    (directory / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    (directory / "modules.json").write_text(json.dumps(entries))
    return directory


def build_tiny_dpr(directory: Path, kind: str, *, projection_dim: int = 0, seed: int = 0,
                   tokenizer_class: str | None = None) -> Path:
    """A random ``DPRQuestionEncoder`` (kind "question") or ``DPRContextEncoder`` ("context") with BERT sizes
    2 x 16 and the tiny tokenizer (by default DPR's own tokenizer class of that kind)."""
    import torch
    import transformers
    from transformers import DPRConfig

    prefix = "DPRQuestionEncoder" if kind == "question" else "DPRContextEncoder"
    tokenizer = make_tokenizer(directory, tokenizer_class or f"{prefix}Tokenizer")
    config = DPRConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=32, max_position_embeddings=64, projection_dim=projection_dim,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    getattr(transformers, prefix)(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def tokenize(directory: Path, texts: list[str]):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))(texts, padding=True, return_tensors="pt")


T5_TRAIN_WORDS = ("the a of and in to is for with on cells protein vitamin bone health gene cancer risk study "
                  "patients effect disease blood dose trial treatment increase reduce level title text").split()


def build_tiny_t5_unigram(directory: Path, texts: Iterable[str] = (), *, dropout: float = 0.0, seed: int = 0,
                  vocab_size: int = 300) -> Path:
    """A 2-layer, 32-wide ``T5ForConditionalGeneration`` with a T5 tokenizer of its own kind: a Unigram
    ``T5TokenizerFast`` (pad 0, eos 1, unk 2; eos appended as T5's does) trained in-process on ``texts`` plus a
    few common words. For end-to-end runs on real text (build_tiny_t5's WordPiece vocabulary is tiny)."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import T5Config, T5ForConditionalGeneration, T5TokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    words = T5_TRAIN_WORDS
    corpus = list(texts) + [" ".join(words[i:] + words[:i]) for i in range(len(words))]
    backend = Tokenizer(models.Unigram())
    backend.normalizer = normalizers.NFKC()
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.train_from_iterator(corpus, trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"))
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                           special_tokens=[("</s>", 1)])
    tokenizer = T5TokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                extra_ids=0)
    config = T5Config(vocab_size=backend.get_vocab_size(), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                      num_decoder_layers=1, num_heads=4, dropout_rate=dropout, pad_token_id=0, eos_token_id=1,
                      decoder_start_token_id=0)
    torch.manual_seed(seed)
    T5ForConditionalGeneration(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
