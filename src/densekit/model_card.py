"""Model cards: a README.md that says what a saved model is, how it was made and how well it does.

Why: an exported folder travels (the Hugging Face Hub, another team's disk) without the run that made it.
The card keeps what is needed to trust and reuse it: the resolved encoding config (pooling, normalization,
max length, prefixes), fingerprints of the training data and of the hard-negative pool, the command line,
and the evaluation table.

Provenance files read here (both optional, looked up in the model folder, then in its parent, which is
the training ``output_dir`` of a ``checkpoint-N`` folder):

* ``training_provenance.json``, written by training (:func:`write_training_provenance`): the data files with
  their SHA-256, one ``fingerprint`` over them, the base model, the command, and the negative pool;
* ``mining.json``, written by a mining run: its ``fingerprint`` identifies the mined negatives.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from densekit.cache import fingerprint, sha256_file
from densekit.errors import InputError
from densekit.files import atomic_write, read_json

CARD_NAME = "README.md"
PROVENANCE_NAME = "training_provenance.json"
MINING_NAME = "mining.json"
PROVENANCE_VERSION = 1


# ----------------------------------------------------------------------------------------- provenance
def write_training_provenance(folder: str | Path, *, data_files: Sequence[str | Path], command: Optional[str] = None,
                              base_model: Optional[str] = None,
                              negative_files: Sequence[str | Path] = ()) -> Path:
    """Record what a training run read into ``folder/training_provenance.json``; returns its path.

    ``data_files`` are hashed (SHA-256 of the bytes, so a renamed copy has the same fingerprint and an
    edited one does not). For each of ``negative_files`` (e.g. ``--negative_qrel_path``), a ``mining.json``
    beside it gives the negative pool's fingerprint; without one, the files' own hash is the fingerprint.
    """
    files = [_file_entry(path) for path in data_files]
    negatives = None
    if negative_files:
        entries = [_file_entry(path) for path in negative_files]
        mined = [_mining_fingerprint(Path(path).parent) for path in negative_files]
        negatives = {"files": entries,
                     "fingerprint": mined[0] if len(set(mined)) == 1 and mined[0] else
                     fingerprint([e["sha256"] for e in entries]),
                     "source": "mining.json beside the negative files" if all(mined) else
                     "SHA-256 of the negative files"}
    record = {"version": PROVENANCE_VERSION, "base_model": base_model, "command": command,
              "data": {"files": files, "fingerprint": fingerprint([e["sha256"] for e in files])},
              "negatives": negatives}
    path = Path(folder) / PROVENANCE_NAME
    with atomic_write(path) as handle:
        json.dump(record, handle, indent=2)
        handle.write("\n")
    return path


def _file_entry(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise InputError("training data file not found.", path=path, fix="check the data paths of the run.")
    return {"path": str(path), "sha256": sha256_file(path), "bytes": path.stat().st_size}


def _mining_fingerprint(folder: Path) -> Optional[str]:
    path = folder / MINING_NAME
    if not path.is_file():
        return None
    value = read_json(path, fix="run the mining again, or remove the broken mining.json").get("fingerprint")
    return str(value) if value else None


def read_provenance(model_dir: str | Path) -> tuple[Optional[dict], Optional[dict]]:
    """``(training_data, negatives)`` recorded for a model folder, each None when nothing says.

    ``training_data`` is the ``data`` record of ``training_provenance.json`` (plus ``base_model`` and
    ``command``); ``negatives`` its ``negatives`` record, else ``{"fingerprint": ...}`` from a
    ``mining.json`` in the folder or its parent.
    """
    training = negatives = None
    for folder in _candidate_folders(model_dir):
        path = folder / PROVENANCE_NAME
        if path.is_file():
            record = read_json(path, fix=f"remove the broken {PROVENANCE_NAME} or train again")
            data = record.get("data")
            training = {**data, "base_model": record.get("base_model"), "command": record.get("command"),
                        "recorded_in": str(path)} if data else None
            negatives = record.get("negatives")
            break
    if negatives is None:
        for folder in _candidate_folders(model_dir):
            mined = _mining_fingerprint(folder)
            if mined:
                negatives = {"fingerprint": mined, "source": str(folder / MINING_NAME)}
                break
    return training, negatives


def _candidate_folders(model_dir: str | Path) -> list[Path]:
    folder = Path(model_dir).resolve()
    return [folder, folder.parent]


def read_evaluation(path: str | Path) -> dict[str, Any]:
    """Metrics for the card from a ``metrics.json`` (``densekit evaluate`` output, or a flat name -> value map)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("metrics file not found.", path=path,
                         fix="give the metrics.json written by `densekit evaluate` (its --output_dir).")
    payload = read_json(path, fix="give the metrics.json written by `densekit evaluate`")
    metrics = payload.get("aggregate", payload) if isinstance(payload, dict) else None
    if not isinstance(metrics, dict) or not metrics or \
            not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values()):
        raise InputError("expected a metrics.json with an 'aggregate' mapping of measure names to numbers.",
                         path=path, fix="give the metrics.json written by `densekit evaluate`.")
    settings = payload.get("settings", {}) if "aggregate" in payload else {}
    return {"metrics": {str(k): float(v) for k, v in metrics.items()}, "settings": settings, "source": str(path)}


