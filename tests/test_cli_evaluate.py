"""The ``densekit`` command: evaluate from flags or a YAML file, the demo, and errors as one clear line."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from densekit.cli.main import main
from tests.helpers import write_beir


def test_evaluate_from_flags_writes_results_and_summary(tiny_model_dir, tmp_path, capsys):
    beir = write_beir(tmp_path / "beir", split="dev")
    rc = main(["evaluate", "--model_name_or_path", str(tiny_model_dir), "--dataset", str(beir), "--split", "dev",
               "--output_dir", str(tmp_path / "out"), "--measures", "ndcg_cut.10", "recall.100",
               "--disable_tqdm", "true"])
    assert rc == 0
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert last_line.startswith("densekit evaluate: nDCG@10=") and "6 queries, 18 documents" in last_line
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(metrics["aggregate"]) == {"nDCG@10", "Recall@100"}
    assert len(metrics["per_query"]["nDCG@10"]) == 6
    lines = (tmp_path / "out" / "run.trec").read_text().splitlines()
    assert lines[0].split()[1] == "Q0" and lines[0].split()[3] == "1" and lines[0].split()[5] == "densekit"


def test_evaluate_from_yaml_with_flag_override(tiny_model_dir, tmp_path):
    beir = write_beir(tmp_path / "beir")
    config = tmp_path / "eval.yaml"
    config.write_text(
        f"model_name_or_path: {tiny_model_dir}\ndataset: {beir}\noutput_dir: {tmp_path / 'ignored'}\n"
        "measures: [nDCG@5, P@5]\nsearch_topk: 5\ndisable_tqdm: true\n", encoding="utf-8")
    assert main(["evaluate", str(config), "--output_dir", str(tmp_path / "chosen")]) == 0
    metrics = json.loads((tmp_path / "chosen" / "metrics.json").read_text())
    assert set(metrics["aggregate"]) == {"nDCG@5", "P@5"} and metrics["settings"]["search_topk"] == 5
    assert not (tmp_path / "ignored").exists()


def test_yaml_with_unknown_option_is_reported(tmp_path, capsys):
    config = tmp_path / "eval.yaml"
    config.write_text("model_name_or_path: x\ndatset: typo\n", encoding="utf-8")
    assert main(["evaluate", str(config)]) == 1
    assert "datset" in capsys.readouterr().err


def test_bad_qrel_line_is_one_error_line_with_file_and_line(tiny_model_dir, tmp_path, capsys):
    beir = write_beir(tmp_path / "beir")
    with open(beir / "qrels" / "test.tsv", "a", encoding="utf-8") as handle:
        handle.write("q-cats\tcats-2\tvery\n")
    rc = main(["evaluate", "--model_name_or_path", str(tiny_model_dir), "--dataset", str(beir),
               "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 1
    assert "test.tsv:14" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "run.trec").exists()


def test_missing_dataset_folder_is_reported(tiny_model_dir, tmp_path, capsys):
    rc = main(["evaluate", "--model_name_or_path", str(tiny_model_dir), "--dataset", str(tmp_path / "nope")])
    assert rc == 1 and "nope" in capsys.readouterr().err


def test_demo_runs_the_tutorial_on_the_builtin_collection(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """All four stages with a tiny model: stage folders, the top report with significance and plots, a better
    stage 2 than base (a random tiny model learns the task), and a rerun that reuses every stage."""
    monkeypatch.setenv("DENSEKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    argv = ["demo", "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out), "--epochs", "2",
            "--stage2_epochs", "1", "--batch_size", "32", "--chunk_size", "16", "--learning_rate", "1e-3",
            "--stage2_learning_rate", "5e-4", "--mine_relative_margin", "0"]  # a tiny model's scores all bunch up
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "densekit evaluate: nDCG@10=" in printed and "densekit demo: base nDCG@10=" in printed
    for stage in ("base", "stage1", "stage2"):
        metrics = json.loads((out / stage / "metrics.json").read_text())
        assert metrics["settings"]["num_queries"] > 100 and metrics["settings"]["num_documents"] > 1000
        assert (out / stage / "run.trec").is_file() and (out / stage / "command.txt").is_file()
    for stage in ("stage1", "stage2"):
        assert (out / stage / "model" / "densekit_config.json").is_file()
        assert (out / stage / "model" / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "mined" / "mined_qrels.tsv").is_file() and (out / "mined" / "audit.md").is_file()
    report = (out / "report.md").read_text()
    assert "## Changes and their significance" in report and "base -> stage2" in report
    assert (out / "metrics_at_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ndcg = {s: json.loads((out / s / "metrics.json").read_text())["aggregate"]["nDCG@10"] for s in ("base", "stage2")}
    assert ndcg["stage2"] > ndcg["base"]
    assert main(argv) == 0  # the same command again: every stage reused, nothing retrained
    assert capsys.readouterr().out.count("reused from an earlier run") == 6


def test_demo_picks_the_stage1_recipe_from_the_training_judgments(tmp_path):
    """auto: multi-positive with many judged positives per training query, one ANCE round with about one;
    unset stage-1 settings come from the recipe, given ones stay."""
    from densekit.cli.demo import DemoArguments, resolve_recipe

    many = write_beir(tmp_path / "many", split="train")  # 2 judged positives per query
    demo = DemoArguments(dataset=str(many))
    assert resolve_recipe(demo, many) == "multi_positive"
    assert (demo.epochs, demo.batch_size, demo.learning_rate, demo.train_passage_max_len) == (2.0, 64, 5e-5, 256)
    builtin = DemoArguments()  # the built-in collection keeps the stage 1 its 10-minute figure was measured with
    assert resolve_recipe(builtin, many) == "multi_positive"
    assert (builtin.epochs, builtin.batch_size, builtin.learning_rate, builtin.train_passage_max_len) == (
        1.0, 64, 2e-5, 128)
    one = write_beir(tmp_path / "one", split="dev")
    (one / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq-cats\tcats-0\t1\nq-dogs\tdogs-0\t1\nq-rain\train-0\t1\n", encoding="utf-8")
    demo = DemoArguments(dataset=str(one), learning_rate=1e-4)
    assert resolve_recipe(demo, one) == "mined"
    assert (demo.epochs, demo.batch_size, demo.learning_rate, demo.train_passage_max_len) == (3.0, 32, 1e-4, 128)
    demo = DemoArguments(dataset=str(one), stage1_recipe="multi_positive", train_passage_max_len=160)
    assert resolve_recipe(demo, one) == "multi_positive" and demo.batch_size == 64
    assert demo.train_passage_max_len == 160  # given on the command line: kept


def test_demo_mined_recipe_trains_stage1_on_negatives_mined_with_the_base_model(tiny_model_dir, tmp_path, capsys):
    beir = write_beir(tmp_path / "beir", split="dev")
    (beir / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q-{t}\t{t}-0\t1\n" for t in ("cats", "dogs", "rain", "sun")),
        encoding="utf-8")
    out = tmp_path / "demo"
    argv = ["demo", "--model_name_or_path", str(tiny_model_dir), "--dataset", str(beir), "--split", "dev",
            "--output_dir", str(out), "--stages", "base", "stage1", "--batch_size", "4", "--chunk_size", "4",
            "--epochs", "1", "--stage1_mine_depth", "5"]
    assert main(argv) == 0
    assert "stage-1 recipe mined" in capsys.readouterr().out
    negatives = (out / "stage1" / "negatives" / "mined_qrels.tsv").read_text().splitlines()[1:]
    judged = {("q-cats", "cats-0"), ("q-dogs", "dogs-0"), ("q-rain", "rain-0"), ("q-sun", "sun-0")}
    pairs = [tuple(line.split("\t")[:2]) for line in negatives]
    assert pairs and not judged & set(pairs) and all(sum(p[0] == q for p in pairs) <= 5 for q, _ in judged)
    command = (out / "stage1" / "model" / "command.txt").read_text()
    assert f"--negative_qrel_path {out / 'stage1' / 'negatives' / 'mined_qrels.tsv'}" in command
    assert "--group_size 2" in command and "multi_positive" not in command and "--learning_rate 5e-05" in command
    assert json.loads((out / "stage1" / "metrics.json").read_text())["aggregate"]["nDCG@10"] >= 0
    assert main(argv) == 0  # resumes: the mining and the training are reused
    assert capsys.readouterr().out.count("reused from an earlier run") == 4


def test_demo_rejects_an_unknown_stage1_recipe(tiny_model_dir, tmp_path, capsys):
    beir = write_beir(tmp_path / "beir", split="train")
    assert main(["demo", "--model_name_or_path", str(tiny_model_dir), "--dataset", str(beir), "--split", "train",
                 "--stage1_recipe", "ance"]) == 1
    assert "--stage1_recipe ance" in capsys.readouterr().err


def test_demo_refuses_a_dataset_without_a_train_split(tiny_model_dir, tmp_path, capsys):
    beir = write_beir(tmp_path / "beir")
    assert main(["demo", "--model_name_or_path", str(tiny_model_dir), "--dataset", str(beir)]) == 1
    assert "train.tsv does not exist" in capsys.readouterr().err


def test_console_script_lists_commands_and_rejects_unknown_ones():
    help_text = subprocess.run(["densekit", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("evaluate", "demo"):
        assert command in help_text
    bad = subprocess.run([sys.executable, "-m", "densekit.cli.main", "evalute"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown command" in bad.stderr


@pytest.mark.parametrize("command", ["evaluate", "train", "encode", "search", "mine", "convert", "demo"])
def test_every_command_prints_its_help(command, capsys):
    from densekit.cli.main import COMMANDS

    assert command in COMMANDS
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "--" in capsys.readouterr().out
