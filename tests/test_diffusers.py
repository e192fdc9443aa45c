"""AGD inside the real diffusers pipelines (DiTPipeline, StableDiffusionPipeline with v-prediction,
StableDiffusionXLPipeline, StableDiffusionControlNetPipeline), on tiny saved models of each family:
same latents as our sampling loop, the pipeline's own CFG when disabled, refusals, LoRA, ControlNet."""

from __future__ import annotations

import json
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from pipeline.backends import get_spec
from pipeline.backends.loading import load_base
from pipeline.backends.schedulers import family_scheduler, noise_levels, seeded_generators
from pipeline.cli import app
from pipeline.guidance import rules
from pipeline.guidance.adapters import AdapterSet
from pipeline.guidance.diffusers_agd import disable_agd, enable_agd, is_enabled
from pipeline.guidance.sampling import sample
from pipeline.run.errors import AGDError
from tests import tiny_models

PIPELINES = {  # backend: (save, pipeline class, conditions)
    "dit-xl-2": (tiny_models.save_dit_xl_like, diffusers.DiTPipeline, [3, 971]),
    "sd21": (tiny_models.save_sd2_like, diffusers.StableDiffusionPipeline, ["a cat on a sofa", "two dogs"]),
    "sdxl": (tiny_models.save_sdxl_like, diffusers.StableDiffusionXLPipeline, ["a cat on a sofa", "two dogs"]),
}
SCHEDULER, STEPS, W, SEEDS = "DPMSolverMultistepScheduler", 4, 4.0, [5, 9]


