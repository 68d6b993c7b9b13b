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
