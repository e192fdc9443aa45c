"""Everything that differs between model families, in one table.

A *backend* row says how a family is loaded, how its condition is encoded, how its CFG batch is
laid out, what its output means and which modules get adapters. The stages only talk to the
`Family` interface below, so they never branch on the model.

| backend    | family | condition      | CFG batch     | output                      | adapters on         |
|------------|--------|----------------|---------------|-----------------------------|---------------------|
| mnist-dit  | DiT    | class (10)     | [cond, null]  | epsilon                     | every block's attn1 |
| dit-xl-2   | DiT    | class (1,000)  | [cond, null]  | epsilon + learned variance  | every block's attn1 |
| sd21       | SD     | text (CLIP)    | [null, cond]  | v (from the scheduler)      | every attn2         |
| sdxl       | SDXL   | text (2 CLIPs) | [null, cond]  | epsilon                     | every attn2         |
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.backends.dit import DiTFamily
from pipeline.backends.family import Family, state_fingerprint
from pipeline.backends.sd import SDFamily, SDXLFamily
from pipeline.devices import resolve
from pipeline.errors import AGDError

__all__ = ["BACKENDS", "DTYPES", "FAMILIES", "BackendSpec", "DiTFamily", "Family", "SDFamily", "SDXLFamily",
           "get_spec", "load_base", "state_fingerprint"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class BackendSpec:
    name: str
    family: str  # key of FAMILIES
    condition: str  # "class" or "text"
    cfg_layout: str  # order of the two halves of the CFG batch: "cond_null" or "null_cond"
    adapter_targets: tuple[str, ...]  # fnmatch patterns over module names of the denoiser
    w_range: tuple[float, float]  # the paper's training range of guidance scales
    num_classes: int = 0  # class-conditional backends: labels 0..num_classes-1 (the null class is next)
    hub_id: str = ""


BACKENDS = {
    "mnist-dit": BackendSpec("mnist-dit", "dit", "class", "cond_null", ("transformer_blocks.*.attn1",), (1.0, 5.0), 10),
    "dit-xl-2": BackendSpec("dit-xl-2", "dit", "class", "cond_null", ("transformer_blocks.*.attn1",), (1.0, 6.0),
                            1000, "facebook/DiT-XL-2-256"),
    "sd21": BackendSpec("sd21", "sd", "text", "null_cond",
                        ("down_blocks.*.attn2", "mid_block.*.attn2", "up_blocks.*.attn2"), (1.0, 12.0),
                        hub_id="stabilityai/stable-diffusion-2-1"),
    "sdxl": BackendSpec("sdxl", "sdxl", "text", "null_cond",
                        ("down_blocks.*.attn2", "mid_block.*.attn2", "up_blocks.*.attn2"), (1.0, 12.0),
                        hub_id="stabilityai/stable-diffusion-xl-base-1.0"),
}


def get_spec(name: str) -> BackendSpec:
    if name not in BACKENDS:
        raise AGDError("params.yaml: base.backend", f"unknown backend {name!r}", f"use one of {', '.join(BACKENDS)}")
    return BACKENDS[name]


FAMILIES: dict[str, type[Family]] = {"dit": DiTFamily, "sd": SDFamily, "sdxl": SDXLFamily}


def load_base(backend: str, path: str, dtype: str = "float32", device: str = "cpu", cfg_channels: int = 0) -> Family:
    """Load the frozen base of `backend` from a local diffusers folder or a hub id, onto `device`
    (a `base.device` value). Stages pass the whole `base` section: `load_base(**asdict(base))`."""
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
