#!/usr/bin/env bash
# The main job: set up, then run the whole pipeline on the embedded MNIST default with DVC.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 PATH="$PWD/.venv/bin:$PATH"
dvc repro "$@"
dvc metrics show
