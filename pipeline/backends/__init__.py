"""Everything that differs between model families, in one table.

A *backend* row says how a family is loaded, how its condition is encoded, how its CFG batch is
laid out, what its output means and which modules get adapters. The stages only talk to the
`Family` interface (backends/family.py), so they never branch on the model. This module is the
table alone (no torch), so params can be checked against it at once; `loading.load_base` builds a
family from a row.

| backend    | family | condition      | CFG batch     | output                      | adapters on         |
|------------|--------|----------------|---------------|-----------------------------|---------------------|
| mnist-dit  | DiT    | class (10)     | [cond, null]  | epsilon                     | every block's attn1 |
| dit-xl-2   | DiT    | class (1,000)  | [cond, null]  | epsilon + learned variance  | every block's attn1 |
| sd21       | SD     | text (CLIP)    | [null, cond]  | v (from the scheduler)      | every attn2         |
| sdxl       | SDXL   | text (2 CLIPs) | [null, cond]  | epsilon                     | every attn2         |

Adding a family: docs/adding-a-backend.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.run.errors import AGDError


@dataclass(frozen=True)
class BackendSpec:
    name: str
    family: str  # key of loading.FAMILIES
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
EMBEDDED = "mnist-dit"  # the embedded default: MNIST and our own small DiT


def get_spec(name: str, where: str = "params.yaml: base.backend") -> BackendSpec:
    if name not in BACKENDS:
        raise AGDError(where, f"unknown backend {name!r}", f"use one of {', '.join(BACKENDS)}")
    return BACKENDS[name]


def model_config(base_path: str) -> str:
    """A class-conditional base's transformer config: where its class count lives."""
    return f"{base_path}/transformer/config.json"


def class_count(base_path: str) -> int:
    """Classes of a class-conditional base, from its config on disk (conditions are drawn from them)."""
    path = Path(model_config(base_path))
    try:
        return int(json.loads(path.read_text())["num_embeds_ada_norm"])
    except (OSError, ValueError, KeyError, TypeError):
        raise AGDError(str(path), "no class count (num_embeds_ada_norm) readable",
                       "point base.path at a class-conditional diffusers DiT folder") from None
