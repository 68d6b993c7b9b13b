#!/usr/bin/env bash
# The README's test command: installs densekit with its test extras on this machine's Python, then runs pytest.
# torch is pinned first so that pip takes the local CPU build instead of downloading a CUDA one.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "torch==2.13.0"
python -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -e ".[test]"
python -c "import densekit, torch, transformers, pytrec_eval, faiss, sentence_transformers" 
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec python -m pytest -q "$@"
