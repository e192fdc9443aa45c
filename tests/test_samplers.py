"""Samplers: the evaluation sampler may differ from the trajectory sampler, and DiT samples as the
DiT paper does (DDPM with its learned variance), or guides three channels as the original code."""

from __future__ import annotations

import json

import torch

from pipeline.backends.loading import load_base
from pipeline.backends.schedulers import family_scheduler, noise_levels
from pipeline.guidance.sampling import Guidance, nfe, plan_for, sample, step_plan
from tests.conftest import agd, set_params
from tests.tiny_models import save_dit_xl_like


def _dit(tmp_path, **options):
    return load_base("dit-xl-2", str(save_dit_xl_like(tmp_path / "dit")), **options)


def test_ddpm_samples_with_dit_learned_variance(tmp_path, monkeypatch):
    family = _dit(tmp_path)
    ddpm = family_scheduler(family, "DDPMScheduler", 4)
    assert ddpm.config.variance_type == "learned_range"
    out = torch.randn(2, 8, 8, 8)
    assert family.scheduler_output(out, ddpm).shape[1] == 8  # epsilon and the variance go to the step
    assert family.scheduler_output(out, family_scheduler(family, "DDIMScheduler", 4)).shape[1] == 4

    def run(labels, seeds):
        return sample(family, {"labels": torch.tensor(labels)}, seeds, torch.full((len(seeds),), 4.0),
                      "DDPMScheduler", 4, mode="cfg")

    both = run([3, 7], [5, 6])
    assert torch.isfinite(both).all()
    torch.testing.assert_close(run([7], [6])[0], both[1], atol=1e-5, rtol=1e-5)  # step noise is per seed
    assert torch.equal(run([3, 7], [5, 6]), both)  # a stochastic sampler, reproducible
    monkeypatch.setattr(family, "scheduler_overrides", lambda name: {})  # fixed variance instead
    assert not torch.allclose(run([3, 7], [5, 6]), both)  # so the learned variance was used


def test_dit_original_code_guides_three_channels(tmp_path):
    family = _dit(tmp_path, cfg_channels=3)
    x, t, cond, w = torch.randn(2, 4, 8, 8), torch.tensor([700, 100]), {"labels": torch.tensor([1, 999])}, 4.0
    out_cond, out_null = family.branches(x, t, cond)
    out_cfg = family.guide(out_cond, out_null, torch.tensor([w, w]))
    null = family.forward(x, t, family.null_condition(cond))
    torch.testing.assert_close(out_cfg[:, 3:], out_cond[:, 3:])  # fourth epsilon channel and variance: conditional
    torch.testing.assert_close(out_cfg[:, :3], null[:, :3] + w * (out_cond[:, :3] - null[:, :3]), rtol=1e-4, atol=1e-5)
    assert family.content_identity()["cfg_channels"] == 3  # a store collected this way is another store
    assert "cfg_channels" not in _dit(tmp_path / "all").content_identity()


def test_evaluation_sampler_differs_from_the_trajectory_sampler(project_copy, tiny_project):
    set_params(project_copy, **{"evaluate.scheduler": "DDPMScheduler", "evaluate.guidance_scales": [3.0]})
    agd(project_copy, "teacher")
    done = agd(project_copy, "evaluate")
    assert "samples with DDPMScheduler, 5 steps; distillation on DDIMScheduler trajectories of 5 steps" in done.stderr
    new = json.loads((project_copy / "reports/metrics.json").read_text())
    old = json.loads((tiny_project / "reports/metrics.json").read_text())
    # the held-out trajectories still come from the sampler the adapters were trained on ...
    assert new["w3"]["correction_captured"] == old["w3"]["correction_captured"]
    # ... while the samples come from DDPM
    assert new["w3"]["fid_diff"] != old["w3"]["fid_diff"]


