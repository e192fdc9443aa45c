"""Every backend's `dvc repro` runs to the end: the real dvc.yaml, params.yaml composed from conf/ for
the backend (as `dvc exp run -S backend=NAME` composes it), a tiny model of the family saved with
save_pretrained, and every stage through `report`, not `--dry` (which never reaches DVC's params check).

Each family is its own class, so pytest-xdist's loadscope spreads them over the workers. DiT-XL/2 runs
the paper's plain CFG; SD2.1 and SDXL run another teacher rule (`-S guidance.rule=...`), so a rule's
sets, its adapters and AGD's comparison with it go through DVC's own params, deps and outputs too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from tests import tiny_models
from tests.conftest import agd, copy_project, dvc

CAPTIONS = ["a cat on a red sofa", "two dogs in the snow", "a bowl of fruit", "a train at a station",
            "a man riding a horse", "a plate of pasta", "three birds on a wire", "a sailing boat at dusk"]
# The backend file's recipe at a size that runs in a minute on a CPU; every other key as composed.
TINY = ["base.path=models/base", "base.dtype=float32", "train.autocast=none", "train.gradient_checkpointing=false",
        "conditions.max_trajectories=6", "conditions.num_captions=6", "trajectories.num_steps=4",
        "trajectories.batch_size=6", "train.width=16", "train.heads=2", "train.steps=20", "train.batch_size=8",
        "train.buffer_trajectories=6", "train.checkpoint_every=10", "fid_ref.image_folder=data/real",
        "fid_ref.batch_size=4", "evaluate.guidance_scales=[4.0]", "evaluate.default_scale=4.0",
        "evaluate.num_samples=4", "evaluate.num_steps=3", "evaluate.batch_size=4", "evaluate.held_out_trajectories=2"]
TEXT = ["conditions.captions_file=data/captions.json", "evaluate.captions_file=data/captions.json"]


def _project(tmp_path: Path, dvc_template: Path, backend: str, save, *extra: str) -> Path:
    """The finished embedded-default project under DVC, switched to `backend` as a user does it."""
    project = copy_project(dvc_template, tmp_path / "project")  # conf/ included (dvc_template)
    save(project / "models/base")
    real = project / "data/real"
    real.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(real / f"{i}.png")
    (project / "data/captions.json").write_text(json.dumps(
        {"images": [], "annotations": [{"id": i, "image_id": i, "caption": c} for i, c in enumerate(CAPTIONS)]}))
    agd(project, "preset", backend, *TINY, *(TEXT if backend != "dit-xl-2" else []), *extra)
    return project


def _repro_to_the_end(project: Path, backend: str, rule: str = "cfg") -> None:
    tracked = {name: (project / name).read_bytes() for name in ("reports/transfer.csv", "reports/transfer.json")}
    done = dvc(project, "repro")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    ran = set(re.findall(r"Running stage '([^']+)'", done.stdout))
    assert {"check", "conditions", "trajectories", "train", "evaluate", "report"} <= ran, ran
    assert not ran & {"prepare@mnist", "classifier@mnist"}, ran
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert list(metrics) == ["w4"] and {"fid_diff", "kid_diff"} <= set(metrics["w4"]), metrics
    # The experiments are off for this backend: their git-tracked reports stay as they were.
    for name, content in tracked.items():
        assert (project / name).read_bytes() == content, name
    status = dvc(project, "status")
    assert "up to date" in status.stdout, status.stdout + status.stderr
    saved = json.loads((project / "models/adapters/adapters.json").read_text())
    assert saved["base"]["backend"] == backend
    if rule != "cfg":  # the adapters distil the rule, and evaluate compares AGD with its two passes
        assert saved["teacher"]["rule"] == rule and metrics["w4"]["teacher"]["rule"]["rule"] == rule
        assert "fid_diff" in metrics["w4"]["teacher"]
    else:
        assert "teacher" not in metrics["w4"]


class TestDiT:
    def test_dit_xl_2_repro_runs_every_stage(self, tmp_path, dvc_template):
        project = _project(tmp_path, dvc_template, "dit-xl-2", tiny_models.save_dit_xl_like)
        _repro_to_the_end(project, "dit-xl-2")


class TestSD21:
    def test_sd21_repro_runs_every_stage(self, tmp_path, dvc_template):
        project = _project(tmp_path, dvc_template, "sd21", tiny_models.save_sd2_like, "guidance.rule=rescale")
        _repro_to_the_end(project, "sd21", "rescale")


class TestSDXL:
    def test_sdxl_repro_runs_every_stage(self, tmp_path, dvc_template):
        project = _project(tmp_path, dvc_template, "sdxl", tiny_models.save_sdxl_like, "guidance.rule=interval")
        _repro_to_the_end(project, "sdxl", "interval")
