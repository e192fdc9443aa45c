"""Evaluation in bounded memory: `agd teacher` and `agd evaluate` at a real image size (a tiny
DiT-XL/2-like base whose VAE decodes to 512 px) at two sample counts 8x apart use the same peak
host memory, because no image set is ever held whole.

What the previous code held at 64 samples of 512 px, for comparison with the bound: the images of
three methods (3 x 64 x 0.79 MB = 150 MB) and two float64 copies for same-seed distances (2 x 64 x
6.3 MB = 800 MB); at the paper's 10,000 SDXL samples that was 377 GB. Measured here: about 20 MB
more at 64 samples than at 8, for both stages (per-sample features and allocator noise).
"""

from __future__ import annotations

import os
import subprocess as sp
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.conftest import ROOT

SIDE = 512  # decoded image size
BOUND_MB = 50  # allowed growth of peak resident memory from 8 to 64 samples


def _save_base(path: Path) -> Path:
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                        num_layers=1, sample_size=16, patch_size=2, num_embeds_ada_norm=1000)
    levels = 6  # 16 px latents, doubled five times: 512 px images
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels,
                        up_block_types=("UpDecoderBlock2D",) * levels, block_out_channels=(4,) * levels,
                        latent_channels=4, norm_num_groups=2, layers_per_block=1, sample_size=SIDE)
    scheduler = DDIMScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, clip_sample=False)
    DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler).save_pretrained(path)
    return path


# The stage's process reports its own peak (VmHWM) as it exits: the rusage a parent gets counts the
# moments between fork and exec too, when the child is a copy of this test process.
PEAK = """
import atexit, runpy, sys
def peak():
    kb = [line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
    open("peak.txt", "w").write(kb)
atexit.register(peak)
sys.argv = ["agd", sys.argv[1]]
runpy.run_module("pipeline.cli", run_name="__main__")
"""


def _run(project: Path, stage: str) -> int:
    """`agd stage` in its own process; its peak resident memory in MB."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    ran = sp.run([sys.executable, "-c", PEAK, stage], cwd=project, env=env, capture_output=True, text=True)
    assert ran.returncode == 0, f"agd {stage}:\n{ran.stdout[-2000:]}\n{ran.stderr[-2000:]}"
    return int((project / "peak.txt").read_text()) // 1024


@pytest.fixture(scope="module")
def project(tmp_path_factory, prepared_data):
    from pipeline.backends.loading import load_base
    from pipeline.guidance.adapters import AdapterSet

    root = tmp_path_factory.mktemp("memory")
    base = _save_base(root / "base")
    (root / "data" / "assets").mkdir(parents=True)
    os.link(prepared_data / "assets" / "inception-2015-12-05.pt", root / "data" / "assets" / "inception-2015-12-05.pt")
    real = root / "data" / "real"
    real.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(real / f"{i}.png")
    params = {"base": {"backend": "dit-xl-2", "path": str(base), "dtype": "float32"},
              "trajectories": {"scheduler": "DDIMScheduler", "num_steps": 2},
              "fid_ref": {"image_folder": str(real), "batch_size": 4},
              "evaluate": {"guidance_scales": [4.0], "default_scale": 4.0, "num_samples": 4, "num_steps": 2,
                           "batch_size": 2, "inception_samples": 0, "held_out_trajectories": 2, "bootstrap": 20}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    family = load_base(backend="dit-xl-2", path=str(base), dtype="float32")
    AdapterSet(family, "cross_attention", 16, 2, 0).attach(family).save(root / "models" / "adapters")
    assert _run(root, "fid-ref") > 0
    return root


def test_peak_memory_does_not_grow_with_the_sample_count(project):
    peaks = {}
    for count in (8, 64):  # 8x apart, both past the first batches (TorchScript Inception optimises on its first calls)
        doc = yaml.safe_load((project / "params.yaml").read_text())
        doc["evaluate"]["num_samples"] = count
        (project / "params.yaml").write_text(yaml.safe_dump(doc))
        peaks[count] = {stage: _run(project, stage) for stage in ("teacher", "evaluate")}
        quality = yaml.safe_load((project / "reports" / "quality.json").read_text())
        assert quality["w4"]["agd"]["fid"]["value"] > 0  # scored every sample of this count
    print(f"peak resident MB: {peaks}")
    for stage in ("teacher", "evaluate"):
        growth = peaks[64][stage] - peaks[8][stage]
        assert growth < BOUND_MB, f"{stage}: peak resident memory {peaks[8][stage]} MB at 8 samples, " \
                                  f"{peaks[64][stage]} MB at 64 ({growth} MB more; bound {BOUND_MB} MB)"
    shape = Image.open(project / "reports" / "samples.png").size
    assert shape[1] >= 4 * 256  # four rows of images shown at 256 px
