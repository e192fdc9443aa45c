"""Training on several processes (DistributedDataParallel over the adapters, gloo on the CPU): equal to one
process, and resumable under another number of processes."""

from __future__ import annotations

from tests.conftest import agd, set_params
from tests.crash_helpers import _kill_when, _spawn
from tests.distributed_helpers import _adapters, _max_difference, _one_process


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
    checkpoint = project / "checkpoints/train.pt"
    _kill_when(_spawn(project, "train"), checkpoint.exists, timeout=300)
    assert checkpoint.exists(), "training ended before its first checkpoint"
    set_params(project, **{"launch.nproc": 2})
    resumed = agd(project, "train", subprocess=True)
    assert "written by 1 processes, this run has 2" in resumed.stderr, resumed.stderr
    assert _max_difference(_adapters(project), reference) < 1e-3
