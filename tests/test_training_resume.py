"""Training resumes exactly where it stopped (issue "Numbers you can trust").

The end-to-end tests do what the issue did: run ``densekit train`` as a process, SIGKILL it once
checkpoint-N is complete on disk, resume it, and compare the final weights with an uninterrupted run's.
The tiny BERT has dropout 0.1, so the RNG states and the per-step dropout stream must resume too, and the
runs cross an epoch boundary, so must the data order (sampler seed and dataset epoch).

Why a real kill from the test rather than a kill hook inside the trainer: it is what users do, and it
needs no test-only code path in densekit. It is made deterministic where it matters: the test waits for
checkpoint-N's ``trainer_state.json`` (written last by transformers) and resumes from checkpoint-N, so
wherever the kill lands afterwards (mid-step, or mid-way through writing a later checkpoint) the resumed
run must give the same weights; the run has many steps left at that point, and the test checks that the
process really died by SIGKILL before writing its final model.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from densekit import BiEncoderRetriever, DataArguments, ModelArguments, RetrievalCollator
from densekit.errors import ConfigError
from densekit.training import RetrievalTrainer, RetrievalTrainingArguments
from tests.conftest import build_tiny_bert

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
         "upsilon phi chi psi omega").split()
N_QUERIES = 32
SAVE_STEPS = 3
MAX_STEPS = 12  # batch 4: 8 steps per epoch, so the runs cross an epoch boundary
# Every run on one torch thread: identical float reductions in all runs, and light on a shared machine.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def dropout_model(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("resume_bert"), dropout=0.1, seed=1)


@pytest.fixture(scope="module")
def beir(tmp_path_factory) -> Path:
    """A BEIR folder: 32 queries, each with one judged passage and one other passage of its own."""
    folder = tmp_path_factory.mktemp("resume_beir")
    (folder / "qrels").mkdir()
    with open(folder / "corpus.jsonl", "w") as corpus, open(folder / "queries.jsonl", "w") as queries, \
            open(folder / "qrels" / "train.tsv", "w") as qrels:
        qrels.write("query-id\tcorpus-id\tscore\n")
        for i in range(N_QUERIES):
            a, b = WORDS[i % len(WORDS)], WORDS[(7 * i + 3) % len(WORDS)]
            queries.write(json.dumps({"_id": f"q{i}", "text": f"what links {a} and {b} in case {i}?"}) + "\n")
            for n in range(2):
                corpus.write(json.dumps({"_id": f"d{i}-{n}", "title": a,
                                         "text": f"{a} meets {b} in story {i}, chapter {n}"}) + "\n")
            qrels.write(f"q{i}\td{i}-0\t1\n")
    return folder


OPTIONS = {
    "plain": ["--per_device_train_batch_size", "4"],
    "grad_cache": ["--per_device_train_batch_size", "4", "--grad_cache", "true", "--query_chunk_size", "2",
                   "--passage_chunk_size", "4", "--grad_cache_workers", "2"],
}


def command(model: Path, beir: Path, out: Path, options: list[str], *extra: str) -> list[str]:
    return [sys.executable, "-m", "densekit.cli.main", "train", "--model_name_or_path", str(model),
            "--dataset", str(beir), "--output_dir", str(out), "--group_size", "2", "--max_steps", str(MAX_STEPS),
            "--save_steps", str(SAVE_STEPS), "--learning_rate", "1e-3", "--seed", "5", "--logging_steps", "100",
            "--disable_tqdm", "true", *options, *extra]


def run(cmd: list[str], log: Path) -> None:
    with open(log, "w") as handle:
        code = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env=ENV, timeout=600).returncode
    assert code == 0, log.read_text()[-3000:]


def complete(checkpoint: Path) -> bool:
    """trainer_state.json is the last file transformers writes into a checkpoint; readable = complete."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def run_and_kill(cmd: list[str], checkpoint: Path, log: Path) -> None:
    """Start ``cmd``; SIGKILL it as soon as ``checkpoint`` is complete."""
    with open(log, "w") as handle:
        process = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=ENV)
        try:
            deadline = time.monotonic() + 600  # a safety net for a hung run, not a timing check
            while not complete(checkpoint):
                assert process.poll() is None, f"the run ended before {checkpoint.name}:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "no checkpoint after 10 minutes"
                time.sleep(0.005)
            process.send_signal(signal.SIGKILL)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (checkpoint.parent / "model.safetensors").exists()  # killed before its final save