def _run(family, mode, guidance=Guidance(), scheduler="DDIMScheduler", steps=6):
    return sample(family, {"labels": torch.tensor([3, 7])}, [5, 6], torch.full((2,), 4.0), scheduler, steps,
                  mode=mode, guidance=guidance)


def test_guidance_interval_is_cfg_over_the_whole_band_and_conditional_outside_it(tmp_path):
    family = _dit(tmp_path)
    cfg, cond = _run(family, "cfg"), _run(family, "cond")
    sigmas = noise_levels(family_scheduler(family, "DDIMScheduler", 6))
    assert (sigmas[:-1] > sigmas[1:]).all()  # from noise to data
    everything, nothing = Guidance(interval=(0.0, float("inf"))), Guidance(interval=(1e6, 2e6))
    assert torch.equal(_run(family, "interval", everything), cfg)
    assert torch.equal(_run(family, "interval", nothing), cond)
    band = Guidance(interval=(float(sigmas[4]), float(sigmas[1])))  # (low, high]: steps 1, 2, 3
    assert plan_for(family, "DDIMScheduler", 6, "interval", band) == ["cond", "cfg", "cfg", "cfg", "cond", "cond"]
    middle = _run(family, "interval", band)
    assert not torch.allclose(middle, cfg) and not torch.allclose(middle, cond)


def test_unconditional_reuse_is_cfg_when_nothing_is_skipped(tmp_path):
    family = _dit(tmp_path)
    cfg = _run(family, "cfg")
    assert torch.equal(_run(family, "reuse", Guidance(reuse=0.0)), cfg)
    half = Guidance(reuse=0.5)
    assert plan_for(family, "DDIMScheduler", 6, "reuse", half) == ["cfg", "cfg", "reuse", "cfg", "reuse", "cfg"]
    reused = _run(family, "reuse", half)
    assert not torch.allclose(reused, cfg)  # the stale unconditional output changes the samples ...
    assert (reused - cfg).abs().mean() < (_run(family, "cond") - cfg).abs().mean()  # ... far less than no guidance


def test_nfe_counts_every_pass_spent():
    sigmas = [9.0, 4.0, 2.0, 1.0, 0.5, 0.1]
    assert nfe(step_plan("cfg", sigmas)) == 12 and nfe(step_plan("agd", sigmas)) == 6
    assert nfe(step_plan("cond", sigmas)) == 6
    assert nfe(step_plan("interval", sigmas, Guidance(interval=(0.3, 3.0)))) == 3 * 2 + 3
    assert nfe(step_plan("reuse", sigmas, Guidance(reuse=0.5))) == 12 - 2
    assert step_plan("reuse", sigmas, Guidance(reuse=0.9))[0] == "cfg"  # the first step has nothing to reuse
    assert nfe(step_plan("reuse", sigmas, Guidance(reuse=0.9))) == 12 - 4


def test_compiled_sampling_agrees_with_eager(tiny_project):
    """sample.compile: CFG's and AGD's samples through torch.compile equal the eager ones to float
    tolerance (the same seeds; the compiled graphs are fixed-shape, one per batch shape)."""
    from pipeline.guidance.adapters import AdapterSet

    family = load_base("mnist-dit", str(tiny_project / "models" / "base-mnist-dit"))
    adapters = AdapterSet.load(tiny_project / "models" / "adapters", family)
    cond, seeds, w = {"labels": torch.tensor([0, 3, 7])}, [0, 1, 2], torch.full((3,), 3.0)
    eager = {m: sample(family, cond, seeds, w, "DPMSolverMultistepScheduler", 3, mode=m, adapters=adapters)
             for m in ("cfg", "agd")}
    family.compile()
    for mode, expected in eager.items():
        out = sample(family, cond, seeds, w, "DPMSolverMultistepScheduler", 3, mode=mode, adapters=adapters)
        assert family.compiled
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    assert (eager["agd"] - eager["cfg"]).abs().max() > 1e-3  # the two methods differ: the check can fail
