"""Sampling with trained adapters from Python: one forward pass per step at any guidance scale.

    from pipeline.generate import load_agd, generate
    family, adapters = load_agd("mnist-dit", "models/base-mnist-dit", "models/adapters")
    images = generate(family, adapters, [3, 5, 7], w=3.0)   # uint8 (N, H, W, C)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.adapters import AdapterSet
from pipeline.backends import load_base
from pipeline.errors import AGDError
from pipeline.sampling import sample


def load_agd(backend: str, base_path: str, adapters_dir: str, dtype: str = "float32", device: str = "auto",
             cfg_channels: int = 0):
    """The frozen base on `device` (auto: the first CUDA device, else the CPU) with trained adapters."""
    family = load_base(backend, base_path, dtype, device, cfg_channels)
    return family, AdapterSet.load(Path(adapters_dir), family)


def generate(family, adapters, conditions: list, w: float, seeds=None, num_steps: int = 25,
             scheduler: str = "DPMSolverMultistepScheduler", guidance: str = "agd") -> np.ndarray:
    """conditions: class labels (int) or captions (str). guidance: "agd" (1 pass) or "cfg" (2 passes)."""
    if w < 0:
        raise AGDError("w", f"guidance scale {w} is negative", "use w >= 0 (w = 1 is unguided)")
    key = "label" if family.spec.condition == "class" else "caption"
    items = [{key: c} for c in conditions]
    seeds = np.arange(len(items)) if seeds is None else np.asarray(seeds)
    cond = family.condition_batch(family.condition_arrays(items))
    family.release_text_encoders()
    x = sample(family, cond, seeds, torch.full((len(items),), float(w)), scheduler, num_steps,
               mode=guidance, adapters=adapters)
    return family.decode(x).cpu().numpy()
