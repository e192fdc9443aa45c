"""The sampling loop: CFG (2 NFE per step), AGD (1 NFE per step) or the plain conditional model.

Written out rather than taken from a diffusers pipeline: DiTPipeline hard-codes 1,000 classes,
and we need the per-step states and CFG outputs anyway to record trajectories.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from pipeline.backends.schedulers import family_scheduler, initial_noise, noise_levels, seeded_generators
from pipeline.guidance import rules
from pipeline.guidance.rules import PLAIN, Rule

if TYPE_CHECKING:
    from pipeline.backends.family import Family
    from pipeline.guidance.adapters import AdapterSet


Recorder = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]

# What one sampler step computes, and its cost in network evaluations (NFE) per image:
#   cfg    both branches, combined by the rule (2)   agd    one pass with the adapters (1)
#   cond   the conditional branch alone (1)          reuse  the conditional branch, guided with the last
#   zero   no pass: the output is 0 (CFG-Zero*'s            unconditional output computed (1)
#          zero-initialised steps) (0)
ACTION_NFE = {"cfg": 2, "agd": 1, "cond": 1, "reuse": 1, "zero": 0}
MODES = ("cfg", "agd", "cond", "interval", "reuse")


@dataclass(frozen=True)
class Guidance:
    """The cheap-CFG baselines' settings (modes "interval" and "reuse").

    interval: guide only while the noise level sigma = sqrt((1 - alpha_bar) / alpha_bar) lies in
      (low, high], the conditional branch alone elsewhere (Kynkäänniemi et al. 2024): the teacher
      rule `rules.Interval` run as a baseline beside the configured teacher.
    reuse: the share of steps that skip the unconditional branch and reuse the last one computed,
      spread evenly, never the first step (the FasterCache-style skip, without its frequency fix).
    """

    interval: tuple[float, float] = (0.0, float("inf"))
    reuse: float = 0.0


def step_plan(mode: str, sigmas: np.ndarray, guidance: Guidance = Guidance(), rule: Rule = PLAIN) -> list[str]:
    """What each step computes (an ACTION_NFE key) for a sampling mode under a teacher rule: where
    the rule does not guide, CFG and AGD alike run the conditional pass (no adapters) or nothing."""
    if mode not in MODES:
        raise ValueError(f"unknown sampling mode {mode!r}")
    if mode == "interval":
        mode, rule = "cfg", rules.Interval(*guidance.interval)
    if mode == "reuse":
        f = guidance.reuse
        return ["reuse" if i > 0 and math.floor(i * f) > math.floor((i - 1) * f) else "cfg"
                for i in range(len(sigmas))]
    if mode == "cond":
        return ["cond"] * len(sigmas)
    actions = {rules.GUIDE: mode, rules.COND: "cond", rules.ZERO: "zero"}
    return [actions[rule.action(i, float(s))] for i, s in enumerate(sigmas)]


def nfe(plan: list[str]) -> int:
    """Network evaluations per image of a step plan (a pass over 2B samples counts 2)."""
    return sum(ACTION_NFE[a] for a in plan)


def plan_for(family: Family, scheduler_name: str, num_steps: int, mode: str, guidance: Guidance = Guidance(),
             rule: Rule = PLAIN) -> list[str]:
    return step_plan(mode, noise_levels(family_scheduler(family, scheduler_name, num_steps)), guidance, rule)


def cfg_trajectory_arrays(family: Family, cond: dict, seeds, w: torch.Tensor, scheduler_name: str,
                          num_steps: int, rule: Rule = PLAIN) -> dict[str, np.ndarray]:
    """A batch of the teacher's trajectories as the store keeps them: every model input of the sampler
    ("x") and the rule's output there ("target"), (B, steps, C, H, W) float32 each."""
    xs, outs = [], []

    def record(step, x_t, t, out):
        xs.append(x_t.float().cpu())
        outs.append(out.float().cpu())

    sample(family, cond, seeds, w, scheduler_name, num_steps, mode="cfg", record=record, rule=rule)
    return {"x": torch.stack(xs, 1).numpy(), "target": torch.stack(outs, 1).numpy()}


@torch.no_grad()
def sample(family: Family, cond: dict, seeds, w: torch.Tensor, scheduler_name: str, num_steps: int,
           mode: str = "cfg", adapters: AdapterSet | None = None, record: Recorder | None = None,
           guidance: Guidance = Guidance(), rule: Rule = PLAIN) -> torch.Tensor:
    """Run the sampler from the seeds' noise; returns the final latents / pixels.

    mode: "cfg" (two passes under the teacher rule `rule`), "agd" (one pass with adapters at w,
    under the rule the adapters were trained from), "cond" (w = 1), or a cheap-CFG baseline,
    "interval" or "reuse" (see Guidance and step_plan).
    record(step, x_t, t, out) sees every model input and the output used for the step.
    """
    scheduler = family_scheduler(family, scheduler_name, num_steps)
    if mode == "agd":
        rule = adapters.teacher
    elif mode == "interval":
        rule = rules.Interval(*guidance.interval)
    plan = step_plan(mode, noise_levels(scheduler), guidance, rule)
    run = rule.run()  # the rule's state along this run (APG's momentum)
    device = family.device
    generators = seeded_generators(seeds)
    x = initial_noise(generators, family.latent_shape).to(device) * scheduler.init_noise_sigma
    # Stochastic samplers (DDPM) draw step noise from the samples' own generators: per seed, as above.
    step_kwargs = {"generator": generators} if "generator" in inspect.signature(scheduler.step).parameters else {}
    w = torch.as_tensor(w, dtype=torch.float32, device=device).expand(len(x))
    last_null = None
    fixed = adapters.context(family, cond, w) if mode == "agd" else None  # what w and c alone decide
    graphs = family.compiled and device.type == "cuda"  # CUDA graphs reuse their output buffers
    for i, t in enumerate(scheduler.timesteps):
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        x_in = scheduler.scale_model_input(x, t)
        t_batch = t.to(device).expand(len(x))
        action = plan[i]
        if action == "cfg":
            out_cond, last_null = family.branches(x_in, t_batch, cond)
            out = family.guide(out_cond, last_null, w, run.combine)
        elif action == "reuse":
            out = family.guide(family.forward(x_in, t_batch, cond), last_null, w, run.combine)
        elif action == "agd":
            out = adapters.step(family, fixed, x_in, t_batch, cond)
        elif action == "zero":
            out = x_in.new_zeros((len(x_in), family.denoiser.config.out_channels, *x_in.shape[2:]))
        else:
            out = family.forward(x_in, t_batch, cond)
        if graphs:
            out, last_null = out.clone(), None if last_null is None else last_null.clone()
        if record is not None:
            record(i, x_in, t_batch, out)
        x = scheduler.step(family.scheduler_output(out, scheduler).float(), t, x, **step_kwargs).prev_sample
    return x
