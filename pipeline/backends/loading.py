"""A frozen base from a backend row: its family's class loads it onto the device `base.device` names."""

from __future__ import annotations

import torch

from pipeline.backends import get_spec
from pipeline.backends.dit import DiTFamily
from pipeline.backends.family import Family
from pipeline.backends.sd import SDFamily, SDXLFamily
from pipeline.run.devices import resolve
from pipeline.run.errors import AGDError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FAMILIES: dict[str, type[Family]] = {"dit": DiTFamily, "sd": SDFamily, "sdxl": SDXLFamily}


def load_base(backend: str, path: str, dtype: str = "float32", device: str = "cpu", cfg_channels: int = 0) -> Family:
    """Load the frozen base of `backend` from a local diffusers folder or a hub id, onto `device`
    (a `base.device` value). Stages pass the whole `base` section: `load_base(**params.base.model_dump())`."""
    spec = get_spec(backend)
    if spec.family not in FAMILIES:
        raise AGDError(f"base.backend {backend}", "family not available", f"use one of {', '.join(FAMILIES)}")
    if cfg_channels and spec.family != "dit":
        raise AGDError("params.yaml: base.cfg_channels", f"only DiT backends guide a subset of channels, not {backend}",
                       "set base.cfg_channels: 0")
    target = resolve(device)  # before loading: a missing GPU is reported at once
    family = FAMILIES[spec.family].load(spec, path, DTYPES[dtype])
    if cfg_channels:
        if cfg_channels > family.latent_shape[0]:
            raise AGDError("params.yaml: base.cfg_channels", f"{cfg_channels} is more than the model's "
                           f"{family.latent_shape[0]} latent channels", "use 0 (all) or 3 (the original DiT code)")
        family.cfg_channels = cfg_channels
    return family.to(target)
