"""The real backends' code paths on tiny random models of each family, loaded by from_pretrained."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from pipeline.backends.loading import load_base
from pipeline.cli import app
from pipeline.data.store import TrajectoryStore
from pipeline.guidance.adapters import AdapterSet
from pipeline.run.errors import AGDError
from tests import tiny_models

CAPTIONS = ["a cat on a red sofa", "two dogs in the snow", "a bowl of fruit", "a train at a station",
            "a man riding a horse", "a plate of pasta", "three birds on a wire", "a sailing boat at dusk"]

FAMILIES = {
    "dit-xl-2": (tiny_models.save_dit_xl_like, {"w_min": 1.0, "w_max": 6.0, "per_class": 1}),
    "sd21": (tiny_models.save_sd2_like, {"w_min": 1.0, "w_max": 12.0}),
    "sdxl": (tiny_models.save_sdxl_like, {"w_min": 1.0, "w_max": 12.0}),
}


def _coco(path: Path, captions) -> Path:
    path.write_text(json.dumps({"images": [], "annotations": [{"id": i, "image_id": i, "caption": c}
                                                            for i, c in enumerate(captions)]}))
    return path


def _params(backend: str, base: Path, captions: Path, conditions: dict) -> dict:
    return {
        "base": {"backend": backend, "path": str(base)},
        "conditions": {**conditions, "captions_file": str(captions), "num_captions": 6, "seed": 0},
        "trajectories": {"scheduler": "DDIMScheduler", "num_steps": 4, "batch_size": 64, "output": "data/store.zarr"},
        "train": {"width": 16, "heads": 2, "mlp": 0, "w_gate": False, "steps": 100, "batch_size": 16, "lr": 0.003,
                  "buffer_trajectories": 64,
                  "checkpoint_every": 20},
        "fid_ref": {"image_folder": "data/real", "batch_size": 4},
        "evaluate": {"guidance_scales": [4.0], "default_scale": 4.0, "num_samples": 4, "num_steps": 3, "batch_size": 4,
                     "held_out_trajectories": 2, "captions_file": str(captions)},
    }


def _run(project: Path, *args) -> None:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"agd {' '.join(args)}: {result.output}\n{result.stderr}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Per family: conditions -> trajectories -> verify -> train, through the CLI."""
    import os

    runs = {}
    cwd = os.getcwd()
    for backend, (save, conditions) in FAMILIES.items():
        project = tmp_path_factory.mktemp(backend)
        base = save(project / "base")
        captions = _coco(project / "captions_train2017.json", CAPTIONS)
        (project / "params.yaml").write_text(yaml.safe_dump(_params(backend, base, captions, conditions)))
        os.chdir(project)
        try:
            for stage in ("conditions", "trajectories", "verify", "train"):
                _run(project, stage)
        finally:
            os.chdir(cwd)
        runs[backend] = project
    return runs


@pytest.mark.parametrize("backend", list(FAMILIES))
def test_store_shapes_and_attributes(trained, backend):
    project = trained[backend]
    store = TrajectoryStore.open(project / "data/store.zarr")
    a, g = store.attrs, store.group
    family = load_base(backend, str(project / "base"))
    n = 1000 if backend == "dit-xl-2" else 6
    assert len(store) == n and store.is_complete()
    assert g["x"].shape == (n, 4, 4, 8, 8)
    assert a["base"]["fingerprint"] == family.fingerprint
    if backend == "dit-xl-2":
        assert g["target"].shape == (n, 4, 8, 8, 8)  # epsilon + learned variance channels
        assert sorted(store.meta()["cond/labels"].tolist()) == list(range(1000))
        assert a["w_range"] == [1.0, 6.0]
    else:
        assert a["w_range"] == [1.0, 12.0] and len(a["captions"]) == 6
        assert set(a["captions"]) <= set(CAPTIONS)
        assert g["cond/prompt_embeds"].dtype == np.float16  # training never needs the text encoders
        if backend == "sd21":
            assert a["prediction_type"] == "v_prediction"
            assert store.cond_names == ["prompt_embeds"]
        else:
            assert store.cond_names == ["pooled", "prompt_embeds", "time_ids"]
            assert g["cond/prompt_embeds"].shape == (6, 12, 32)  # both encoders' hidden states, concatenated


