"""Crash safety of collection: SIGKILL the real `agd trajectories` at many moments, then resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from pipeline.data.store import TrajectoryStore
from tests.conftest import agd, chunk_files
from tests.crash_helpers import _kill_when, _spawn


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
