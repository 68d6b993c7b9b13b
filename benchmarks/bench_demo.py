"""Time the README's main job, ``densekit demo`` on its built-in default, and print each stage's figures.

    python benchmarks/bench_demo.py --output_dir /tmp/bench_demo            # the full default
    python benchmarks/bench_demo.py --output_dir /tmp/bench_demo -- --dataset ../shared/data/scifact --split dev

Everything after ``--`` goes to ``densekit demo``. The output folder is removed first, so no stage is reused.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("demo_args", nargs="*", help="options for densekit demo (after --)")
    args = parser.parse_args()
    out = Path(args.output_dir)
    shutil.rmtree(out, ignore_errors=True)
    began = time.perf_counter()
    subprocess.run(["densekit", "demo", "--output_dir", str(out), *args.demo_args], check=True)
    seconds = time.perf_counter() - began
    rows = []
    for stage in ("base", "stage1", "stage2"):
        path = out / stage / "metrics.json"
        if path.is_file():
            aggregate = json.loads(path.read_text())["aggregate"]
            rows.append(f"{stage}: " + " ".join(f"{k}={v:.4f}" for k, v in aggregate.items()))
    print("\n".join(rows))
    print(f"bench_demo: {seconds / 60:.1f} min wall, report {out / 'report.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
