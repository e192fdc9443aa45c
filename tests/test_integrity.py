"""No silent corruption, no lost work: damaged trajectories are repaired alone, a store made with
other settings is set aside (and taken back), settings that do not change the content keep it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr

from pipeline.data.store import TrajectoryStore
from pipeline.run.errors import AGDError
from tests.conftest import agd, chunk_files, set_params

STORE = "data/trajectories.zarr"


def all_files(store) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def test_damaged_trajectories_are_rewritten_alone(project_copy, tiny_project):
    store = project_copy / STORE
    original = chunk_files(tiny_project / STORE)
    (store / "x/c/3/0/0/0/0").unlink()  # a lost chunk file: zarr would read zeros
    # a kill between zarr's temporary write and its rename leaves <chunk>.<uuid>.partial behind
    (store / "target/c/5/0/0/0/0.0123abcd.partial").write_bytes(b"half a chunk")
    x = zarr.open_array(str(store / "target"), mode="r+")
    values = x[11]
    values[0, 0, 0, 0] = np.inf
    x[11] = values  # a non-finite value in a finished trajectory
    untouched = {k: (store / k).stat().st_mtime_ns for k in original
                 if "/c/3/" not in k and "/c/11/" not in k and not k.startswith("done/")}

    done = agd(project_copy, "trajectories")
    assert "2 finished trajectories damaged" in done.stderr
    assert "removed 1 temporary files of interrupted chunk writes" in done.stderr
    assert "3: chunk file x/c/3/0/0/0/0 is missing" in done.stderr and "11: target holds 1 non-finite" in done.stderr
    assert "18/20 finished" in done.stderr and "2 to make" in done.stderr
    assert chunk_files(store) == original  # the repaired trajectories are the original bytes
    assert {k: (store / k).stat().st_mtime_ns for k in untouched} == untouched  # nothing else was written
    agd(project_copy, "verify")


def test_store_refuses_non_finite_trajectories(tmp_path):
    store = TrajectoryStore.create(tmp_path / "s.zarr", {}, 2, (1, 2, 2), (1, 2, 2), np.array([10, 0]),
                                   np.ones(3, np.float32), np.arange(3), {"labels": np.arange(3)})
    x = np.zeros((2, 2, 1, 2, 2), np.float32)
    target = x.copy()
    target[1, 0, 0, 0, 0] = np.nan  # a diverged CFG sample (e.g. a float16 overflow)
    with pytest.raises(AGDError, match="trajectory 2: CFG sampling produced non-finite target"):
        store.write([0, 2], {"x": x, "target": target})
    assert not store.done().any()


def test_changed_settings_set_the_store_aside_and_take_it_back(project_copy, tiny_project):
    store = project_copy / STORE
    original = all_files(tiny_project / STORE)

    set_params(project_copy, **{"trajectories.num_steps": 4})
    done = agd(project_copy, "trajectories")
    assert "made with other num_steps" in done.stderr and "set aside as" in done.stderr
    assert "1 set-aside stores use" in done.stderr  # disk use reported, for clean-up
    aside = list((project_copy / (STORE + ".stale")).iterdir())
    assert len(aside) == 1 and "DDIMScheduler-5steps" in aside[0].name
    assert all_files(aside[0]) == original  # moved, not rebuilt, not deleted
    assert TrajectoryStore.open(store).attrs["num_steps"] == 4

    listing = agd(project_copy, "stores").stderr
    assert "DDIMScheduler 5 steps" in listing and "20/20 trajectories finished" in listing and " MB" in listing

    set_params(project_copy, **{"trajectories.num_steps": 5})
    done = agd(project_copy, "trajectories")
    assert "took back the set-aside store" in done.stderr and "0 to make" in done.stderr
    assert all_files(store) == original
    assert "DDIMScheduler-4steps" in agd(project_copy, "stores").stderr  # the 4-step store is now aside

    pruned = agd(project_copy, "stores", "--prune").stderr
    assert "pruned 1 set-aside stores" in pruned
    assert not (project_copy / (STORE + ".stale")).exists()
    assert all_files(store) == original


def test_batch_size_and_base_location_do_not_touch_a_finished_store(project_copy, tiny_project):
    original = all_files(tiny_project / STORE)
    shutil.copytree(project_copy / "models/base-mnist-dit", project_copy / "models/moved-base")
    for changes in ({"trajectories.batch_size": 3}, {"base.path": "models/moved-base"}):
        set_params(project_copy, **changes)
        done = agd(project_copy, "trajectories")
        assert "20/20 finished" in done.stderr and "0 to make" in done.stderr
        assert "mnist-dit base on cpu (float32)" in done.stderr  # every stage says where it runs
        assert all_files(project_copy / STORE) == original  # every byte, zarr.json included
        assert not (project_copy / (STORE + ".stale")).exists()


def test_store_built_at_another_batch_size_matches_to_float_rounding(project_copy, tiny_project):
    """Not promised bit for bit: kernels pick their blocking by batch shape (see the README)."""
    shutil.rmtree(project_copy / STORE)
    set_params(project_copy, **{"trajectories.batch_size": 3})
    agd(project_copy, "trajectories")
    a = TrajectoryStore.open(project_copy / STORE)
    b = TrajectoryStore.open(tiny_project / STORE)
    assert (project_copy / STORE / "zarr.json").read_bytes() == (tiny_project / STORE / "zarr.json").read_bytes()
    for i in range(len(b)):
        for name, values in a.read(i).items():
            np.testing.assert_allclose(values, b.read(i)[name], rtol=0, atol=1e-4)


def test_correction_captured_is_not_applicable_where_cfg_corrects_nothing(tiny_project, monkeypatch):
    from pipeline.backends.loading import load_base
    from pipeline.evaluation import distill
    from pipeline.guidance.adapters import AdapterSet

    monkeypatch.chdir(tiny_project)
    family = load_base("mnist-dit", "models/base-mnist-dit")
    adapters = AdapterSet.load(tiny_project / "models/adapters", family)
    cond = family.condition_batch(family.condition_arrays([{"label": i % 10} for i in range(4)]))
    seeds = 10**9 + np.arange(4)

    def held_out(w):
        return distill.held_out(family, adapters, cond, seeds, w, "DDIMScheduler", 5)

    at_one, rows = held_out(1.0)  # CFG equals the conditional model: nothing to capture
    assert at_one == {"correction_defined": False} and len(rows) == 5 and "captured" not in rows[0]
    at_zero, _ = held_out(0.0)  # towards the unconditional model: defined, and finite
    assert at_zero["correction_defined"] and np.isfinite(at_zero["correction_captured"])
    at_three, rows = held_out(3.0)
    assert at_three["correction_defined"] and at_three["correction_captured"] <= 1
    assert -1 <= at_three["correction_cosine"] <= 1 and at_three["correction_gain"] > 0
    assert all(-1 <= r["cosine"] <= 1 for r in rows)


def test_unusable_store_is_set_aside_not_deleted(project_copy, tiny_project):
    store = project_copy / STORE
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["format_version"] = 99  # as a store from another version of this tool
    (store / "zarr.json").write_text(json.dumps(meta))
    done = agd(project_copy, "trajectories")
    assert "cannot be resumed (store format 99" in done.stderr
    (aside,) = list((project_copy / (STORE + ".stale")).iterdir())
    assert aside.name.endswith("-unusable") and chunk_files(aside) == chunk_files(tiny_project / STORE)
    assert chunk_files(store) == chunk_files(tiny_project / STORE)  # rebuilt, to the same bytes
