"""Negative conditions through the tiny real-config families (SD2-, SDXL- and DiT-XL/2-like), stage by
stage in-process: conditions with negatives, trajectories whose teacher takes them, adapters that read
them, evaluate's negatives figures, and `agd sample --negative`. One class per family, so pytest-xdist
(--dist loadscope) runs them on different workers."""

from __future__ import annotations

import json

import numpy as np
import yaml
from PIL import Image

from pipeline.backends.loading import load_base
from pipeline.data.store import TrajectoryStore


class TestSD21:
    def test_negatives_through_the_sd21_family(self, tmp_path, prepared_data, monkeypatch):
        negatives_through(tmp_path, prepared_data, monkeypatch, "sd21")


class TestSDXL:
    def test_negatives_through_the_sdxl_family(self, tmp_path, prepared_data, monkeypatch):
        negatives_through(tmp_path, prepared_data, monkeypatch, "sdxl")


class TestDiT:
    def test_negatives_through_the_dit_xl_2_family(self, tmp_path, prepared_data, monkeypatch):
        negatives_through(tmp_path, prepared_data, monkeypatch, "dit-xl-2")


def negatives_through(tmp_path, prepared_data, monkeypatch, backend):
    from tests.test_backends import CAPTIONS, FAMILIES, _coco, _params, _run

    save, conditions = FAMILIES[backend]
    base = save(tmp_path / "base")
    project = tmp_path / "project"
    real = project / "real"
    real.mkdir(parents=True)
    for i in range(4):
        Image.fromarray((np.random.default_rng(i).random((16, 16, 3)) * 255).astype(np.uint8)).save(real / f"{i}.png")
    (project / "data" / "assets").mkdir(parents=True)
    (project / "data" / "assets" / "inception-2015-12-05.pt").symlink_to(prepared_data / "assets"
                                                                          / "inception-2015-12-05.pt")
    (project / "negatives.txt").write_text("# tiny negatives\nblurry, low quality\nwatermark\n")
    params = _params(backend, base, _coco(project / "captions.json", CAPTIONS), conditions)
    params["conditions"].update(negative_share=0.5, negatives_file="negatives.txt")
    params["train"].update(steps=20, checkpoint_every=10)
    params["fid_ref"]["image_folder"] = str(real)
    params["evaluate"]["negative_samples"] = 4
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(project)
    for stage in ("conditions", "trajectories", "train", "fid-ref", "teacher", "evaluate"):
        _run(project, stage)
    doc = json.loads((project / "data/conditions.json").read_text())
    given = [i["negative"] for i in doc["items"] if i["negative"] is not None]
    assert given and len(given) < len(doc["items"])
    if backend != "dit-xl-2":
        assert set(given) <= {"blurry, low quality", "watermark"}
    store = TrajectoryStore.open(project / "data/store.zarr")
    negative_arrays = [n for n in store.cond_names if n.startswith("negative_")]
    own = [n for n in store.cond_names if not n.startswith("negative_")]
    assert sorted(n.removeprefix("negative_") for n in negative_arrays) == own  # every array of the condition
    meta = store.meta()
    family = load_base(backend, str(base))
    rows = [r for r, i in enumerate(doc["items"]) if i["negative"] is None]
    if rows and backend == "dit-xl-2":  # no negative: the null class is stored, the unconditional branch as before
        assert (meta["cond/negative_labels"][rows] == family.num_classes).all()
    assert json.loads((project / "models/adapters/adapters.json").read_text())["negatives"] is True
    negatives = json.loads((project / "reports/metrics.json").read_text())["w4"]["negatives"]
    assert negatives["samples"] == 4 and negatives["held_out_with_negative"]["correction_defined"]
    assert negatives["moved_by_negative_mse"]["cfg"]["value"] > 0 and negatives["moved_by_negative_mse"]["agd"]["value"] > 0
    flags = ["--labels", "1,2"] if backend == "dit-xl-2" else ["--prompt", "a cat", "--prompt", "a dog"]
    negative = ["--negative", "3"] if backend == "dit-xl-2" else ["--negative", "blurry, low quality"]
    images = {}
    for name, extra in (("plain", []), ("negative", negative)):
        _run(project, "sample", *flags, *extra, "-w", "4", "--steps", "3", "--scheduler", "DDIMScheduler",
             "--out", f"{name}.png")
        images[name] = np.asarray(Image.open(project / f"{name}.png")).astype(int)
    assert np.abs(images["plain"] - images["negative"]).max() > 0, "the negative changed nothing"