def test_dit_cfg_acts_on_epsilon_and_keeps_conditional_variance(trained):
    family = load_base("dit-xl-2", str(trained["dit-xl-2"] / "base"))
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([700, 100])
    cond = {"labels": torch.tensor([1, 999])}
    out_cond, out_null = family.branches(x, t, cond)
    out_cfg = family.guide(out_cond, out_null, torch.tensor([4.0, 4.0]))
    null = family.forward(x, t, family.null_condition(cond))
    torch.testing.assert_close(out_cfg[:, 4:], out_cond[:, 4:])
    torch.testing.assert_close(out_cfg[:, :4], null[:, :4] + 4.0 * (out_cond[:, :4] - null[:, :4]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", list(FAMILIES))
def test_adapters_placed_identity_and_training_moves_towards_cfg(trained, backend):
    project = trained[backend]
    family = load_base(backend, str(project / "base"))
    pattern = "attn1" if backend == "dit-xl-2" else "attn2"
    fresh = AdapterSet(family, "cross_attention", 16, 2).attach(family)
    assert fresh.targets and all(name.endswith(pattern) for name in fresh.targets)
    store = TrajectoryStore.open(project / "data/store.zarr")
    meta = store.meta()

    def state(i):  # every recorded state of trajectory i, with its condition and w
        traj = store.read(i)
        t = torch.from_numpy(meta["t"])
        cond = family.condition_batch({k[5:]: v[[i] * len(t)] for k, v in meta.items() if k.startswith("cond/")})
        w = torch.full((len(t),), float(meta["w"][i]))
        return torch.from_numpy(traj["x"]), t, cond, w, torch.from_numpy(traj["target"])

    rows = range(min(len(store), 6))
    err_trained = err_init = 0.0
    with torch.no_grad():
        for i in rows:
            x, t, cond, w, target = state(i)
            plain = family.forward(x, t, cond)
            assert torch.equal(fresh(family, x, t, cond, w), plain)  # identity at init
            err_init += (family.guided_channels(plain) - family.guided_channels(target)).pow(2).sum().item()
        fresh.detach()
        trained_adapters = AdapterSet.load(project / "models/adapters", family)
        for i in rows:
            x, t, cond, w, target = state(i)
            out = trained_adapters(family, x, t, cond, w)
            err_trained += (family.guided_channels(out) - family.guided_channels(target)).pow(2).sum().item()
    assert err_trained < err_init, "AGD's one pass did not move towards the two-pass CFG output"
    report = json.loads((project / "reports/train.json").read_text())
    assert report["final_loss"] < report["initial_loss"]


def test_text_backend_evaluate_and_sample(trained, prepared_data, monkeypatch):
    """SDXL-like: FID reference from an image folder, VAE decode, evaluation and CLI sampling."""
    project = trained["sdxl"]
    (project / "data/assets").mkdir(parents=True, exist_ok=True)
    link = project / "data/assets/inception-2015-12-05.pt"
    if not link.exists():
        link.symlink_to(prepared_data / "assets/inception-2015-12-05.pt")
    real = project / "data/real"
    real.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(real / f"{i}.png")
    monkeypatch.chdir(project)
    _run(project, "fid-ref")
    _run(project, "teacher")
    _run(project, "evaluate")
    timing = json.loads((project / "reports/timing.json").read_text())
    assert timing["w4"]["cfg"]["nfe_per_image"] == 6 and timing["w4"]["agd"]["nfe_per_image"] == 3
    quality = json.loads((project / "reports/quality.json").read_text())
    assert "accuracy" not in quality["w4"]["cfg"] and "judge_fd" not in quality["w4"]["cfg"]  # no judge for text models
    assert {"fid_diff", "kid_diff"} <= set(json.loads((project / "reports/metrics.json").read_text())["w4"])
    _run(project, "sample", "--prompt", "a cat", "--prompt", "a dog", "-w", "7.5", "--out", "two.png")
    assert Image.open(project / "two.png").size == (32, 16)


@pytest.mark.parametrize("content, problem", [
    (None, "not found"), ("{not json", "not JSON"), ('{"images": []}', "not COCO captions format"),
    ('{"annotations": []}', "holds no captions"), ('{"annotations": [{"caption": "one"}]}', "1 captions, 6 requested"),
])
def test_captions_file_errors(trained, tmp_path, monkeypatch, content, problem):
    from pipeline.data.captions import sample_captions

    path = tmp_path / "captions.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(AGDError, match=problem) as err:
        sample_captions(path, 6, np.random.default_rng(0))
    if "requested" not in problem:  # a file that is not usable says where to get a good one
        assert "captions_train2017.json" in err.value.fix


@pytest.mark.parametrize("backend", list(FAMILIES))
def test_hoisted_adapters_equal_the_per_block_adapters_on_every_family(trained, backend):
    """Trained adapters of every family (class token: folded values; 77-ish prompt tokens: attention over
    hoisted keys and values) give the per-block reference's output within 1e-5 relative."""
    project = trained[backend]
    family = load_base(backend, str(project / "base"))
    adapters = AdapterSet.load(project / "models/adapters", family)
    store = TrajectoryStore.open(project / "data/store.zarr")
    meta = store.meta()
    traj = store.read(0)
    t = torch.from_numpy(meta["t"])
    cond = family.condition_batch({k[5:]: v[[0] * len(t)] for k, v in meta.items() if k.startswith("cond/")})
    x, w = torch.from_numpy(traj["x"]), torch.full((len(t),), float(meta["w"][0]))
    with torch.no_grad():
        fused = adapters(family, x, t, cond, w)
        adapters.fused = False
        reference = adapters(family, x, t, cond, w)
        plain = family.forward(x, t, cond)
    assert (reference - plain).abs().max() > 0, "the trained adapters change nothing: no test"
    assert ((fused - reference).abs().max() / reference.abs().max()).item() < 1e-5


@pytest.mark.parametrize("scheduler", ["DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler",
                                       "EulerDiscreteScheduler"])
def test_learned_variance_dit_samples_with_every_scheduler_as_the_stages_do(trained, monkeypatch, scheduler):
    """DiT-XL/2-like (8 output channels): `agd sample` under every sampler, AGD and CFG, gives the images
    of the stages' own loop (DDPM there reads the learned variance, which DiTPipeline drops)."""
    from pipeline.guidance.sampling import sample

    project = trained["dit-xl-2"]
    monkeypatch.chdir(project)
    family = load_base("dit-xl-2", str(project / "base"))
    adapters = AdapterSet.load(project / "models/adapters", family)
    cond = family.condition_batch(family.condition_arrays([{"label": 1}, {"label": 2}]))
    for guidance in ("agd", "cfg"):
        _run(project, "sample", "--labels", "1,2", "-w", "4", "--scheduler", scheduler, "--steps", "4",
             "--guidance", guidance, "--out", f"{guidance}.png")
        with torch.no_grad():
            x = sample(family, cond, np.arange(2), torch.full((2,), 4.0), scheduler, 4, mode=guidance,
                       adapters=adapters)
        loop = np.concatenate(list(family.decode(x).cpu().numpy()), axis=1)
        png = np.asarray(Image.open(project / f"{guidance}.png"))
        # the pipeline path's decode rounds like ours; one level of uint8 apart at most
        assert png.shape == loop.shape and np.abs(png.astype(int) - loop.astype(int)).max() <= 1, (scheduler, guidance)



@pytest.mark.parametrize("backend", ["sd21", "sdxl"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_agd_sample_on_a_half_precision_text_base(trained, tmp_path, monkeypatch, backend, dtype):
    """The backend files' bfloat16 base (and the float16 most pipelines load), saved in that dtype:
    `agd sample` runs AGD and CFG through the diffusers pipeline, near the float32 base's images."""
    import shutil

    from diffusers import DiffusionPipeline

    project = trained[backend]
    half = tmp_path / "half"
    DiffusionPipeline.from_pretrained(str(project / "base"), torch_dtype=getattr(torch, dtype)).save_pretrained(half)
    shutil.copytree(project / "models", tmp_path / "models")
    params = yaml.safe_load((project / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    for guidance in ("agd", "cfg"):
        for base, precision in ((half, dtype), (project / "base", "float32")):
            params["base"].update(path=str(base), dtype=precision)
            (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
            _run(tmp_path, "sample", "--prompt", "a cat", "--steps", "3", "-w", "7.5", "--guidance", guidance,
                 "--out", f"{precision}.png")
        ours, full = (np.asarray(Image.open(tmp_path / f"{n}.png")).astype(int) for n in (dtype, "float32"))
        assert ours.shape == full.shape and np.abs(ours - full).mean() < 8, (guidance, np.abs(ours - full).mean())
