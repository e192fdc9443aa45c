"""`dvc repro` with a params mistake leaves the workspace exactly as it was.

DVC removes a stage's outputs before running its command, so the check has to happen in a stage
of its own that runs first; this drives the real dvc.yaml with the real `dvc` on a finished tiny
project.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_all
from tests.conftest import ROOT, agd

BIN = Path(sys.executable).parent


def dvc(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "PYTHONPATH": str(ROOT),
           "DVC_NO_ANALYTICS": "1"}
    return subprocess.run([str(BIN / "dvc"), *args], cwd=project, env=env, capture_output=True, text=True,
                          timeout=600)


def snapshot(project: Path) -> dict[str, str]:
    files = [p for folder in ("data", "models", "reports") for p in sorted((project / folder).rglob("*")) if p.is_file()]
    files.append(project / "dvc.lock")
    return {str(p.relative_to(project)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture
def dvc_project(project_copy) -> Path:
    """The finished tiny project under DVC, its dvc.lock recording the outputs as they are."""
    # DVC needs every key it tracks written out: complete the tiny params with their defaults.
    full = {name: dataclasses.asdict(section) for name, section in load_all(project_copy / "params.yaml").items()}
    (project_copy / "params.yaml").write_text(yaml.safe_dump(full, sort_keys=False))
    shutil.copy2(ROOT / "dvc.yaml", project_copy / "dvc.yaml")
    shutil.copytree(ROOT / "pipeline", project_copy / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for args in (["init", "--no-scm", "-q"], ["config", "core.analytics", "false"], ["config", "cache.type", "copy"]):
        assert dvc(project_copy, *args).returncode == 0
    agd(project_copy, "check")
    committed = dvc(project_copy, "commit", "-f", "-q")
    assert committed.returncode == 0, committed.stderr
    status = dvc(project_copy, "status")
    assert "up to date" in status.stdout, status.stdout + status.stderr
    return project_copy


@pytest.mark.parametrize("section, key, value, message", [
    ("conditions", "w_min", 9.0, "conditions.w_min: w_min 9.0 is above w_max"),
    ("train", "lr", 0.0, "train.lr: must be positive"),
    ("evaluate", "num_steps", 5000, "evaluate.num_steps: 5000 sampler steps"),
])
def test_params_mistake_stops_dvc_repro_before_any_output_goes(dvc_project, section, key, value, message):
    doc = yaml.safe_load((dvc_project / "params.yaml").read_text())
    doc[section][key] = value
    (dvc_project / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    before = snapshot(dvc_project)
    done = dvc(dvc_project, "repro")
    assert done.returncode != 0
    assert message in done.stdout + done.stderr
    assert "Running stage 'check'" in done.stdout
    assert snapshot(dvc_project) == before  # conditions.json, adapters, metrics, dvc.lock: all still there
