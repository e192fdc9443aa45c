"""The teacher rules through the tiny real-config families (SD2-, SDXL- and DiT-XL/2-like), stage by
stage in-process: what tests/test_teacher_rules.py checks on the embedded default's tiny project.
Its own module so that pytest-xdist (--dist loadscope) runs it beside that one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline import config
from pipeline.backends.loading import load_base
from pipeline.backends.schedulers import family_scheduler, noise_levels
from pipeline.data.store import TrajectoryStore
from pipeline.evaluation import cost
from pipeline.guidance import rules
from pipeline.guidance.sampling import nfe, plan_for

TEXT_RULES = {"interval": None, "rescale": {"guidance.rescale_phi": 0.7},
              "apg": {"guidance.apg_momentum": -0.5, "guidance.apg_norm_threshold": 1.0},
              "cfg_zero_star": {"guidance.zero_init_steps": 1}}


# one class per family: pytest-xdist (--dist loadscope) runs them on different workers
class TestSD21:
    def test_every_rule_through_the_sd21_family(self, tmp_path, prepared_data, monkeypatch):
        every_rule_through(tmp_path, prepared_data, monkeypatch, "sd21")


class TestSDXL:
    def test_every_rule_through_the_sdxl_family(self, tmp_path, prepared_data, monkeypatch):
        every_rule_through(tmp_path, prepared_data, monkeypatch, "sdxl")


class TestDiT:
    def test_every_rule_through_the_dit_xl_2_family(self, tmp_path, prepared_data, monkeypatch):
        every_rule_through(tmp_path, prepared_data, monkeypatch, "dit-xl-2")


def every_rule_through(tmp_path, prepared_data, monkeypatch, backend):
    """Every rule on each tiny real-config family (the SD2-like v-prediction UNet with CLIP text, the
    SDXL-like one with two encoders and micro-conditioning, the DiT-XL/2-like class model whose rules
    act on the epsilon channels alone): collection, training and evaluation record the rule, the
    teacher's passes are the rule's, and `agd sample` runs AGD under it and the rule's own two passes."""
    from tests.test_backends import CAPTIONS, FAMILIES, _coco, _params, _run

    save, conditions = FAMILIES[backend]
    base = save(tmp_path / "base")
    family = load_base(backend, str(base))
    sigmas = noise_levels(family_scheduler(family, "DDIMScheduler", 4))
    band = [float(sigmas[3] + sigmas[2]) / 2, float(sigmas[1] + sigmas[0]) / 2]  # steps 1 and 2 of 4
    real = tmp_path / "real"
    real.mkdir()
    for i in range(4):
        Image.fromarray((np.random.default_rng(i).random((16, 16, 3)) * 255).astype(np.uint8)).save(real / f"{i}.png")
    for name in TEXT_RULES:
        extra = TEXT_RULES[name]
        project = tmp_path / name
        (project / "data" / "assets").mkdir(parents=True)
        (project / "data" / "assets" / "inception-2015-12-05.pt").symlink_to(prepared_data / "assets"
                                                                              / "inception-2015-12-05.pt")
        captions = _coco(project / "captions.json", CAPTIONS)
        params = _params(backend, base, captions, conditions)
        params["train"].update(steps=20, checkpoint_every=10)
        params["fid_ref"]["image_folder"] = str(real)
        params["guidance"] = {"rule": name, **({"interval": band} if name == "interval" else {}),
                              **{k.split(".")[1]: v for k, v in (extra or {}).items()}}
        (project / "params.yaml").write_text(yaml.safe_dump(params))
        monkeypatch.chdir(project)
        for stage in ("conditions", "trajectories", "train", "fid-ref", "teacher", "evaluate"):
            _run(project, stage)
        rule = rules.from_params(config.load().guidance)
        assert rule.name == name
        store = TrajectoryStore.open(project / "data" / "store.zarr")
        assert rules.from_identity(store.attrs["guidance"]) == rule
        assert json.loads((project / "models" / "adapters" / "adapters.json").read_text())["teacher"] == rule.identity()
        timed = json.loads((project / "reports" / "timing.json").read_text())
        timing, step = timed["w4"], timed["step_seconds_per_image"]
        for method, mode in (("teacher", "cfg"), ("agd", "agd")):  # the rule's plan: NFE and seconds
            plan = plan_for(family, "DDIMScheduler", 3, mode, rule=rule)
            assert timing[method]["nfe_per_image"] == nfe(plan)
            assert timing[method]["seconds_per_image"] == pytest.approx(cost.plan_seconds(plan, step), rel=1e-4)
        assert json.loads((project / "reports" / "metrics.json").read_text())["w4"]["teacher"]["rule"]["rule"] == name
        # agd sample: AGD under the rule (the diffusers pipeline where it runs the rule, our loop
        # elsewhere) and the rule's own two passes, the same seeds
        flags = ["--labels", "1,2"] if backend == "dit-xl-2" else ["--prompt", "a cat", "--prompt", "a dog"]
        images = {}
        for guidance in ("agd", "cfg"):
            _run(project, "sample", *flags, "-w", "4", "--steps", "3", "--scheduler", "DDIMScheduler",
                 "--guidance", guidance, "--out", f"{guidance}.png")
            images[guidance] = np.asarray(Image.open(project / f"{guidance}.png")).astype(int)
        assert images["agd"].shape == images["cfg"].shape
        assert np.abs(images["agd"] - images["cfg"]).max() > 0, f"{name}: AGD's images are the teacher's"