def _adapters(family, seed: int = 1, **config) -> AdapterSet:
    """Adapters with every weight moved off its (zero) initial value: they change the output."""
    adapters = AdapterSet(family, **config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapters.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return adapters


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Per family: the tiny base saved as a diffusers pipeline, and adapters saved beside it."""
    out = {}
    for backend, (save, _, _) in PIPELINES.items():
        root = tmp_path_factory.mktemp(backend)
        base = save(root / "base")
        family = load_base(backend, str(base))
        config = {"mlp": 2} if backend == "dit-xl-2" else {"w_gate": True}  # content path; gate
        _adapters(family, **config).save(root / "adapters")
        out[backend] = root
    return out


def _pipe(backend, root: Path):
    pipe = PIPELINES[backend][1].from_pretrained(str(root / "base"))
    pipe.scheduler = getattr(diffusers, SCHEDULER).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _call(pipe, backend, w=W, seeds=SEEDS, **kwargs):
    """The pipeline's latents (DiTPipeline returns none: its decoded images in [0, 1])."""
    key = "class_labels" if backend == "dit-xl-2" else "prompt"
    kwargs.setdefault("output_type", "pt" if backend == "dit-xl-2" else "latent")
    return pipe(**{key: PIPELINES[backend][2]}, guidance_scale=w, num_inference_steps=STEPS,
                generator=seeded_generators(seeds), **kwargs).images


def _loop(backend, root: Path, mode: str, w=W, family=None, adapters: Path | None = None):
    """Our sampling loop (trajectories, evaluation, the embedded default's `agd sample`), same seeds;
    mode "cfg" runs the adapters' teacher rule."""
    family = family or load_base(backend, str(root / "base"))
    adapters = AdapterSet.load(adapters or root / "adapters", family)
    conditions = PIPELINES[backend][2]
    if backend == "dit-xl-2":
        cond = family.condition_batch(family.condition_arrays([{"label": c} for c in conditions]))
    else:
        cond = family.encode(conditions)  # full precision, as the pipeline encodes (stores keep float16)
    x = sample(family, cond, SEEDS, torch.full((len(conditions),), w), SCHEDULER, STEPS, mode=mode, adapters=adapters,
               rule=adapters.teacher)
    adapters.detach()
    if backend == "dit-xl-2":  # compare as DiTPipeline outputs: decoded to [0, 1]
        x = (family.vae.decode(x / family.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    return x


def _rel(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("backend", list(PIPELINES))
def test_enabled_pipeline_gives_our_samplers_agd_and_disabled_its_own_cfg(bases, backend):
    root = bases[backend]
    pipe = _pipe(backend, root)
    plain_cfg = _call(pipe, backend)
    enable_agd(pipe, root / "adapters")
    assert is_enabled(pipe) and type(pipe).__name__ == PIPELINES[backend][1].__name__
    agd = _call(pipe, backend)
    assert _rel(agd, _loop(backend, root, "agd")) < 1e-5
    assert _rel(agd, plain_cfg) > 1e-2, "AGD's output equals CFG's: the test cannot tell them apart"
    assert _rel(agd, _loop(backend, root, "cond", w=1.0)) > 1e-2, "the adapters change nothing: no test"
    disable_agd(pipe)
    assert not is_enabled(pipe) and type(pipe) is PIPELINES[backend][1]
    assert torch.equal(_call(pipe, backend), plain_cfg)  # disabled: the pipeline's own CFG, bit for bit
    # and that CFG is our teacher's (its null prompt embedding is stored in float16: 1e-4)
    assert _rel(plain_cfg, _loop(backend, root, "cfg")) < 1e-4


@pytest.mark.parametrize("backend", list(PIPELINES))
def test_guidance_scale_at_most_one_is_the_plain_conditional_model(bases, backend):
    root = bases[backend]
    pipe = _pipe(backend, root)
    plain = _call(pipe, backend, w=1.0)
    enable_agd(pipe, root / "adapters")
    assert torch.equal(_call(pipe, backend, w=1.0), plain)
    assert _rel(plain, _loop(backend, root, "cond", w=1.0)) < 1e-5


def test_pipeline_features_keep_working(bases):
    """num_images_per_prompt, step callbacks, output types, save_pretrained, re-enabling."""
    root = bases["sd21"]
    pipe = enable_agd(_pipe("sd21", root), root / "adapters")
    seen = []

    def callback(p, i, t, tensors):
        seen.append((i, tensors["latents"].shape[0]))
        return {}

    prompts = PIPELINES["sd21"][2]
    out = pipe(prompts, guidance_scale=W, num_inference_steps=STEPS, num_images_per_prompt=2,
               generator=seeded_generators([5, 6, 9, 10]), output_type="latent", callback_on_step_end=callback).images
    assert seen == [(i, 4) for i in range(STEPS)]
    single = _call(pipe, "sd21")  # prompt i, seed SEEDS[i]: the first image of each prompt above
    assert _rel(out[[0, 2]], single) < 1e-5
    images = pipe(prompts[0], guidance_scale=W, num_inference_steps=STEPS, output_type="pil").images
    assert isinstance(images[0], Image.Image) and images[0].size == (16, 16)
    pipe.save_pretrained(root / "saved")
    assert json.loads((root / "saved/model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    enable_agd(pipe, root / "adapters")  # again: replaces the first, no second set of hooks
    assert _rel(_call(pipe, "sd21"), single) < 1e-6


@pytest.mark.parametrize("kwargs, where", [
    ({"negative_prompt": ["blurry", "dark"]}, "negative_prompt"),
    ({"negative_prompt": ["", "blurry"]}, "negative_prompt"),
    ({"negative_prompt_embeds": torch.zeros(2, 12, 16)}, "negative_prompt_embeds"),
    ({"guidance_rescale": 0.7}, "guidance_rescale"),
])
def test_what_agd_cannot_do_is_refused_with_the_way_out(bases, kwargs, where):
    root = bases["sd21"]
    pipe = enable_agd(_pipe("sd21", root), root / "adapters")
    with pytest.raises(AGDError, match="disable_agd") as err:
        _call(pipe, "sd21", **kwargs)
    assert err.value.where == where
    assert _rel(_call(pipe, "sd21", negative_prompt=["", ""]), _loop("sd21", root, "agd")) < 1e-5  # the empty one is fine
    assert _call(pipe, "sd21", w=1.0, **kwargs) is not None  # no CFG, nothing for AGD to do: the pipeline's own


def _with_teacher(root: Path, backend: str, rule: rules.Rule, name: str) -> Path:
    """The saved test adapters again, recorded as distilled from `rule`."""
    adapters = AdapterSet.load(root / "adapters", load_base(backend, str(root / "base")))
    adapters.teacher = rule
    adapters.save(root / name)
    return root / name


@pytest.mark.parametrize("backend", list(PIPELINES))
def test_interval_adapters_run_only_inside_their_band_in_the_pipeline(bases, backend):
    """The hook reads each step's sigma from the pipeline's scheduler: adapters on at steps 1 and 2
    (inside the band), the plain conditional pass at steps 0 and 3, as our sampler runs the rule."""
    root = bases[backend]
    sigmas = noise_levels(family_scheduler(load_base(backend, str(root / "base")), SCHEDULER, STEPS))
    band = (float(sigmas[3] + sigmas[2]) / 2, float(sigmas[1] + sigmas[0]) / 2)
    path = _with_teacher(root, backend, rules.Interval(*band), "interval")
    pipe = enable_agd(_pipe(backend, root), path)
    got = _call(pipe, backend)
    assert _rel(got, _loop(backend, root, "agd", adapters=path)) < 1e-5
    assert _rel(got, _loop(backend, root, "agd")) > 1e-3, "the band changes nothing: the test cannot tell"
    assert _rel(got, _loop(backend, root, "cond", w=1.0)) > 1e-3, "the adapters never ran"


@pytest.mark.parametrize("backend", ["sd21", "sdxl"])
def test_rescale_adapters_run_at_their_phi_and_refuse_another(bases, backend):
    root = bases[backend]
    path = _with_teacher(root, backend, rules.Rescale(phi=0.7), "rescale")
    pipe = enable_agd(_pipe(backend, root), path)
    assert _rel(_call(pipe, backend, guidance_rescale=0.7), _loop(backend, root, "agd", adapters=path)) < 1e-5
    for other in (0.0, 0.5):
        with pytest.raises(AGDError, match="use guidance_rescale=0.7") as err:
            _call(pipe, backend, guidance_rescale=other)
        assert err.value.where == "guidance_rescale"
    # the pipeline's own CFG with that rescaling is the teacher our trajectories record
    disable_agd(pipe)
    assert _rel(_call(pipe, backend, guidance_rescale=0.7), _loop(backend, root, "cfg", adapters=path)) < 1e-4


def test_adapters_of_rules_the_pipeline_cannot_run_are_refused(bases):
    for backend, rule in (("sd21", rules.APG()), ("sdxl", rules.CFGZeroStar(zero_init_steps=1)),
                          ("dit-xl-2", rules.Rescale(phi=0.7))):  # DiTPipeline has no guidance_rescale
        path = _with_teacher(bases[backend], backend, rule, f"refused-{rule.name}")
        pipe = _pipe(backend, bases[backend])
        with pytest.raises(AGDError, match="agd sample") as err:
            enable_agd(pipe, path)
        assert rule.name in str(err.value) and not is_enabled(pipe)


def test_sdxl_negative_conditioning_is_refused(bases):
    pipe = enable_agd(_pipe("sdxl", bases["sdxl"]), bases["sdxl"] / "adapters")
    with pytest.raises(AGDError, match="negative_original_size"):
        _call(pipe, "sdxl", negative_original_size=(8, 8))


def test_wrong_adapters_and_pipelines_are_refused(bases, tmp_path):
    with pytest.raises(AGDError, match="not a pipeline AGD supports"):  # SD adapters, DiT pipeline
        enable_agd(_pipe("dit-xl-2", bases["dit-xl-2"]), bases["sd21"] / "adapters")
    img2img = diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(str(bases["sd21"] / "base"))
    with pytest.raises(AGDError, match="StableDiffusionImg2ImgPipeline"):
        enable_agd(img2img, bases["sd21"] / "adapters")
    other = tiny_models.save_sd2_like(tmp_path / "other")  # same architecture, other weights
    with torch.no_grad():
        unet = diffusers.UNet2DConditionModel.from_pretrained(str(other), subfolder="unet")
        unet.conv_in.weight.add_(0.01)
        unet.save_pretrained(other / "unet")
    with pytest.raises(AGDError, match="made for base"):
        enable_agd(diffusers.StableDiffusionPipeline.from_pretrained(str(other)), bases["sd21"] / "adapters")
    with pytest.raises(AGDError, match="no such folder or file, and not a Hub repository id"):
        enable_agd(_pipe("sd21", bases["sd21"]), tmp_path / "nothing")
    embedded = tmp_path / "embedded"
    embedded.mkdir()
    meta = json.loads((bases["dit-xl-2"] / "adapters/adapters.json").read_text())
    (embedded / "adapters.safetensors").write_bytes((bases["dit-xl-2"] / "adapters/adapters.safetensors").read_bytes())
    for backend, words in (("mnist-dit", "embedded default .* which no diffusers pipeline runs"),
                           ("dalle", "adapters.json: base.backend: unknown backend 'dalle'")):
        (embedded / "adapters.json").write_text(json.dumps({**meta, "base": {**meta["base"], "backend": backend}}))
        with pytest.raises(AGDError, match=words) as err:
            enable_agd(_pipe("dit-xl-2", bases["dit-xl-2"]), embedded)
        assert "DiTPipeline" not in err.value.fix


def test_half_precision_pipeline_is_recognised_as_the_base(bases, tmp_path):
    """Adapter files record the base's fingerprint in half precision too: a pipeline loaded with
    torch_dtype=bfloat16 is the same base; a file from before that is refused with the fix."""
    root = bases["sd21"]
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(root / "base"), torch_dtype=torch.bfloat16)
    enable_agd(pipe, root / "adapters")
    assert is_enabled(pipe)
    old = tmp_path / "old"
    old.mkdir()
    meta = json.loads((root / "adapters/adapters.json").read_text())
    del meta["base"]["fingerprints"]
    (old / "adapters.json").write_text(json.dumps(meta))
    (old / "adapters.safetensors").write_bytes((root / "adapters/adapters.safetensors").read_bytes())
    with pytest.raises(AGDError, match="no fingerprint of the base in bfloat16"):
        enable_agd(diffusers.StableDiffusionPipeline.from_pretrained(str(root / "base"), torch_dtype=torch.bfloat16),
                   old)
    enable_agd(_pipe("sd21", root), old)  # full precision still checks against the recorded fingerprint


def test_adapters_trained_on_a_bfloat16_base_know_its_float16_weights(bases, tmp_path):
    """The backend files train on a bfloat16 base; most SD/SDXL users load float16 pipelines. The
    adapter file records the fingerprints of every half dtype, taken before the base was converted."""
    root = bases["sd21"]
    family = load_base(backend="sd21", path=str(root / "base"), dtype="bfloat16")
    AdapterSet(family, "cross_attention", 16, 2, 0).attach(family).save(tmp_path / "adapters")
    recorded = json.loads((tmp_path / "adapters/adapters.json").read_text())["base"]["fingerprints"]
    assert set(recorded) == {"float16", "bfloat16"}
    for dtype in (torch.float16, torch.bfloat16):
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(root / "base"), torch_dtype=dtype)
        enable_agd(pipe, tmp_path / "adapters")
        assert is_enabled(pipe)


def _lora(root: Path) -> Path:
    """A tiny LoRA on the SD2-like UNet's attention, saved the way diffusers' training scripts do."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = diffusers.UNet2DConditionModel.from_pretrained(str(root / "base"), subfolder="unet")
    torch.manual_seed(3)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    out = root / "lora"
    diffusers.StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=get_peft_model_state_dict(unet))
    return out


def test_lora_composes_with_agd(bases):
    """A LoRA loaded with load_lora_weights, before or after enable_agd: the adapters run on the LoRA'd
    UNet, exactly as our loop runs them on it; the base is still recognised under the LoRA."""
    from pipeline.backends.sd import SDFamily

    root = bases["sd21"]
    lora = _lora(root)
    pipe = _pipe("sd21", root)
    pipe.load_lora_weights(str(lora))
    lora_cfg = _call(pipe, "sd21")
    enable_agd(pipe, root / "adapters")
    with_lora = _call(pipe, "sd21")
    disable_agd(pipe)
    family = SDFamily.from_pipeline(get_spec("sd21"), pipe)  # the LoRA'd UNet, in our loop
    assert _rel(with_lora, _loop("sd21", root, "agd", family=family)) < 1e-5
    assert _rel(lora_cfg, _loop("sd21", root, "cfg", family=family)) < 1e-4
    assert _rel(with_lora, _loop("sd21", root, "agd")) > 1e-3, "the LoRA changes nothing: no test"
    late = enable_agd(_pipe("sd21", root), root / "adapters")
    late.load_lora_weights(str(lora))
    assert _rel(_call(late, "sd21"), with_lora) < 1e-6
    late.set_adapters(["default_0"], adapter_weights=[0.0])  # LoRA scale 0: the base again
    assert _rel(_call(late, "sd21"), _loop("sd21", root, "agd")) < 1e-5


def _controlnet_pipe(root: Path):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    base = _pipe("sd21", root)
    torch.manual_seed(4)
    controlnet = ControlNetModel.from_unet(base.unet, conditioning_embedding_out_channels=(4, 8))
    with torch.no_grad():  # its output convolutions start at zero: move them, or the ControlNet does nothing
        for block in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            block.weight.normal_(0, 0.2)
    pipe = StableDiffusionControlNetPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                                             unet=base.unet, controlnet=controlnet, scheduler=base.scheduler,
                                             safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_controlnet_composes_with_agd_and_runs_once_per_step(bases):
    from pipeline.backends.schedulers import family_scheduler, initial_noise
    from pipeline.backends.sd import SDFamily

    root = bases["sd21"]
    pipe = _controlnet_pipe(root)
    prompts = PIPELINES["sd21"][2]
    control = Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8))
    kwargs = dict(image=control, guidance_scale=W, num_inference_steps=STEPS, output_type="latent")
    cfg = pipe(prompts, generator=seeded_generators(SEEDS), **kwargs).images
    enable_agd(pipe, root / "adapters")
    batches = []
    for module in (pipe.unet, pipe.controlnet):  # after AGD's hooks: sees what the modules run on
        module.register_forward_pre_hook(lambda m, args, kw: batches.append((args or [kw.get("sample")])[0].shape[0]),
                                         with_kwargs=True)
    agd = pipe(prompts, generator=seeded_generators(SEEDS), **kwargs).images
    assert batches == [2] * (2 * STEPS), "the UNet and the ControlNet ran on CFG's doubled batch"
    assert _rel(agd, cfg) > 1e-2
    # the reference: our adapters' pass with the ControlNet's residuals of the conditional input
    family = SDFamily.from_pipeline(get_spec("sd21"), pipe)
    adapters = AdapterSet.load(root / "adapters", family)
    cond = pipe.encode_prompt(prompts, torch.device("cpu"), 1, False)[0]
    image = pipe.prepare_image(control, 16, 16, 2, 1, torch.device("cpu"), torch.float32, False)
    scheduler = family_scheduler(family, SCHEDULER, STEPS)
    x = initial_noise(seeded_generators(SEEDS), family.latent_shape) * scheduler.init_noise_sigma
    fixed = adapters.context(family, {"prompt_embeds": cond}, torch.full((2,), W))
    disable_agd(pipe)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x_in = scheduler.scale_model_input(x, t)
            down, mid = pipe.controlnet(x_in, t, encoder_hidden_states=cond, controlnet_cond=image, return_dict=False)
            adapters.begin(family, fixed, t.expand(2))
            out = pipe.unet(x_in, t, encoder_hidden_states=cond, down_block_additional_residuals=down,
                            mid_block_additional_residual=mid).sample
            adapters.release()
            x = scheduler.step(out, t, x).prev_sample
    assert _rel(agd, x) < 1e-5
    enable_agd(pipe, root / "adapters")
    guess = pipe(prompts, generator=seeded_generators(SEEDS), guess_mode=True, **kwargs).images  # ControlNet on the
    assert guess.shape == agd.shape and torch.isfinite(guess).all()  # conditional half only, as the pipeline runs it


@pytest.mark.parametrize("backend", ["dit-xl-2", "sd21"])
def test_agd_sample_runs_the_enabled_pipeline(bases, backend, tmp_path, monkeypatch):
    """`agd sample --scheduler --steps` is the diffusers path: the same pixels as the enabled pipeline."""
    root = bases[backend]
    params = {"base": {"backend": backend, "path": str(root / "base")}, "train": {"output": str(root / "adapters")},
              "trajectories": {"scheduler": "DDIMScheduler"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    conditions = PIPELINES[backend][2]
    flags = (["--labels", ",".join(map(str, conditions))] if backend == "dit-xl-2"
             else [a for c in conditions for a in ("--prompt", c)])
    result = CliRunner().invoke(app, ["sample", *flags, "-w", str(W), "--scheduler", SCHEDULER, "--steps", str(STEPS),
                                      "--seed", "5", "--out", "row.png"])
    assert result.exit_code == 0, result.output
    row = np.asarray(Image.open(tmp_path / "row.png")).astype(int)
    pipe = enable_agd(_pipe(backend, root), root / "adapters")
    images = _call(pipe, backend, seeds=[5, 6], output_type="np")
    expected = np.concatenate(list((np.asarray(images) * 255).round().astype(int)), axis=1)
    assert np.abs(row - expected).max() <= 1
    bad = CliRunner().invoke(app, ["sample", *flags, "--scheduler", "NoSuchScheduler"])
    assert bad.exit_code == 2 and "not a diffusers scheduler class" in bad.output


NEGATIVES = ["blurry, low quality", "two cats"]


@pytest.fixture(scope="module")
def negative_adapters(bases):
    """Per family: adapters trained with negative conditions (weights moved off zero), saved."""
    out = {}
    for backend in ("sd21", "sdxl", "dit-xl-2"):
        family = load_base(backend, str(bases[backend] / "base"))
        config = {"mlp": 2} if backend == "dit-xl-2" else {"w_gate": True}
        _adapters(family, seed=2, negatives=True, **config).save(bases[backend] / "adapters-negatives")
        out[backend] = bases[backend] / "adapters-negatives"
    return out


def _loop_with_negatives(backend, root: Path, mode: str, adapters: Path, negatives=NEGATIVES):
    """Our sampling loop with the negative prompts as CFG's unconditional branch (as trajectories record it)."""
    family = load_base(backend, str(root / "base"))
    loaded = AdapterSet.load(adapters, family)
    cond = family.encode(PIPELINES[backend][2])
    cond.update({f"negative_{k}": v for k, v in family.encode(negatives).items()})
    cond.pop("negative_time_ids", None)  # SDXL: the negative branch keeps the condition's size ids (unconditional)
    x = sample(family, cond, SEEDS, torch.full((2,), W), SCHEDULER, STEPS, mode=mode, adapters=loaded,
               rule=loaded.teacher)
    loaded.detach()
    return x


@pytest.mark.parametrize("backend", ["sd21", "sdxl"])
def test_adapters_trained_with_negatives_take_the_pipelines_negative_prompt(bases, negative_adapters, backend):
    """The enabled pipeline with a negative prompt is our sampler's AGD with that negative (1e-5), one pass
    per step; disabled, its CFG with the negative is the teacher the trajectories record (1e-4: stores
    keep embeddings in float16, the pipeline encodes in float32 here as our loop does)."""
    root, path = bases[backend], negative_adapters[backend]
    pipe = _pipe(backend, root)
    cfg_negative = _call(pipe, backend, negative_prompt=NEGATIVES)
    assert _rel(cfg_negative, _loop_with_negatives(backend, root, "cfg", path)) < 1e-4
    enable_agd(pipe, path)
    calls = []
    handle = pipe.unet.register_forward_pre_hook(lambda m, a, k: calls.append(1), with_kwargs=True)
    agd_negative = _call(pipe, backend, negative_prompt=NEGATIVES)
    handle.remove()
    assert len(calls) == STEPS  # one pass per step, with the negative too
    assert _rel(agd_negative, _loop_with_negatives(backend, root, "agd", path)) < 1e-5
    agd_plain = _call(pipe, backend)
    assert _rel(agd_negative, agd_plain) > 1e-3, "the negative changes nothing: the adapters do not read it"
    embeds = load_base(backend, str(root / "base")).encode(NEGATIVES)
    given = {"negative_prompt_embeds": embeds["prompt_embeds"]}
    if backend == "sdxl":
        given["negative_pooled_prompt_embeds"] = embeds["pooled"]
        given["prompt_embeds"], given["pooled_prompt_embeds"] = (
            lambda e: (e["prompt_embeds"], e["pooled"]))(load_base(backend, str(root / "base")).encode(PIPELINES[backend][2]))
        out = pipe(guidance_scale=W, num_inference_steps=STEPS, generator=seeded_generators(SEEDS),
                   output_type="latent", **given).images
    else:
        out = _call(pipe, backend, **given)
    assert _rel(out, agd_negative) < 1e-5  # embeddings or text: the same negative
    if backend == "sdxl":
        with pytest.raises(AGDError, match="negative_original_size"):  # never part of the teacher
            _call(pipe, backend, negative_original_size=(8, 8))


@pytest.mark.parametrize("backend", ["sd21", "dit-xl-2"])
def test_agd_sample_takes_a_negative(bases, negative_adapters, backend, tmp_path, monkeypatch):
    """`agd sample --negative`: SD through the enabled pipeline's negative_prompt, DiT (whose pipeline has
    no negative class) through our loop with the negative label; refused for adapters without negatives."""
    root = bases[backend]
    params = {"base": {"backend": backend, "path": str(root / "base")},
              "train": {"output": str(negative_adapters[backend])}, "trajectories": {"scheduler": SCHEDULER}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    conditions = PIPELINES[backend][2]
    if backend == "dit-xl-2":
        flags, negative = ["--labels", ",".join(map(str, conditions))], ["--negative", "5,6"]
    else:
        flags = [a for c in conditions for a in ("--prompt", c)]
        negative = [a for n in NEGATIVES for a in ("--negative", n)]
    result = CliRunner().invoke(app, ["sample", *flags, *negative, "-w", str(W), "--steps", str(STEPS), "--seed", "5",
                                      "--out", "row.png"])
    assert result.exit_code == 0, result.output
    row = np.asarray(Image.open(tmp_path / "row.png")).astype(int)
    if backend == "dit-xl-2":
        family = load_base(backend, str(root / "base"))
        adapters = AdapterSet.load(negative_adapters[backend], family)
        cond = family.condition_batch({"labels": np.array(conditions), "negative_labels": np.array([5, 6])})
        x = sample(family, cond, [5, 6], torch.full((2,), W), SCHEDULER, STEPS, mode="agd", adapters=adapters)
        expected = np.concatenate(list(family.decode(x).numpy().astype(int)), axis=1)
        plain = CliRunner().invoke(app, ["sample", *flags, "-w", str(W), "--steps", str(STEPS), "--seed", "5",
                                         "--out", "plain.png"])
        assert plain.exit_code == 0, plain.output
        assert np.abs(np.asarray(Image.open(tmp_path / "plain.png")).astype(int) - row).max() > 0
    else:
        pipe = enable_agd(_pipe(backend, root), negative_adapters[backend])
        images = _call(pipe, backend, seeds=[5, 6], output_type="np", negative_prompt=NEGATIVES)
        expected = np.concatenate(list((np.asarray(images) * 255).round().astype(int)), axis=1)
    assert np.abs(row - expected).max() <= 1
    params["train"]["output"] = str(root / "adapters")  # trained without negatives
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    refused = CliRunner().invoke(app, ["sample", *flags, *negative, "--steps", str(STEPS)])
    assert refused.exit_code == 2 and "trained without negative conditions" in refused.output
    assert CliRunner().invoke(app, ["sample", *flags, *negative, "--steps", str(STEPS), "--guidance", "cfg",
                                    "--out", "cfg.png"]).exit_code == 0  # CFG takes a negative with any adapters
