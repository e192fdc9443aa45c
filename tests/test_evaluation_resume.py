"""The evaluation resumes: SIGKILL the real `agd teacher` and `agd evaluate` at many moments; every
batch marked done is complete and never written again, and the finished stores and figures equal
an uninterrupted run's."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from pipeline.evaluation.sample_store import SampleStore
from tests.conftest import agd, chunk_files, copy_project, set_params
from tests.crash_helpers import _kill_when, _spawn

SETTINGS = {"evaluate.batch_size": 5}  # 20 samples: 4 batches per set


def _samples(store: Path) -> dict[str, bytes]:
    """A store's chunk files but the seconds per batch (wall clock)."""
    return {k: v for k, v in chunk_files(store).items() if "/seconds/" not in k}


def _done_files(store: Path) -> int:
    return len([p for p in store.rglob("*") if p.is_file() and "/done/c/" in str(p)])


def _consistent(store_path: Path, reference: dict[str, bytes]) -> dict[str, bytes]:
    """Every batch marked done has all its chunks, equal to the uninterrupted run's; returns those chunks."""
    if not (store_path / "zarr.json").exists():
        return {}
    store = SampleStore(store_path, create=False)
    files = _samples(store_path)
    finished = {}
    for name in store.names():
        group = store.root[name]
        for b in np.flatnonzero(group["done"][...]):
            for array in group.array_keys():
                if array in ("seconds", "done"):
                    continue
                chunks = group[array].chunks[0]
                rows = range(b * 5, b * 5 + 5)
                for c in sorted({r // chunks for r in rows if r < group[array].shape[0]}):
                    key = f"{name}/{array}/c/{c}" + "/0" * (group[array].ndim - 1)
                    assert files.get(key) == reference[key], f"{name} batch {b} marked done but {key} differs"
                    finished[key] = files[key]
    return finished


def _reference(tmp_path: Path, tiny_project: Path) -> Path:
    project = copy_project(tiny_project, tmp_path / "reference")
    set_params(project, **SETTINGS)
    for stage in ("teacher", "evaluate"):
        agd(project, stage)
    return project


def test_sigkill_teacher_and_evaluate_at_many_points(tmp_path, tiny_project):
    reference = _reference(tmp_path, tiny_project)
    project = copy_project(tiny_project, tmp_path / "killed")
    set_params(project, **SETTINGS)
    for stage, store_name in (("teacher", "teacher.zarr"), ("evaluate", "evaluation.zarr")):
        store = project / "data" / store_name
        expected = _samples(reference / "data" / store_name)
        shutil.rmtree(store)

        def files_at_least(k):
            return lambda: store.exists() and len(chunk_files(store)) >= k

        def done_at_least(k):
            return lambda: store.exists() and _done_files(store) >= k

        # between a batch's chunks (files), right after a completion mark (done) and a few batches in
        points = [files_at_least(1), done_at_least(1), files_at_least(9), done_at_least(3), done_at_least(5)]
        killed = 0
        for ready in points:
            before = _consistent(store, expected)
            killed += _kill_when(_spawn(project, stage), ready)
            after = _consistent(store, expected)
            assert {k: after.get(k) for k in before} == before  # finished batches never touched again
        assert killed >= 3, f"{stage}: only {killed} kills landed"
        agd(project, stage)
        assert _samples(store) == expected, f"{stage}: the resumed store differs from an uninterrupted run's"
    for report in ("metrics.json", "quality.json", "distillation.csv"):
        assert (project / "reports" / report).read_bytes() == (reference / "reports" / report).read_bytes(), report


def test_a_train_only_change_keeps_the_teacher_and_remakes_agd(project_copy):
    """Other adapters: the AGD sets are made again, the teacher's store is not touched."""
    teacher = project_copy / "data" / "teacher.zarr"
    before = chunk_files(teacher)
    weights = project_copy / "models" / "adapters" / "adapters.safetensors"
    set_params(project_copy, **{"train.steps": 70})  # resumes from the checkpoint of step 60
    agd(project_copy, "train")
    assert weights.exists()
    ran = agd(project_copy, "evaluate")
    assert "made with other adapters_sha256: made again" in ran.stdout + ran.stderr
    assert chunk_files(teacher) == before
