"""Same params and seeds on the same machine: identical conditions, store, adapters and metrics."""

import json
import shutil

import numpy as np
from safetensors.numpy import load_file

from tests.conftest import agd, chunk_files


def test_rerun_gives_identical_results(project_copy, tiny_project):
    for output in ["data/conditions.json", "models/adapters", "reports/metrics.json", "reports/quality.json",
                   "reports/distillation.csv", "reports/samples.png"]:
        path = project_copy / output
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    for store in ("trajectories.zarr", "teacher.zarr", "evaluation.zarr"):
        shutil.rmtree(project_copy / "data" / store)
    for stage in ["conditions", "trajectories", "train", "teacher", "evaluate"]:
        agd(project_copy, stage)
    a, b = project_copy, tiny_project
    assert (a / "data/conditions.json").read_bytes() == (b / "data/conditions.json").read_bytes()
    assert chunk_files(a / "data/trajectories.zarr") == chunk_files(b / "data/trajectories.zarr")
    assert (a / "data/trajectories.zarr/zarr.json").read_bytes() == (b / "data/trajectories.zarr/zarr.json").read_bytes()
    assert (a / "models/adapters/adapters.safetensors").read_bytes() == \
        (b / "models/adapters/adapters.safetensors").read_bytes()
    for report in ("metrics.json", "quality.json", "distillation.csv"):  # wall clock lives in timing.json
        assert (a / "reports" / report).read_bytes() == (b / "reports" / report).read_bytes(), report
    assert (a / "reports/samples.png").read_bytes() == (b / "reports/samples.png").read_bytes()


def test_thread_count_changes_training_bits_only(project_copy, tiny_project):
    """What the README promises across thread counts: the same store bytes; adapters equal to float
    rounding only (parallel reductions in the backward pass sum in another order)."""
    for store in ("trajectories.zarr", "teacher.zarr", "evaluation.zarr"):
        shutil.rmtree(project_copy / "data" / store)
    shutil.rmtree(project_copy / "models" / "adapters")
    two = {"AGD_THREADS": "2"}
    agd(project_copy, "trajectories", env=two)
    assert chunk_files(project_copy / "data/trajectories.zarr") == chunk_files(tiny_project / "data/trajectories.zarr")
    agd(project_copy, "train", env=two)
    a = load_file(str(project_copy / "models/adapters/adapters.safetensors"))
    b = load_file(str(tiny_project / "models/adapters/adapters.safetensors"))
    scale = max(np.abs(v).max() for v in b.values())
    assert max(np.abs(a[k] - b[k]).max() for k in b) <= 1e-2 * scale
    assert json.loads((project_copy / "reports/train.json").read_text())["torch_threads"] == 2
    loss_a = json.loads((project_copy / "reports/train.json").read_text())["final_loss"]
    loss_b = json.loads((tiny_project / "reports/train.json").read_text())["final_loss"]
    assert abs(loss_a - loss_b) <= 0.01 * loss_b
