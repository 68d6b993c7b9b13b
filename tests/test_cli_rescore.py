"""``densekit rescore`` end to end with a tiny cross-encoder: files, counts, summary line, clear errors."""
from __future__ import annotations

import json

from densekit.cli.main import main
from densekit.data.formats import read_qrels
from densekit.data.qrels import MaterializedQRelConfig, materialize
from tests.helpers import write_beir
from tests.test_rescoring import build_cross_encoder, write_candidates


def test_rescore_command_writes_scores_filters_and_report(tmp_path, capsys):
    beir = write_beir(tmp_path / "beir", split="train")
    teacher = build_cross_encoder(tmp_path / "ce")
    candidates = write_candidates(tmp_path / "mined_qrels.tsv")
    out = tmp_path / "out"
    argv = ["rescore", "--teacher", str(teacher), "--dataset", str(beir), "--candidates", str(candidates),
            "--output_dir", str(out), "--batch_size", "4", "--drop_above", "10", "--drop_margin", "1.0",
            "--encoding_cache_dir", str(tmp_path / "cache"), "--disable_tqdm", "true"]
    assert main(argv) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("densekit rescore: 14 pairs (6 positives) of 3 queries scored by cross-encoder")
    info = json.loads((out / "rescore.json").read_text())
    counts = info["counts"]
    assert counts["negatives"] == counts["kept"] + counts["dropped_drop_above"] + counts["dropped_drop_margin"] == 8
    assert info["settings"]["drop_margin"] == 1.0 and info["teacher"]["kind"] == "cross-encoder"
    assert info["teacher"]["max_length"] == 64  # the teacher's position limit (tokenizer allows 512)
    # the score file reads as qrels with float scores, through MaterializedQRelConfig like any judgments
    materialized = materialize(MaterializedQRelConfig(qrel_path=out / "teacher_scores.tsv",
                                                      corpus_path=beir / "corpus.jsonl",
                                                      query_path=beir / "queries.jsonl"))
    assert materialized.num_judgments == 14
    assert all(isinstance(s, float) for docs in materialized.qrels.values() for s in docs.values())
    assert sum(len(d) for d in read_qrels(out / "filtered_negatives.tsv").values()) == counts["kept"]
    assert (out / "report.md").read_text().startswith("# Teacher rescoring")
    assert main(argv[:-2]) == 0  # a second run reuses every score
    assert json.loads((out / "rescore.json").read_text())["counts"]["computed"] == 0


def test_rescore_bad_inputs_are_one_line_errors(tmp_path, capsys):
    beir = write_beir(tmp_path / "beir", split="train")
    (tmp_path / "no_config").mkdir()
    candidates = write_candidates(tmp_path / "c.tsv", {"q-cats": ["dogs-0", "ghost"]})
    base = ["rescore", "--dataset", str(beir), "--candidates", str(candidates), "--output_dir", str(tmp_path / "o")]
    assert main(base + ["--teacher", str(tmp_path / "no_config")]) == 1
    assert "has no config.json" in capsys.readouterr().err
    teacher = build_cross_encoder(tmp_path / "ce")
    assert main(base + ["--teacher", str(teacher)]) == 1
    err = capsys.readouterr().err
    assert f"{candidates}:3:" in err and "'ghost'" in err
    assert main(base + ["--teacher", str(teacher), "--include_positives", "false", "--drop_margin", "1"]) == 1
    assert "--drop_margin" in capsys.readouterr().err
    assert main(base + ["--teacher", str(teacher), "--teacher_kind", "reranker"]) == 1
    assert "--teacher_kind" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main(["--help"]) == 0 and "rescore" in capsys.readouterr().out


def test_densekit_train_distills_teacher_scores(tmp_path, tiny_model_dir):
    """densekit train --teacher_scores trains with KL on a teacher score file (float scores read exactly) and
    refuses a loss that ignores graded targets; the score file is recorded as the run's negative pool."""
    from densekit.cli.main import main
    from densekit.data.formats import read_qrels
    from tests.helpers import write_beir

    beir = write_beir(tmp_path / "beir", split="train")
    scores = tmp_path / "teacher_scores.tsv"
    with open(scores, "w") as handle:
        handle.write("query-id\tcorpus-id\tscore\n")
        for i, topic in enumerate(("cats", "dogs", "rain", "sun", "bread", "chess")):
            for n in range(3):
                handle.write(f"q-{topic}\t{topic}-{n}\t{3.5 - n - 0.25 * i}\n")
    assert read_qrels(scores)["q-dogs"]["dogs-1"] == 2.25
    assert main(["train", "--model_name_or_path", str(tiny_model_dir), "--dataset", str(beir),
                 "--teacher_scores", str(scores), "--loss", "infonce", "--output_dir", str(tmp_path / "bad")]) == 1
    assert main(["train", "--model_name_or_path", str(tiny_model_dir), "--dataset", str(beir),
                 "--teacher_scores", str(scores), "--loss", "kl", "--group_size", "3", "--max_steps", "2",
                 "--per_device_train_batch_size", "2", "--output_dir", str(tmp_path / "kl"), "--save_strategy", "no",
                 "--report_to", "none"]) == 0
    provenance = (tmp_path / "kl" / "training_provenance.json").read_text()
    assert "teacher_scores.tsv" in provenance or "negatives" in provenance
