"""The evaluation on several processes (launch.nproc, torchrun, gloo on the CPU): the teacher's and
AGD's batches are shared out over the ranks, and the stores and figures equal one process's."""

from __future__ import annotations

import json
import shutil

import numpy as np

from pipeline.evaluation.sample_store import SampleStore
from tests.conftest import agd, copy_project, set_params

SETTINGS = {"evaluate.batch_size": 5}  # 20 samples: 4 batches per set, 2 per rank


def _arrays(project, store_name: str) -> dict[str, np.ndarray]:
    store = SampleStore(project / "data" / store_name, create=False)
    return {f"{name}/{array}": store.root[name][array][...] for name in store.names()
            for array in store.root[name].array_keys() if array != "seconds"}


def test_two_processes_evaluate_as_one(tmp_path, tiny_project):
    one = copy_project(tiny_project, tmp_path / "one")
    two = copy_project(tiny_project, tmp_path / "two")
    for project, nproc in ((one, 1), (two, 2)):
        set_params(project, **SETTINGS, **{"launch.nproc": nproc})
        for store in ("teacher.zarr", "evaluation.zarr"):
            shutil.rmtree(project / "data" / store)
        for stage in ("teacher", "evaluate"):
            ran = agd(project, stage, subprocess=True)  # torchrun starts the ranks
            if nproc == 2:
                assert "starting 2 processes" in ran.stderr and "rank 1 of 2" in ran.stderr, ran.stderr
    for store in ("teacher.zarr", "evaluation.zarr"):
        a, b = _arrays(one, store), _arrays(two, store)
        assert a.keys() == b.keys()
        for key in a:
            assert np.allclose(a[key], b[key], rtol=1e-5, atol=1e-5), f"{store}/{key} differs"
    for report in ("metrics.json", "quality.json"):
        assert json.loads((one / "reports" / report).read_text()) == json.loads((two / "reports" / report).read_text())


def test_a_folder_reference_on_two_processes_with_readers_equals_one_process(tmp_path, tiny_project):
    """fid_ref over a folder of real images: reader processes (fid_ref.num_workers) and two ranks give
    one plain process's statistics; the kept features are the same images' in the same order."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "real"
    (folder / "sub").mkdir(parents=True)
    for i in range(30):
        where = folder / "sub" if i % 3 else folder  # subfolders are read too
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(where / f"{i:02d}.png")
    stats = {}
    for label, nproc, workers in (("plain", 1, 0), ("ranks", 2, 2)):
        project = copy_project(tiny_project, tmp_path / label)
        set_params(project, **{"fid_ref.image_folder": str(folder), "fid_ref.num_images": 0, "fid_ref.batch_size": 4,
                               "fid_ref.features_kept": 12, "fid_ref.num_workers": workers, "launch.nproc": nproc})
        agd(project, "fid-ref", subprocess=True)
        with np.load(project / "data" / "fid_ref.npz") as f:
            stats[label] = {k: f[k] for k in f.files}
        assert not list((project / "data").glob("fid_ref.rank*.npz"))
    a, b = stats["plain"], stats["ranks"]
    assert int(a["count"]) == int(b["count"]) == 30
    for key in ("mu", "sigma", "features"):
        assert np.allclose(a[key], b[key], rtol=1e-6, atol=1e-8), key
    assert a["features"].shape == (12, 2048)
