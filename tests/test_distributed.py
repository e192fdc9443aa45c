"""Several processes per stage (launch.nproc, torchrun, gloo on the CPU): the sharded store equals the
single-process store byte for byte, a killed rank resumes, and DDP training equals one process."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from pipeline.data.store import TrajectoryStore
from tests.conftest import ROOT, agd, set_params

STORE = "data/trajectories.zarr"


def _files(store: Path) -> dict[str, bytes]:
    """Every file of a store (metadata, chunks, mask) by relative path."""
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def _copy(project: Path, dest: Path) -> Path:
    shutil.copytree(project, dest, copy_function=lambda s, d: os.link(s, d) if "/data/assets/" in s else shutil.copy2(s, d))
    return dest


def _rank_pids(project: Path, rank: int) -> list[int]:
    """The processes torchrun started for `rank` in `project` (read from /proc)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and cwd == str(project):
            found.append(int(proc.name))
    return found


def test_two_processes_write_the_single_process_store_byte_for_byte(project_copy, tiny_project):
    shutil.rmtree(project_copy / STORE)
    set_params(project_copy, **{"launch.nproc": 2})
    done = agd(project_copy, "trajectories", subprocess=True)  # torchrun starts the ranks
    assert "starting 2 processes" in done.stderr and "rank 1 of 2" in done.stderr, done.stderr
    assert _files(project_copy / STORE) == _files(tiny_project / STORE)


def test_a_killed_rank_resumes_with_nothing_lost_or_duplicated(project_copy, tmp_path):
    """SIGKILL rank 1 mid-collection (torchrun then stops rank 0); the re-run finishes the store, making
    only what was unfinished, and it equals one process's store byte for byte."""
    set_params(project_copy, **{"trajectories.batch_size": 1})  # 20 batches: room to kill in between
    reference = _copy(project_copy, tmp_path / "reference")
    shutil.rmtree(reference / STORE)
    agd(reference, "trajectories")
    shutil.rmtree(project_copy / STORE)
    set_params(project_copy, **{"launch.nproc": 2})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    launcher = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "trajectories"], cwd=project_copy, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed, end = False, time.monotonic() + 300
    while not killed and time.monotonic() < end and launcher.poll() is None:
        store = project_copy / STORE
        if (store / "zarr.json").exists() and (store / "done/c").is_dir() and len(list((store / "done/c").iterdir())) >= 3:
            for pid in _rank_pids(project_copy, 1):
                os.kill(pid, signal.SIGKILL)
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


def _adapters(project: Path) -> dict[str, np.ndarray]:
    return load_file(str(project / "models/adapters/adapters.safetensors"))


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def _one_process(project: Path, tmp_path: Path, steps: int) -> dict:
    """The adapters one process trains in a copy of the project, `steps` steps."""
    set_params(project, **{"train.steps": steps, "train.checkpoint_every": 10})
    single = _copy(project, tmp_path / "single")
    agd(single, "train")
    return _adapters(single)


def test_two_process_training_equals_one_process(project_copy, tmp_path):
    """Same global batch, same data order: after two steps the adapters agree to float rounding (measured
    7e-10 after one step, 2e-6 after three, where one Adam step moves a weight by up to lr = 3e-3: the
    slices' gradients are summed in another order, and Adam divides by their size)."""
    reference = _one_process(project_copy, tmp_path, steps=2)
    set_params(project_copy, **{"launch.nproc": 2})
    done = agd(project_copy, "train", subprocess=True)
    assert "DistributedDataParallel" in done.stderr, done.stderr
    assert _max_difference(_adapters(project_copy), reference) < 1e-5
    assert not (project_copy / "checkpoints/train.pt").exists()
    set_params(project_copy, **{"launch.nproc": 3})
    odd = agd(project_copy, "train", check=False)  # 32 does not split over 3
    assert odd.returncode != 0 and "does not split evenly over 3 processes" in odd.stderr


def test_training_resumes_under_another_number_of_processes(project_copy, tmp_path):
    """A one-process run killed after its first checkpoint (step 10 of 30), resumed by two: said
    clearly, and the adapters equal the uninterrupted run's to the float tolerance of 30 Adam steps
    (Adam divides by the gradients' own size, so rounding grows to ~1e-4 where a 3 % change of the
    learning rate moves them 3e-3)."""
    project = project_copy
    reference = _one_process(project, tmp_path, steps=30)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "train"], cwd=project, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint, end = project / "checkpoints/train.pt", time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < end:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists(), "training ended before its first checkpoint"
    set_params(project, **{"launch.nproc": 2})
    resumed = agd(project, "train", subprocess=True)
    assert "written by 1 processes, this run has 2" in resumed.stderr, resumed.stderr
    assert _max_difference(_adapters(project), reference) < 1e-3


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
