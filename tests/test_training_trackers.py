"""report_to through the Trainer: TensorBoard event files and an offline wandb run, from `densekit train`."""
from __future__ import annotations

import pytest

from densekit.cli.main import main
from tests.helpers import write_beir


def train_argv(model, beir, out, *extra):
    return ["train", "--model_name_or_path", str(model), "--dataset", str(beir), "--output_dir", str(out),
            "--max_steps", "2", "--per_device_train_batch_size", "2", "--group_size", "2", "--logging_steps", "1",
            "--save_strategy", "no", *extra]


def test_tensorboard_receives_the_training_loss(tiny_model_dir, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is a test dependency; install densekit[test]")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    beir = write_beir(tmp_path / "beir", split="train")
    assert main(train_argv(tiny_model_dir, beir, tmp_path / "out", "--report_to", "tensorboard")) == 0
    events = list(tmp_path.rglob("events.out.tfevents.*"))
    assert events
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    assert len(accumulator.Scalars("train/loss")) == 2


def test_wandb_offline_run_is_written(tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is a test dependency; install densekit[test]")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    beir = write_beir(tmp_path / "beir", split="train")
    assert main(train_argv(tiny_model_dir, beir, tmp_path / "out", "--report_to", "wandb")) == 0
    runs = list((tmp_path / "wandb").rglob("offline-run-*"))
    assert runs and any(p.suffix == ".wandb" for p in runs[0].rglob("*"))
