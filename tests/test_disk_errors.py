"""A disk that refuses (full, read-only) ends a stage in one error line naming the path and the cause,
with the data left as it was and the stage resumable: on real small filesystems (tmpfs, a read-only
bind mount) where the machine lets the tests mount them, and through the same code path otherwise."""

from __future__ import annotations

import errno
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from pipeline.data.store import TrajectoryStore
from tests.conftest import agd, chunk_files

STORE = "data/trajectories.zarr"


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@contextmanager
def mounted(*args: str, at: Path):
    if not _mount(*args, str(at)):
        pytest.skip("this machine does not let the tests mount filesystems (needs root)")
    try:
        yield at
    finally:
        subprocess.run(["umount", "-l", str(at)], capture_output=True)


def _one_error_line(done) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def test_a_full_disk_during_the_checkpoint_write_is_one_line_and_training_resumes(project_copy, tiny_project):
    adapters = (project_copy / "models/adapters/adapters.safetensors").read_bytes()
    (project_copy / "checkpoints").mkdir(exist_ok=True)  # kept (empty) by the finished run
    with mounted("-t", "tmpfs", "-o", "size=64k", "tmpfs", at=project_copy / "checkpoints"):
        line = _one_error_line(agd(project_copy, "train", check=False))
    assert "checkpoints/" in line and "No space left on device" in line and "Fix: free space" in line
    assert (project_copy / "models/adapters/adapters.safetensors").read_bytes() == adapters
    agd(project_copy, "train")  # with the space back: the same adapters as the uninterrupted run
    assert (project_copy / "models/adapters/adapters.safetensors").read_bytes() == \
        (tiny_project / "models/adapters/adapters.safetensors").read_bytes()


def test_a_store_that_turns_read_only_mid_collection_is_one_line_and_collection_resumes(project_copy, tiny_project):
    store = project_copy / STORE
    TrajectoryStore.open(store, mode="r+").unmark([3, 4, 5])  # three trajectories still to make
    with mounted("--bind", str(store), at=store):
        if not _mount("-o", "remount,ro,bind", str(store)):
            pytest.skip("this machine does not let the tests remount read-only")
        line = _one_error_line(agd(project_copy, "trajectories", check=False))
    assert str(STORE) in line and "Read-only file system" in line and "Fix: point the output" in line
    agd(project_copy, "trajectories")  # writable again: it makes the three, and nothing else changes
    assert chunk_files(store) == chunk_files(tiny_project / STORE)


def test_a_refusal_of_the_disk_inside_a_stage_is_one_line(project_copy, monkeypatch):
    """The same path without mounting: the store's writer meets a read-only filesystem."""
    def refuse(self, indices, arrays):
        raise OSError(errno.EROFS, "Read-only file system", str(self.path / "x/c/3/0/0/0/0"))

    TrajectoryStore.open(project_copy / STORE, mode="r+").unmark([3])
    monkeypatch.setattr(TrajectoryStore, "write", refuse)
    line = _one_error_line(agd(project_copy, "trajectories", check=False))
    assert "x/c/3/0/0/0/0: Read-only file system. Fix: point the output" in line
    assert not TrajectoryStore.open(project_copy / STORE).done()[3]  # still to make, nothing marked
