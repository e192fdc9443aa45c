#!/usr/bin/env bash
# Create .venv and install the project (torch 2.14.1 / torchvision 0.29.1 as tested; a GPU user
# with their own torch build can install the project into that environment instead).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[test]"
