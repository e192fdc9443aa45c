"""Crash safety of training: SIGKILL the real `agd train` after a checkpoint, then resume to the same bytes."""

from __future__ import annotations

import os
import shutil

import yaml

from tests.conftest import agd
from tests.crash_helpers import _kill_when, _spawn


def test_sigkill_training_resumes_from_checkpoint(project_copy, tmp_path):
    doc = yaml.safe_load((project_copy / "params.yaml").read_text())
    doc["train"].update(steps=240, checkpoint_every=40)
    (project_copy / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    reference = tmp_path / "reference"
    shutil.copytree(project_copy, reference, copy_function=lambda s, d: os.link(s, d) if "/data/" in s else shutil.copy2(s, d))
    agd(reference, "train")

    checkpoint = project_copy / "checkpoints" / "train.pt"
    import torch

    def past_first_checkpoint():
        if not checkpoint.exists():
            return False
        try:
            return torch.load(checkpoint, weights_only=False)["step"] >= 80
        except Exception:  # being replaced right now
            return False

    assert _kill_when(_spawn(project_copy, "train"), past_first_checkpoint), "training finished before the kill"
    step = torch.load(checkpoint, weights_only=False)["step"]
    assert 80 <= step < 240
    resumed = agd(project_copy, "train")
    assert f"resuming from checkpoints/train.pt at step {step}" in resumed.stderr
    assert (project_copy / "models/adapters/adapters.safetensors").read_bytes() == \
        (reference / "models/adapters/adapters.safetensors").read_bytes()
    assert '"steps": 240' in (project_copy / "reports/train.json").read_text()
    assert not checkpoint.exists()
