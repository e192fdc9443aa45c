"""`dvc repro` with a params mistake leaves the workspace exactly as it was.

DVC removes a stage's outputs before running its command, so the check has to happen in a stage
of its own that runs first; this drives the real dvc.yaml with the real `dvc` on a finished tiny
project.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from tests.conftest import BIN, dvc


def snapshot(project: Path) -> dict[str, str]:
    files = [p for folder in ("data", "models", "reports") for p in sorted((project / folder).rglob("*")) if p.is_file()]
    files.append(project / "dvc.lock")
    return {str(p.relative_to(project)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.mark.parametrize("section, key, value, message", [
    ("conditions", "w_min", 9.0, "conditions.w_min: w_min 9.0 is above w_max"),
    ("train", "lr", 0.0, "train.lr: must be positive"),
    ("evaluate", "num_steps", 5000, "evaluate.num_steps: 5000 sampler steps"),
    # refusals the stages make, which check makes first (train and samplers would have lost their outputs)
    ("launch", "nproc", 3, "train.batch_size: the global batch 32 does not split evenly over 3 processes"),
    ("samplers", "settings", ["NoSuchScheduler:10"], "samplers.settings[0] 'NoSuchScheduler': not a diffusers"),
    ("samplers", "settings", ["DDIMScheduler:2000"], "samplers.settings[0]: 2000 sampler steps"),
    ("nfe", "steps", [5, 1500], "nfe.steps: 1500 sampler steps"),
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


def test_a_stage_that_fails_after_the_check_keeps_its_uncached_outputs(dvc_project, tmp_path):
    """What `agd check` cannot see (a disk error, a crash) still loses nothing: the outputs DVC does not
    cache are persist: true, so they stay while the stage runs, and the stage replaces them only when it
    has their new contents. Here `agd report` fails as a crash would."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "agd").write_text(f'#!/bin/sh\nif [ "$1" = report ]; then echo "error: no space left" >&2; exit 1; fi\n'
                              f'exec {BIN / "agd"} "$@"\n')
    (fake / "agd").chmod(0o755)
    before = snapshot(dvc_project)
    done = dvc(dvc_project, "repro", "--force", "--single-item", "report", path=fake)
    assert done.returncode != 0 and "no space left" in done.stdout + done.stderr
    assert snapshot(dvc_project) == before  # results.md and the figures are still there, dvc.lock as it was
