"""The conditions file (data/conditions.json): per trajectory a condition (class label or caption), a
guidance scale w ~ U[w_min, w_max] and a distinct noise seed. `draw` makes it, `read` checks it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.run import files
from pipeline.run.errors import AGDError

CONDITIONS_FILE = Path("data/conditions.json")


def draw(backend: str, condition: str, items: list[dict], w_min: float, w_max: float, rng: np.random.Generator,
         max_trajectories: int = 0) -> dict:
    """The conditions document: `items` (one dict per trajectory, {"label"} or {"caption"}) each given a
    w and a seed from `rng`; the first `max_trajectories` kept (0: all), drawn after the full set so a
    quick check keeps exactly the full run's first items."""
    ws = rng.uniform(w_min, w_max, len(items))
    seeds = rng.choice(2**31 - 1, size=len(items), replace=False)  # distinct noise per trajectory
    for item, w, seed in zip(items, ws, seeds):
        item.update(w=round(float(w), 6), seed=int(seed))
    if max_trajectories:
        items = items[:max_trajectories]
    return {"backend": backend, "condition": condition, "w_range": [w_min, w_max], "items": items}


def write(doc: dict, path: Path = CONDITIONS_FILE) -> None:
    files.write_text(path, json.dumps(doc, indent=1) + "\n")


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
