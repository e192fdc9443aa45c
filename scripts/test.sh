#!/usr/bin/env bash
# Set up, then run the test suite on the CPU with one thread (as CI does).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 AGD_THREADS=1
.venv/bin/python -m pytest -q "$@"
