"""Stage `conditions`: per trajectory a condition (the model's classes in turn, or captions drawn from
conditions.captions_file), a guidance scale w ~ U[w_min, w_max], a noise seed and, with
conditions.negative_share > 0, a negative condition or none (pipeline.data.conditions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.backends import class_count, get_spec, model_config
from pipeline.config import Params
from pipeline.data import conditions
from pipeline.data.captions import sample_captions
from pipeline.run import preflight
from pipeline.run.errors import AGDError
from pipeline.run.progress import log


def run(params: Params, output: Path = conditions.CONDITIONS_FILE) -> None:
    base, p = params.base, params.conditions
    preflight.writable(output, "conditions file")
    spec = get_spec(base.backend)
    rng = np.random.default_rng(p.seed)
    if spec.condition == "class":
        classes = class_count(base.path)  # the model's own classes (dvc.yaml tracks its config for this)
        if classes != spec.num_classes:
            raise AGDError(model_config(base.path), f"the base has {classes} classes, backend {spec.name} "
                           f"has {spec.num_classes}", "point base.path at a model of this backend")
        items = [{"label": int(c)} for c in np.repeat(np.arange(classes), p.per_class)]
        negatives = {"share": p.negative_share, "seed": p.seed, "classes": classes}
    else:
        items = [{"caption": c} for c in sample_captions(Path(p.captions_file), p.num_captions, rng)]
        negatives = {"share": p.negative_share, "seed": p.seed}
        if p.negative_share > 0:
            negatives.update(source=p.negatives_file, prompts=conditions.read_negatives(Path(p.negatives_file)))
    doc = conditions.draw(spec.name, spec.condition, items, p.w_min, p.w_max, rng, p.max_trajectories, negatives)
    conditions.write(doc, output)
    given = f", {doc['negatives']['given']} with a negative" if "negatives" in doc else ""
    log(f"conditions: {len(doc['items'])} trajectories{given}, w ~ U[{p.w_min}, {p.w_max}] -> {output}")
