"""``densekit reader train`` / ``densekit reader predict`` end to end on a tiny results JSON and a tiny BERT."""
from __future__ import annotations

import json

from densekit.cli.main import main
from tests.test_reader_preprocess import results_entries, write_results

TRAIN_FLAGS = ["--sequence_length", "64", "--passages_per_question", "3", "--per_device_train_batch_size", "2",
               "--learning_rate", "2e-3", "--logging_steps", "1", "--use_cpu", "true", "--disable_tqdm", "true"]


def test_train_then_predict_end_to_end(tiny_model_dir, tmp_path, capsys):
    train_file = write_results(tmp_path / "train.json", results_entries(8))
    dev_file = write_results(tmp_path / "dev.json", results_entries(4))
    out = tmp_path / "reader"
    code = main(["reader", "train", "--model_name_or_path", str(tiny_model_dir), "--train_file", str(train_file),
                 "--output_dir", str(out), "--max_steps", "4", "--save_steps", "2", "--dev_file", str(dev_file),
                 "--eval_top_docs", "1", "3", "--passages_per_question_predict", "3", *TRAIN_FLAGS])
    assert code == 0
    printed = capsys.readouterr().out
    assert "densekit reader train: 8 questions" in printed and "4 steps" in printed
    assert "EM@1" in printed and "EM@3" in printed
    assert {"config.json", "model.safetensors", "densekit_reader.json", "checkpoint-2", "checkpoint-4",
            "predictions", "reader_cache"} <= {p.name for p in out.iterdir()}
    metrics = json.loads((out / "predictions" / "metrics.json").read_text())
    assert set(metrics["aggregate"]) == {"EM@1", "EM@3", "F1@1", "F1@3"} and metrics["questions"] == 4

    preds = tmp_path / "preds"
    args = ["reader", "predict", "--model_name_or_path", str(out), "--dev_file", str(dev_file), "--output_dir",
            str(preds), "--eval_top_docs", "1", "3", "--passages_per_question_predict", "3", "--max_answer_length", "4",
            "--reader_cache_dir", str(out / "reader_cache")]
    assert main(args) == 0
    metrics = json.loads((preds / "metrics.json").read_text())
    assert metrics["info"]["sequence_length"] == 64  # taken from the trained reader
    assert metrics["info"]["preprocessed_cache_reused"] is True  # same file, tokenizer and settings as in train
    predictions = json.loads((preds / "predictions.json").read_text())
    assert len(predictions) == 4 and set(predictions[0]["predictions"]) == {"1", "3"}
    for entry in predictions:
        for k, chosen in entry["predictions"].items():
            assert chosen["passage_rank"] < int(k)
            assert len(chosen["prediction"].split()) <= 4
            read = entry["passages"][:int(k)]  # every passage read is listed; the chosen has the top logit
            assert chosen["relevance"] == max(p["relevance"] for p in read)
            assert read[chosen["passage_rank"]]["prediction"] == chosen["prediction"]
        assert [p["rank"] for p in entry["passages"]] == [0, 1, 2]
    report = (preds / "report.md").read_text()
    assert "| 1 |" in report and "| 3 |" in report
    # the prediction of a settled run is reproducible
    assert main([str(tmp_path / "again") if a == str(preds) else a for a in args]) == 0
    assert json.loads((tmp_path / "again" / "predictions.json").read_text()) == predictions

    # resume: --resume_from_checkpoint true continues from the newest checkpoint to a larger max_steps
    code = main(["reader", "train", "--model_name_or_path", str(tiny_model_dir), "--train_file", str(train_file),
                 "--output_dir", str(out), "--max_steps", "6", "--save_steps", "2", "--resume_from_checkpoint", "true",
                 *TRAIN_FLAGS])
    assert code == 0
    assert "6 steps" in capsys.readouterr().out and (out / "checkpoint-6").is_dir()


def test_bad_inputs_and_options_are_one_line_errors(tiny_model_dir, tmp_path, capsys):
    bad = results_entries(2)
    bad[1]["answers"] = "Gustave Eiffel"
    bad_file = write_results(tmp_path / "bad.json", bad)
    base = ["reader", "train", "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path / "o")]
    assert main([*base, "--train_file", str(bad_file)]) == 1
    error = capsys.readouterr().err
    assert f"{bad_file}: entry 1: answers is str" in error and "not a list" in error
    assert main(base) == 1
    assert "--train_file is required" in capsys.readouterr().err
    assert main([*base, "--train_file", str(bad_file), "--passages_per_questions", "4"]) == 1
    assert "did you mean --passages_per_question" in capsys.readouterr().err
    assert main(["reader", "predict", "--model_name_or_path", str(tmp_path), "--dev_file", str(bad_file),
                 "--output_dir", str(tmp_path / "p")]) == 1
    assert "no config.json" in capsys.readouterr().err
    assert main(["reader", "evaluate"]) == 1
    assert "unknown reader action" in capsys.readouterr().err
    nothing = results_entries(1)
    nothing[0]["answers"] = ["not in any passage"]
    empty = write_results(tmp_path / "empty.json", nothing)
    assert main([*base, "--train_file", str(empty), "--sequence_length", "64"]) == 1
    assert "no question has a passage with a locatable answer span" in capsys.readouterr().err