@pytest.fixture(scope="module")
def uninterrupted(dropout_model, beir, tmp_path_factory):
    """Final weights of an uninterrupted run, per option set (computed once, when first asked)."""
    done: dict[str, dict[str, torch.Tensor]] = {}

    def weights(name: str) -> dict[str, torch.Tensor]:
        if name not in done:
            out = tmp_path_factory.mktemp(f"uninterrupted_{name}")
            run(command(dropout_model, beir, out / "model", OPTIONS[name]), out / "log.txt")
            done[name] = load_file(out / "model" / "model.safetensors")
        return done[name]

    return weights


@pytest.mark.parametrize("options, resume", [("plain", "checkpoint"), ("grad_cache", "checkpoint"),
                                             ("plain", "true")])
def test_killed_run_resumes_to_the_uninterrupted_runs_weights(dropout_model, beir, tmp_path, uninterrupted,
                                                              options, resume):
    out = tmp_path / "model"
    checkpoint = out / f"checkpoint-{SAVE_STEPS}"
    run_and_kill(command(dropout_model, beir, out, OPTIONS[options]), checkpoint, tmp_path / "killed.txt")
    target = str(checkpoint) if resume == "checkpoint" else "true"
    run(command(dropout_model, beir, out, OPTIONS[options], "--resume_from_checkpoint", target),
        tmp_path / "resumed.txt")
    resumed, reference = load_file(out / "model.safetensors"), uninterrupted(options)
    base = load_file(dropout_model / "model.safetensors")
    assert resumed.keys() == reference.keys() == base.keys()
    for name, value in reference.items():
        assert torch.allclose(resumed[name], value, rtol=0, atol=1e-6), (name, (resumed[name] - value).abs().max())
    assert any(not torch.allclose(reference[n], base[n], atol=1e-4) for n in base)  # it did train
    state = json.loads((out / f"checkpoint-{MAX_STEPS}" / "trainer_state.json").read_text())
    assert state["global_step"] == MAX_STEPS


# ------------------------------------------------------------------------------- in-process checks
@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def examples(n=8):
    return [{"query": f"what is thing {i}?", "passage": [f"thing {i} is object {i}", f"unrelated {i * 3}"],
             "label": [1, 0]} for i in range(n)]


def make_trainer(model_dir, tokenizer, out, **kw):
    model_kw = {key: kw.pop(key) for key in ("use_peft", "lora_r", "lora_target_modules") if key in kw}
    model = BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=str(model_dir), **model_kw))
    collator = RetrievalCollator(data_args=DataArguments(group_size=2, query_max_len=16, passage_max_len=16),
                                 tokenizer=tokenizer)
    args = RetrievalTrainingArguments(**{**dict(output_dir=str(out), per_device_train_batch_size=4, max_steps=4,
                                                save_steps=2, learning_rate=1e-3, disable_tqdm=True, seed=3,
                                                report_to="none"), **kw})
    return RetrievalTrainer(args=args, model=model, tokenizer=tokenizer, data_collator=collator,
                            train_dataset=examples())


def weights_of(trainer) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in trainer.model.state_dict().items()}


@pytest.fixture
def checkpoint(tiny_model_dir, tokenizer, tmp_path) -> Path:
    """checkpoint-2 of a 4-step run of the tiny model."""
    make_trainer(tiny_model_dir, tokenizer, tmp_path / "first").train()
    return tmp_path / "first" / "checkpoint-2"


