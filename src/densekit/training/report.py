"""The report a training folder leaves: what was trained on, how texts were encoded, how the loss went.

``densekit train`` writes ``report.md``, ``training_log.json`` (the Trainer's log history: loss, learning
rate, grad norm and any eval metric per logged step) and ``training_curves.png`` next to the model, so the
folder explains itself without the terminal output of the run.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from densekit.files import atomic_write


def write_training_report(output_dir: str | Path, *, log_history: Sequence[Mapping[str, Any]],
                          settings: Mapping[str, Any], metrics: Mapping[str, Any]) -> Path:
    """Write training_log.json, training_curves.png (matplotlib permitting) and report.md into ``output_dir``."""
    from densekit.evaluation import plots
    from densekit.model_card import read_provenance

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "training_log.json") as handle:
        json.dump(list(log_history), handle, indent=1)
    lines = ["# densekit train", ""]
    if metrics:
        lines += ["| training | value |", "| --- | --- |"]
        lines += [f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |"
                  for key, value in metrics.items()]
        lines.append("")
    if plots.available() and any("loss" in entry for entry in log_history):
        plots.plot_training_curves(log_history, out / "training_curves.png")
        lines += ["![training curves](training_curves.png)", ""]
    training_data, negatives = read_provenance(out)
    if training_data or negatives:
        lines += ["## Data fingerprints", "", "| data | fingerprint |", "| --- | --- |"]
        if training_data:
            lines.append(f"| training data | {training_data.get('fingerprint')} |")
            lines += [f"| {Path(f['path']).name} | {f.get('sha256', '')} |" for f in training_data.get("files", [])]
        if negatives:
            lines.append(f"| negative pool | {negatives.get('fingerprint')} |")
        lines.append("")
    lines += ["## Settings (resolved)", "", "| setting | value |", "| --- | --- |"]
    lines += [f"| {key} | {value} |" for key, value in settings.items()]
    with atomic_write(out / "report.md") as handle:
        handle.write("\n".join(lines) + "\n")
    return out / "report.md"
