"""`agd sample`: images from a base and trained adapters at a chosen guidance scale, one pass per step
(or CFG's two, `--guidance cfg`, the teacher, with the same seeds). Not a DVC stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.config import Params
from pipeline.guidance.generate import generate, load_agd
from pipeline.run import devices, files
from pipeline.run.errors import AGDError


def parse_labels(labels: str, num_classes: int, condition: str, option: str = "--labels") -> list[int]:
    try:
        conds = [int(v) for v in labels.split(",")]
    except ValueError:
        raise AGDError(option, f"{labels!r} is not a comma-separated list of integers",
                       f"write e.g. {option} 0,1,2") from None
    if condition != "class" or min(conds) < 0 or max(conds) >= num_classes:
        raise AGDError(option, f"labels must be class indices in [0, {num_classes})",
                       "use --prompt for text backends" if option == "--labels" else "give class indices")
    return conds


def run(params: Params, labels: str | None, prompts: list[str] | None, w: float, backend: str | None,
        base_path: str | None, adapters: str | None, scheduler: str | None, steps: int, seed: int, guidance: str,
        out: Path, device: str | None, compile_: bool | None, negative: list[str] | None = None,
        revision: str | None = None, subfolder: str | None = None) -> None:
    """Each option given on the command line wins over params.yaml (base.*, train.output,
    trajectories.scheduler, sample.compile)."""
    from PIL import Image

    base = params.base
    family, agd = load_agd(backend or base.backend, base_path or base.path, adapters or params.train.output,
                           base.dtype, device or base.device, base.cfg_channels, revision, subfolder)
    if params.sample.compile if compile_ is None else compile_:
        family.compile()
    if labels:
        conds = parse_labels(labels, family.spec.num_classes, family.spec.condition)
    elif prompts:
        conds = list(prompts)
    else:
        raise AGDError("sample", "nothing to generate", "pass --labels or --prompt")
    negatives = None
    if negative:
        negatives = list(negative) if family.spec.condition == "text" else \
            [n for v in negative for n in parse_labels(v, family.spec.num_classes, family.spec.condition, "--negative")]
    images = generate(family, agd, conds, w, seeds=seed + np.arange(len(conds)), num_steps=steps,
                      scheduler=scheduler or params.trajectories.scheduler, guidance=guidance, negatives=negatives)
    print(f"sample: on {devices.describe(family.device, family.dtype)}")
    row = np.concatenate(list(images), axis=1)
    fmt = Image.registered_extensions().get(Path(out).suffix.lower(), "PNG")  # as the suffix says; PNG without one
    with files.atomic(out) as tmp:
        Image.fromarray(row[..., 0] if row.shape[-1] == 1 else row).save(tmp, format=fmt)
    print(f"sample: {len(conds)} images at w={w:g} ({guidance}) -> {out}")