# ------------------------------------------------------------------------------------------ the card
def write_model_card(folder: str | Path, *, command: str, config: Mapping[str, Any],
                     training_data: Optional[Mapping[str, Any]] = None,
                     evaluation: Optional[Mapping[str, Any]] = None,
                     negatives: Optional[Mapping[str, Any]] = None,
                     library_name: str = "sentence-transformers", title: Optional[str] = None) -> Path:
    """Write ``folder/README.md``: YAML front matter, usage, config, data, negatives, command, evaluation.

    ``config`` is the resolved encoding config (pooling, normalize, max_length, query_prefix ...);
    ``training_data`` / ``negatives`` as :func:`read_provenance` returns them; ``evaluation`` as
    :func:`read_evaluation` returns it (or a plain name -> value map). Unknown parts say so.
    """
    folder = Path(folder)
    title = title or folder.resolve().name
    parts = [_front_matter(library_name, training_data), f"# {title}\n",
             "A dense retriever (bi-encoder) trained or exported with densekit.\n",
             _usage(library_name, config), _config_section(config), _data_section(training_data),
             _negatives_section(negatives), f"## Command\n\n```\n{command}\n```\n", _evaluation_section(evaluation)]
    path = folder / CARD_NAME
    with atomic_write(path) as handle:
        handle.write("\n".join(parts))
    return path


def _front_matter(library_name: str, training_data: Optional[Mapping[str, Any]]) -> str:
    tags = ["densekit", "dense-retrieval", "feature-extraction"]
    lines = ["---", f"library_name: {library_name}"]
    if library_name == "sentence-transformers":
        tags += ["sentence-transformers", "sentence-similarity"]
        lines.append("pipeline_tag: sentence-similarity")
    base = (training_data or {}).get("base_model")
    if base and not Path(str(base)).is_absolute():  # a Hub name, not a path on the machine that trained it
        lines.append(f"base_model: {base}")
    lines.append("tags:")
    lines += [f"- {tag}" for tag in tags]
    lines.append("---\n")
    return "\n".join(lines)


