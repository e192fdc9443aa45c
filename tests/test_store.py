"""The trajectory store: round trip, refusal to rewrite, resume after an interruption, one writer."""

import shutil

import numpy as np
import pytest

from pipeline.data.store import StoreLock, TrajectoryStore
from pipeline.run.errors import AGDError
from tests.conftest import agd, chunk_files


def _make(tmp_path, n=5, steps=3):
    rng = np.random.default_rng(0)
    store = TrajectoryStore.create(tmp_path / "s.zarr", {"backend": "test"}, steps, (1, 4, 4), (2, 4, 4),
                                   np.arange(steps)[::-1] * 100, rng.uniform(1, 5, n).astype(np.float32),
                                   np.arange(n), {"labels": np.arange(n) % 3})
    return store, rng


def test_round_trip(tmp_path):
    store, rng = _make(tmp_path)
    x = rng.standard_normal((2, 3, 1, 4, 4)).astype(np.float32)
    target = rng.standard_normal((2, 3, 2, 4, 4)).astype(np.float32)
    store.write([1, 3], {"x": x, "target": target})
    reopened = TrajectoryStore.open(tmp_path / "s.zarr")
    assert reopened.done().tolist() == [False, True, False, True, False]
    np.testing.assert_array_equal(reopened.read(3)["x"], x[1])
    np.testing.assert_array_equal(reopened.read(1)["target"], target[0])
    meta = reopened.meta()
    assert meta["cond/labels"].tolist() == [0, 1, 2, 0, 1]
    assert meta["t"].tolist() == [200, 100, 0]
    assert reopened.attrs["format_version"] == 1 and reopened.attrs["backend"] == "test"
    with pytest.raises(RuntimeError, match="finished already"):
        store.write([3], {"x": x[:1], "target": target[:1]})  # finished trajectories are never rewritten


def test_one_chunk_file_per_trajectory(tiny_project):
    path = tiny_project / "data" / "trajectories.zarr"
    n = len(TrajectoryStore.open(path))
    for name in ("x", "target"):
        files = [p for p in (path / name).rglob("*") if p.is_file() and p.name != "zarr.json"]
        assert len(files) == n


def test_resume_after_interruption(project_copy, tiny_project, monkeypatch):
    """Interrupt after the first batch; the re-run writes only what is missing, byte for byte."""
    from pipeline import config
    from pipeline.stages import trajectories

    path = project_copy / "data" / "trajectories.zarr"
    shutil.rmtree(path)
    monkeypatch.chdir(project_copy)
    calls = {"n": 0}
    original = TrajectoryStore.write

    def write_then_die(self, indices, arrays):
        if calls["n"] == 1:
            raise KeyboardInterrupt  # as if the machine went away during the second batch
        calls["n"] += 1
        original(self, indices, arrays)

    monkeypatch.setattr(TrajectoryStore, "write", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        trajectories.run(config.load())
    monkeypatch.setattr(TrajectoryStore, "write", original)
    interrupted = TrajectoryStore.open(path)
    batch = 8
    assert interrupted.done().tolist() == [True] * batch + [False] * (len(interrupted) - batch)
    finished_before = chunk_files(path)

    written = []
    monkeypatch.setattr(TrajectoryStore, "write", lambda self, idx, arr: (written.extend(idx), original(self, idx, arr)))
    trajectories.run(config.load())
    assert sorted(written) == list(range(batch, len(interrupted)))  # only what was missing, each once
    after = chunk_files(path)
    for name in ("x", "target"):
        for i in range(batch):
            key = f"{name}/c/{i}/0/0/0/0"
            assert after[key] == finished_before[key]  # finished trajectories untouched
    uninterrupted = chunk_files(tiny_project / "data" / "trajectories.zarr")
    assert after == uninterrupted  # the resumed store equals an uninterrupted one, byte for byte


def test_second_writer_is_refused(project_copy):
    with StoreLock(project_copy / "data" / "trajectories.zarr"):
        done = agd(project_copy, "trajectories", check=False)
    assert done.returncode == 2
    assert "another process is writing this store" in done.stderr


def test_open_refuses_what_is_not_a_store(tmp_path):
    with pytest.raises(AGDError, match="not a trajectory store"):
        TrajectoryStore.open(tmp_path)


def test_store_attributes_do_not_depend_on_the_process(tiny_base):
    """Attributes are compared to decide resume vs rebuild: they must not vary with hash seeds."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = ("import json; from pipeline.backends.loading import load_base; from pipeline.data.provenance import jsonable; "
            "from pipeline.backends.schedulers import make_scheduler; "
            f"f = load_base('mnist-dit', {str(tiny_base)!r}); "
            "print(json.dumps(jsonable(make_scheduler('DPMSolverMultistepScheduler', f.scheduler_config, 5).config)))")
    runs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": seed})
            for seed in ("1", "2", "3")]  # side by side: each is an interpreter's start-up
    outputs = {run.communicate(timeout=300)[0] for run in runs}
    assert [run.returncode for run in runs] == [0, 0, 0]
    assert len(outputs) == 1
