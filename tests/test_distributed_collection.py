"""Collection on several processes (launch.nproc, torchrun, gloo on the CPU): the sharded store equals the
single-process store byte for byte, a killed rank resumes, an old one-chunk mask is refused."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

from pipeline.data.store import TrajectoryStore
from tests.conftest import ROOT, agd, set_params
from tests.distributed_helpers import STORE, _copy, _files, _rank_pids


def test_two_processes_write_the_single_process_store_byte_for_byte(project_copy, tiny_project):
    shutil.rmtree(project_copy / STORE)
    set_params(project_copy, **{"launch.nproc": 2})
    done = agd(project_copy, "trajectories", subprocess=True)  # torchrun starts the ranks
    assert "starting 2 processes" in done.stderr and "rank 1 of 2" in done.stderr, done.stderr
    assert _files(project_copy / STORE) == _files(tiny_project / STORE)


def test_a_killed_rank_resumes_with_nothing_lost_or_duplicated(project_copy, tmp_path):
    """SIGKILL rank 1 mid-collection (torchrun then stops rank 0); the re-run finishes the store, making
    only what was unfinished, and it equals one process's store byte for byte."""
    # 20 batches of one trajectory, 10 steps each: room to kill in between on a loaded machine
    set_params(project_copy, **{"trajectories.batch_size": 1, "trajectories.num_steps": 10})
    reference = _copy(project_copy, tmp_path / "reference")
    shutil.rmtree(reference / STORE)
    agd(reference, "trajectories")
    shutil.rmtree(project_copy / STORE)
    set_params(project_copy, **{"launch.nproc": 2})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    launcher = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "trajectories"], cwd=project_copy, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed, rank1, end = False, [], time.monotonic() + 300
    while not killed and time.monotonic() < end and launcher.poll() is None:
        # find rank 1 once, while it starts (reading every process's /proc entry is slow), so the kill
        # follows the third finished trajectory at once
        rank1 = rank1 or _rank_pids(project_copy, 1)
        store = project_copy / STORE
        if rank1 and (store / "done/c").is_dir() and len(list((store / "done/c").iterdir())) >= 3:
            for pid in rank1:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:  # gone already: the asserts below say the run was not cut short
                    pass
            killed = True
        time.sleep(0.01)
    launcher.wait(timeout=120)
    assert killed and launcher.returncode != 0, "the collection ended before rank 1 could be killed"
    finished = int(TrajectoryStore.open(project_copy / STORE).done().sum())
    assert 3 <= finished < 20
    resumed = agd(project_copy, "trajectories", subprocess=True)
    assert f"{finished}/20 finished" in resumed.stderr and f"{20 - finished} to make" in resumed.stderr
    assert not list((project_copy / STORE).rglob("*.partial"))
    assert _files(project_copy / STORE) == _files(reference / STORE)


def test_a_store_with_a_one_chunk_mask_is_refused_by_several_processes(project_copy):
    """Stores made before multi-process collection keep their mask in one chunk, which two processes
    would both rewrite: refused with the way out, and nothing in the store changes."""
    import zarr

    store = project_copy / STORE
    group = zarr.open_group(str(store), mode="r+")
    done = group["done"][...]
    del group["done"]
    group.create_array("done", shape=done.shape, chunks=done.shape, dtype=bool, fill_value=False)[...] = done
    before = _files(store)
    set_params(project_copy, **{"launch.nproc": 2})
    refused = agd(project_copy, "trajectories", check=False, subprocess=True)
    assert refused.returncode != 0 and "completion mask is one chunk" in refused.stderr
    assert "launch.nproc: 1" in refused.stderr
    assert _files(store) == before
