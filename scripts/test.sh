#!/usr/bin/env bash
# Set up, then run the test suite on the CPU with one thread (as CI does).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 AGD_THREADS=1
# one worker per core (pytest-xdist); a module's tests stay on one worker, which builds its fixtures once
.venv/bin/python -m pytest -q -n "${AGD_TEST_WORKERS:-auto}" --dist loadscope "$@"
