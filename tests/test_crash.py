"""Crash safety: SIGKILL the real trajectories and train commands at many moments, then resume."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from pipeline.data.store import TrajectoryStore
from tests.conftest import ROOT, agd, chunk_files


def _spawn(project: Path, command: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", command], cwd=project, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> bool:
    """SIGKILL proc as soon as ready() holds; False if it finished first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.002)
    proc.kill()
    raise AssertionError("timed out waiting for the kill point")


def _check_consistent(store_path: Path, reference: dict[str, bytes]) -> int:
    """Every trajectory marked done is complete and byte-identical to the uninterrupted run."""
    if not (store_path / "zarr.json").exists():
        return 0
    store = TrajectoryStore.open(store_path)
    done = store.done()
    files = chunk_files(store_path)
    for i in np.flatnonzero(done):
        for name in ("x", "target"):
            key = f"{name}/c/{i}/0/0/0/0"
            assert files.get(key) == reference[key], f"trajectory {i} marked done but {name} differs or is missing"
    return int(done.sum())


def test_sigkill_trajectories_at_many_points(project_copy, tiny_project):
    store_path = project_copy / "data" / "trajectories.zarr"
    reference = chunk_files(tiny_project / "data" / "trajectories.zarr")
    shutil.rmtree(store_path)

    def creating():
        return Path(str(store_path) + ".creating").exists()

    def files_at_least(k):
        return lambda: len([p for p in store_path.rglob("*") if p.is_file() and "/c/" in str(p)]) >= k

    # Kill while the store is created, then after 1, 3, 8, 15, 16, 17, 25, 33 and 39 chunk files
    # (x and target chunks of a trajectory are separate files, so odd counts land between them;
    # batch boundaries fall at 16 and 32 files, between a batch's chunks and its done mask).
    points = [("creating", creating)] + [(f"{k} chunk files", files_at_least(k)) for k in (1, 3, 8, 15, 16, 17, 25, 33, 39)]
    history = []
    for label, ready in points:
        before = chunk_files(store_path) if store_path.exists() else {}
        finished_before = _check_consistent(store_path, reference)
        done_before = TrajectoryStore.open(store_path).done() if finished_before else np.zeros(20, bool)
        killed = _kill_when(_spawn(project_copy, "trajectories"), ready)
        finished = _check_consistent(store_path, reference)
        assert finished >= finished_before
        after = chunk_files(store_path) if store_path.exists() else {}
        for i in np.flatnonzero(done_before):  # finished work is never touched again
            for name in ("x", "target"):
                key = f"{name}/c/{i}/0/0/0/0"
                assert after[key] == before[key]
        history.append((label, killed, finished))
    assert sum(killed for _, killed, _ in history) >= 5, history
    agd(project_copy, "trajectories")
    store = TrajectoryStore.open(store_path)
    assert store.is_complete()
    assert chunk_files(store_path) == reference  # every trajectory exactly once, identical to an uninterrupted run
    agd(project_copy, "verify")


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
