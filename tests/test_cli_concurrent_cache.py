"""Two `densekit evaluate` processes with different models and one cache folder both give their solo results."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import build_tiny_bert
from tests.helpers import write_beir


def evaluate_command(model, beir, out, cache):
    return [sys.executable, "-m", "densekit.cli.main", "evaluate", "--model_name_or_path", str(model),
            "--dataset", str(beir), "--output_dir", str(out), "--encoding_cache_dir", str(cache),
            "--encoding_block_size", "2", "--per_device_eval_batch_size", "2", "--search_topk", "10",
            "--disable_tqdm", "true"]


def test_concurrent_evaluations_sharing_a_cache_equal_their_solo_runs(tmp_path):
    beir = write_beir(tmp_path / "beir", graded=True)
    models = [build_tiny_bert(tmp_path / f"model{seed}", seed=seed) for seed in (1, 2)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    def run_both(outputs, caches):
        procs = [subprocess.Popen(evaluate_command(model, beir, out, cache), env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE) for model, out, cache in zip(models, outputs, caches)]
        for proc in procs:
            _, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err.decode()

    run_both([tmp_path / "solo0", tmp_path / "solo1"], [tmp_path / "cache_solo0", tmp_path / "cache_solo1"])
    run_both([tmp_path / "shared0", tmp_path / "shared1"], [tmp_path / "cache", tmp_path / "cache"])
    for i in range(2):
        solo = json.loads((tmp_path / f"solo{i}" / "metrics.json").read_text())
        shared = json.loads((tmp_path / f"shared{i}" / "metrics.json").read_text())
        assert shared["aggregate"] == solo["aggregate"]
        assert shared["per_query"] == solo["per_query"]
        assert (tmp_path / f"shared{i}" / "run.trec").read_text() == (tmp_path / f"solo{i}" / "run.trec").read_text()
    solo = [json.loads((tmp_path / f"solo{i}" / "metrics.json").read_text())["aggregate"] for i in range(2)]
    assert solo[0] != solo[1]  # the two models really differ, so a mix-up would show
