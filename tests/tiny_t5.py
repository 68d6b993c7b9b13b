"""A tiny T5 checkpoint (encoder-decoder, random weights) with a T5 tokenizer trained in-process: no download."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

WORDS = ("the a of and in to is for with on cells protein vitamin bone health gene cancer risk study patients "
         "effect disease blood dose trial treatment increase reduce level title text").split()


def build_tiny_t5(directory: Path, texts: Iterable[str] = (), *, dropout: float = 0.0, seed: int = 0,
                  vocab_size: int = 300) -> Path:
    """Save a 2-layer, 32-wide ``T5ForConditionalGeneration`` and a Unigram ``T5TokenizerFast`` (pad 0, eos 1,
    unk 2; eos appended like T5's) trained on ``texts`` plus a few common words into ``directory``."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import T5Config, T5ForConditionalGeneration, T5TokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    corpus = list(texts) + [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))]
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
