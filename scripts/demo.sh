#!/usr/bin/env bash
# The README's main-job command: installs densekit with the bundled model, then runs `densekit demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "torch==2.13.0"
python -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -e ".[model]"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec densekit demo "$@"
