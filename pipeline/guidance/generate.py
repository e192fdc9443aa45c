"""Sampling with trained adapters from Python: one forward pass per step at any guidance scale.

    from pipeline.guidance.generate import load_agd, generate
    family, adapters = load_agd("mnist-dit", "models/base-mnist-dit", "models/adapters")
    images = generate(family, adapters, [3, 5, 7], w=3.0)   # uint8 (N, H, W, C)

Where diffusers has a pipeline for the model (DiT-XL/2, SD 2.x, SDXL) this runs that pipeline with
AGD enabled (pipeline.guidance.diffusers_agd), the same mechanism a diffusers user calls; the embedded
pixel-space default, which no diffusers pipeline fits, runs our sampling loop (pipeline.guidance.sampling),
which gives the same latents (tests/test_diffusers.py).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.backends.loading import load_base
from pipeline.backends.schedulers import family_scheduler, seeded_generators
from pipeline.guidance import diffusers_agd, hub, rules
from pipeline.guidance.adapters import AdapterSet
from pipeline.guidance.sampling import sample
from pipeline.run.errors import AGDError

if TYPE_CHECKING:
    from pipeline.backends.family import Family


def load_agd(backend: str, base_path: str, adapters_dir: str, dtype: str = "float32", device: str = "auto",
             cfg_channels: int = 0, revision: str | None = None, subfolder: str | None = None):
    """The frozen base on `device` (auto: the first CUDA device, else the CPU) with trained adapters:
    a local folder, or a Hub repository id (pipeline.guidance.hub)."""
    family = load_base(backend, base_path, dtype, device, cfg_channels)
    return family, AdapterSet.load(hub.resolve(adapters_dir, subfolder, revision=revision), family)


def generate(family: Family, adapters: AdapterSet, conditions: list, w: float, seeds=None, num_steps: int = 25,
             scheduler: str = "DPMSolverMultistepScheduler", guidance: str = "agd", negatives: list | None = None
             ) -> np.ndarray:
    """conditions: class labels (int) or captions (str). guidance: "agd" (1 pass) or "cfg" (the two
    passes of the rule the adapters were distilled from). negatives: a negative condition per sample
    (or one for all; None entries: none), CFG's unconditional branch; AGD applies it in its one pass
    when the adapters were trained with negatives.
    Sample i starts from seed i's noise (seeds: default 0, 1, ...), whatever the batch."""
    if w < 0:
        raise AGDError("w", f"guidance scale {w} is negative", "use w >= 0 (w = 1 is unguided)")
    if guidance not in ("agd", "cfg"):
        raise AGDError("--guidance", f"{guidance!r} is not a guidance", "use agd (one pass) or cfg (two passes)")
    seeds = np.arange(len(conditions)) if seeds is None else np.asarray(seeds)
    negatives = _negatives(negatives, len(conditions), adapters, guidance)
    # the pipelines run plain CFG, rescaled CFG (guidance_rescale) and, enabled, AGD of those and of the
    # interval (diffusers_agd); the other rules (and the interval's two passes) run in our loop
    teacher = adapters.teacher
    extra = {"guidance_rescale": teacher.phi} if isinstance(teacher, rules.Rescale) else {}
    in_pipeline = isinstance(teacher, (rules.CFG, rules.Rescale)) or (isinstance(teacher, rules.Interval)
                                                                       and guidance == "agd")
    # DiTPipeline has no negative class: a negative label runs our loop
    in_pipeline = in_pipeline and (negatives is None or family.spec.condition == "text")
    pipe = family.build_pipeline(family_scheduler(family, scheduler, num_steps, "--steps")) if in_pipeline else None
    if pipe is not None and extra and "guidance_rescale" not in inspect.signature(type(pipe).__call__).parameters:
        pipe = None  # a pipeline without rescaling (DiTPipeline)
    if pipe is None:
        key = "label" if family.spec.condition == "class" else "caption"
        items = [{key: c} if negatives is None else {key: c, "negative": n} for c, n in
                 zip(conditions, negatives or conditions)]
        cond = family.condition_batch(family.with_negatives(items, family.condition_arrays(items)))
        family.release_text_encoders()
        x = sample(family, cond, seeds, torch.full((len(conditions),), float(w)), scheduler, num_steps,
                   mode=guidance, adapters=adapters, rule=adapters.teacher)
        return family.decode(x).cpu().numpy()
    pipe.set_progress_bar_config(disable=True)
    inputs = family.pipeline_inputs(conditions, negatives)
    family.release_text_encoders()  # the pipeline gets embeddings, not encoders
    if guidance == "agd":
        diffusers_agd.attach(pipe, family, adapters)
    try:
        out = pipe(**inputs, guidance_scale=float(w), num_inference_steps=num_steps,
                   generator=seeded_generators(seeds), output_type="np", **extra)
    finally:
        diffusers_agd.disable_agd(pipe)
    return (np.asarray(out.images) * 255).round().astype(np.uint8)


def _negatives(negatives: list | None, n: int, adapters: AdapterSet, guidance: str) -> list | None:
    """One negative per sample (a single one serves them all); refused for AGD with adapters trained
    without negatives, which cannot apply one."""
    if not negatives or all(v is None for v in negatives):
        return None
    if len(negatives) == 1:
        negatives = list(negatives) * n
    if len(negatives) != n:
        raise AGDError("--negative", f"{len(negatives)} negatives for {n} samples",
                       "give one negative for all samples, or one per sample")
    if guidance == "agd" and not adapters.negatives:
        raise AGDError("--negative", "these adapters were trained without negative conditions, so AGD cannot "
                       "apply one", "use --guidance cfg (two passes), or train adapters with "
                       "conditions.negative_share > 0")
    return list(negatives)