def assert_refused_and_nothing_loaded(trainer, folder, match):
    before = weights_of(trainer)
    with pytest.raises(ConfigError, match=match):
        trainer.train(resume_from_checkpoint=str(folder))
    after = weights_of(trainer)
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_a_checkpoint_of_another_model_is_a_clear_error(tiny_model_dir, tokenizer, tmp_path, checkpoint):
    other = build_tiny_bert(tmp_path / "other", seed=2)  # same architecture, then made wider below
    wider = {name: torch.cat([value, value], dim=-1) if name.endswith("LayerNorm.weight") else value
             for name, value in load_file(other / "model.safetensors").items()}
    save_file(wider, str(checkpoint / "model.safetensors"))
    trainer = make_trainer(tiny_model_dir, tokenizer, tmp_path / "second")
    assert_refused_and_nothing_loaded(trainer, checkpoint, r"do not match the model \(other shape: .*LayerNorm")


def test_weights_under_the_retrievers_own_names_are_refused_not_skipped(tiny_model_dir, tokenizer, tmp_path,
                                                                      checkpoint):
    """What transformers' loader expects (state_dict names) is not what a densekit checkpoint holds; a
    file with other names must fail loudly, not load nothing."""
    renamed = {f"encoder.model.{name}": value for name, value in load_file(checkpoint / "model.safetensors").items()}
    save_file(renamed, str(checkpoint / "model.safetensors"))
    trainer = make_trainer(tiny_model_dir, tokenizer, tmp_path / "second")
    assert_refused_and_nothing_loaded(trainer, checkpoint, r"missing: embeddings\..*unexpected: encoder\.model\.")


def test_a_folder_without_weights_or_an_incomplete_checkpoint_is_a_clear_error(tiny_model_dir, tokenizer, tmp_path,
                                                                              checkpoint):
    trainer = make_trainer(tiny_model_dir, tokenizer, tmp_path / "second")
    (checkpoint / "model.safetensors").unlink()
    assert_refused_and_nothing_loaded(trainer, checkpoint, "has no model.safetensors")
    (checkpoint / "trainer_state.json").unlink()
    assert_refused_and_nothing_loaded(trainer, checkpoint, "incomplete")
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        make_trainer(tiny_model_dir, tokenizer, tmp_path / "empty").train(resume_from_checkpoint=True)


def test_true_picks_the_latest_complete_checkpoint(tiny_model_dir, tokenizer, tmp_path, checkpoint, monkeypatch):
    from densekit.training.trainer import latest_checkpoint

    out = checkpoint.parent
    assert latest_checkpoint(str(out)) == str(out / "checkpoint-4")
    (out / "checkpoint-4" / "trainer_state.json").write_text('{"global_step": 4, "log_hist')  # cut short
    (out / "checkpoint-10").mkdir()  # a save that died before writing anything
    assert latest_checkpoint(str(out)) == str(checkpoint)
    trainer = make_trainer(tiny_model_dir, tokenizer, out)
    loaded = []
    monkeypatch.setattr(trainer, "_load_from_checkpoint", lambda path, model=None: loaded.append(path))
    trainer.train(resume_from_checkpoint="true")  # as the command line passes it
    assert loaded == [str(checkpoint)]


def test_lora_adapters_resume_to_the_uninterrupted_runs_weights(tiny_dropout_model_dir, tokenizer, tmp_path):
    lora = dict(use_peft=True, lora_r=4, lora_target_modules=["query", "value"])
    first = make_trainer(tiny_dropout_model_dir, tokenizer, tmp_path / "first", **lora)
    first.train()
    second = make_trainer(tiny_dropout_model_dir, tokenizer, tmp_path / "second", **lora)
    second.train(resume_from_checkpoint=str(tmp_path / "first" / "checkpoint-2"))
    done, resumed = weights_of(first), weights_of(second)
    assert done.keys() == resumed.keys()
    assert all(torch.allclose(resumed[name], done[name], rtol=0, atol=1e-6) for name in done)
    fresh = make_trainer(tiny_dropout_model_dir, tokenizer, tmp_path / "fresh", **lora)
    lora_names = [name for name in done if "lora_" in name]
    assert lora_names and any(not torch.equal(weights_of(fresh)[n], done[n]) for n in lora_names)