def _usage(library_name: str, config: Mapping[str, Any]) -> str:
    if library_name == "transformers":  # densekit export --format dpr: a DPR question/context encoder pair
        return ("## Usage\n\n```python\nfrom transformers import AutoTokenizer, DPRContextEncoder, DPRQuestionEncoder\n"
                "tokenizer = AutoTokenizer.from_pretrained(\"PATH/question_encoder\")\n"
                "question_encoder = DPRQuestionEncoder.from_pretrained(\"PATH/question_encoder\")\n"
                "ctx_encoder = DPRContextEncoder.from_pretrained(\"PATH/ctx_encoder\")\n"
                "queries = question_encoder(**tokenizer([\"how do cats purr?\"], return_tensors=\"pt\")).pooler_output\n"
                "passages = ctx_encoder(**tokenizer([\"Cats purr by ...\"], return_tensors=\"pt\")).pooler_output\n"
                "scores = queries @ passages.T\n```\n\nIn densekit: `ModelArguments(query_model_name_or_path=\"PATH/"
                "question_encoder\", passage_model_name_or_path=\"PATH/ctx_encoder\")`.\n")
    if library_name != "sentence-transformers":
        return ("## Usage\n\n```python\nfrom densekit import BiEncoderRetriever\n"
                "model = BiEncoderRetriever.from_pretrained(\"PATH\")\n```\n")
    query = ', prompt_name="query"' if config.get("query_prefix") else ""
    document = ', prompt_name="document"' if config.get("passage_prefix") else ""
    return ("## Usage\n\n```python\nfrom sentence_transformers import SentenceTransformer\n"
            "model = SentenceTransformer(\"PATH\")\n"
            f"queries = model.encode([\"how do cats purr?\"]{query})\n"
            f"passages = model.encode([\"Cats purr by ...\"]{document})\n"
            "scores = queries @ passages.T\n```\n")


def _config_section(config: Mapping[str, Any]) -> str:
    rows = [f"| {name} | {_cell(value)} |" for name, value in config.items()]
    return "## Configuration\n\n| setting | value |\n|---|---|\n" + "\n".join(rows) + "\n"


def _data_section(training_data: Optional[Mapping[str, Any]]) -> str:
    if not training_data:
        return (f"## Training data\n\nNot recorded (no {PROVENANCE_NAME} beside the model or in its training "
                "folder).\n")
    lines = ["## Training data\n", f"Fingerprint: `{training_data.get('fingerprint', 'unknown')}`\n"]
    if training_data.get("base_model"):
        lines.append(f"Base model: `{training_data['base_model']}`\n")
    files = training_data.get("files") or []
    if files:
        lines.append("| file | sha256 | bytes |\n|---|---|---|")
        lines += [f"| `{f.get('path')}` | `{f.get('sha256', '')[:16]}` | {f.get('bytes', '')} |" for f in files]
        lines.append("")
    if training_data.get("command"):
        lines.append(f"Training command:\n\n```\n{training_data['command']}\n```\n")
    return "\n".join(lines)


def _negatives_section(negatives: Optional[Mapping[str, Any]]) -> str:
    if not negatives:
        return "## Hard negatives\n\nNot recorded (random or in-batch negatives, or no provenance file).\n"
    lines = ["## Hard negatives\n", f"Negative pool fingerprint: `{negatives.get('fingerprint', 'unknown')}`"
             + (f" (from {negatives['source']})" if negatives.get("source") else "") + "\n"]
    for entry in negatives.get("files") or []:
        lines.append(f"- `{entry.get('path')}` (`{entry.get('sha256', '')[:16]}`)")
    return "\n".join(lines) + ("\n" if negatives.get("files") else "")


def _evaluation_section(evaluation: Optional[Mapping[str, Any]]) -> str:
    if not evaluation:
        return "## Evaluation\n\nNo evaluation given (densekit export --metrics metrics.json adds one).\n"
    metrics = evaluation.get("metrics", evaluation)
    lines = ["## Evaluation\n", "| measure | value |\n|---|---|"]
    lines += [f"| {name} | {value:.4f} |" for name, value in metrics.items()
              if isinstance(value, (int, float)) and math.isfinite(value)]
    settings = evaluation.get("settings") or {}
    shown = {k: settings[k] for k in ("num_queries", "num_documents", "search_topk") if k in settings}
    if shown or evaluation.get("source"):
        lines.append("")
        lines.append(", ".join(f"{k}: {v}" for k, v in shown.items())
                     + (f" (from {evaluation['source']})" if evaluation.get("source") else ""))
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    """A value shown in a Markdown table cell (quotes keep prefixes with spaces visible)."""
    text = json.dumps(value) if isinstance(value, str) else str(value)
    return text.replace("|", "\\|")
