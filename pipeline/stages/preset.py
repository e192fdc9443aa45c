"""`agd preset NAME`: params.yaml composed from conf/ for a backend, as `dvc exp run -S backend=NAME`
writes it (the previous file kept as params.yaml.bak); then `dvc repro` runs that backend's stages."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from pipeline import config
from pipeline.config import compose
from pipeline.run import files
from pipeline.run.errors import AGDError


def run(name: str, overrides: list[str], params_file: Path = config.PARAMS_FILE) -> None:
    if name not in compose.backends():
        raise AGDError(f"preset {name}", "unknown backend", f"use one of {', '.join(compose.backends())}")
    text = compose.compose([f"backend={name}", *overrides])
    with tempfile.TemporaryDirectory() as tmp:  # validated like params.yaml before it replaces it
        candidate = Path(tmp) / "params.yaml"
        candidate.write_text(text)
        config.load(candidate)
    if params_file.exists():
        shutil.copy2(params_file, params_file.with_name(params_file.name + ".bak"))
    files.write_text(params_file, text)
    print(f"preset: params.yaml now holds conf/backend/{name}.yaml (previous file: params.yaml.bak)")
