"""Stage `conditions`: per trajectory a condition, a guidance scale w ~ U[w_min, w_max] and a noise seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline import preflight
from pipeline.backends import get_spec
from pipeline.config import load_section
from pipeline.dag import class_count, model_config
from pipeline.errors import AGDError
from pipeline.progress import log

CONDITIONS_FILE = Path("data/conditions.json")


def run(output: Path = CONDITIONS_FILE) -> None:
    base, p = load_section("base"), load_section("conditions")
    preflight.writable(output, "conditions file")
    spec = get_spec(base.backend)
    rng = np.random.default_rng(p.seed)
    if spec.condition == "class":
        classes = class_count(base.path)  # the model's own classes (dvc.yaml tracks its config for this)
        if classes != spec.num_classes:
            raise AGDError(model_config(base.path), f"the base has {classes} classes, backend {spec.name} "
                           f"has {spec.num_classes}", "point base.path at a model of this backend")
        items = [{"label": int(c)} for c in np.repeat(np.arange(classes), p.per_class)]
    else:
        from pipeline.captions import sample_captions

        items = [{"caption": c} for c in sample_captions(Path(p.captions_file), p.num_captions, rng)]
    n = len(items)
    ws = rng.uniform(p.w_min, p.w_max, n)
    seeds = rng.choice(2**31 - 1, size=n, replace=False)  # distinct noise per trajectory
    for item, w, seed in zip(items, ws, seeds):
        item.update(w=round(float(w), 6), seed=int(seed))
    if p.max_trajectories:  # cut after drawing: the kept items are those of the full set
        items = items[: p.max_trajectories]
        n = len(items)
    doc = {"backend": spec.name, "condition": spec.condition, "w_range": [p.w_min, p.w_max], "items": items}
    output.parent.mkdir(parents=True, exist_ok=True)
    part = output.with_suffix(".part")
    part.write_text(json.dumps(doc, indent=1) + "\n")
    part.replace(output)
    log(f"conditions: {n} trajectories, w ~ U[{p.w_min}, {p.w_max}] -> {output}")


def read(path: Path = CONDITIONS_FILE) -> dict:
    if not path.exists():
        raise AGDError(str(path), "conditions file not found", "run `agd conditions` (dvc repro) first")
    try:
        doc = json.loads(path.read_text())
        items = doc["items"]
        if not items or not all("w" in i and "seed" in i for i in items):
            raise KeyError
    except (json.JSONDecodeError, KeyError, TypeError):
        raise AGDError(str(path), "not a conditions file (needs items with w and seed)",
                       "re-run `agd conditions`") from None
    return doc
