"""Samplers as the stages build them: a diffusers scheduler class by name, configured like the base's
own (with the family's changes), its noise levels, and the initial noise drawn per seed.

Noise is drawn on the CPU from one generator per sample, so a sample depends on its seed alone, not
on its batch or device; a stochastic sampler's step noise comes from the same generator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import diffusers
import numpy as np
import torch

from pipeline.run.errors import AGDError

if TYPE_CHECKING:
    from pipeline.backends.family import Family


def make_scheduler(name: str, base_config: dict, num_steps: int, key: str = "num_steps",
                   name_key: str = "params.yaml: scheduler"):
    """A diffusers scheduler class by name, configured like the base model's own scheduler.

    `key` names the setting the step count came from, `name_key` the one the class name came from, for
    the error when the scheduler refuses either.
    """
    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise AGDError(f"{name_key} {name!r}", "not a diffusers scheduler class",
                       "use e.g. DDIMScheduler, EulerDiscreteScheduler or DPMSolverMultistepScheduler")
    scheduler = cls.from_config(base_config)
    # More steps than the model has training timesteps repeat timesteps (some schedulers accept
    # it silently, DDIM raises): refuse it the same way for every scheduler.
    train_steps = scheduler.config.get("num_train_timesteps", 1000)
    if num_steps > train_steps:
        raise AGDError(key, f"{num_steps} sampler steps, but the base model has {train_steps} training timesteps",
                       f"use at most {train_steps} steps")
    try:
        scheduler.set_timesteps(num_steps)
    except (ValueError, RuntimeError) as err:
        raise AGDError(key, f"{name} refuses {num_steps} steps ({str(err).splitlines()[0][:120]})",
                       "choose a step count the scheduler accepts") from None
    return scheduler


def family_scheduler(family: Family, name: str, num_steps: int, key: str = "num_steps",
                     name_key: str = "params.yaml: scheduler"):
    """`make_scheduler` with the family's own changes for that scheduler (DiT: DDPM's learned variance)."""
    return make_scheduler(name, {**family.scheduler_config, **family.scheduler_overrides(name)}, num_steps, key,
                          name_key)


def noise_levels(scheduler) -> np.ndarray:
    """sigma of every sampler step, from the scheduler's alpha_bar (interpolated for float timesteps)."""
    return noise_level(scheduler, scheduler.timesteps.double().cpu().numpy())


def noise_level(scheduler, timesteps):
    """sigma = sqrt((1 - alpha_bar) / alpha_bar) at timesteps (a number or an array), interpolated
    between the training timesteps: what the interval rule compares with its band."""
    alpha_bar = scheduler.alphas_cumprod.double().cpu().numpy()
    return np.interp(timesteps, np.arange(len(alpha_bar)), np.sqrt((1 - alpha_bar) / alpha_bar))


def seeded_generators(seeds) -> list[torch.Generator]:
    """One CPU generator per sample: its noise depends on its seed alone, not on its batch or device."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def initial_noise(generators: list[torch.Generator], shape) -> torch.Tensor:
    """The first draw of each sample's generator (later draws: a stochastic sampler's step noise)."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators])
