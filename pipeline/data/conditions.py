"""The conditions file (data/conditions.json): per trajectory a condition (class label or caption), a
guidance scale w ~ U[w_min, w_max], a distinct noise seed and, when conditions.negative_share > 0, a
negative condition or none. `draw` makes it, `read` checks it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.run import files
from pipeline.run.errors import AGDError

CONDITIONS_FILE = Path("data/conditions.json")


def draw(backend: str, condition: str, items: list[dict], w_min: float, w_max: float, rng: np.random.Generator,
         max_trajectories: int = 0, negatives: dict | None = None) -> dict:
    """The conditions document: `items` (one dict per trajectory, {"label"} or {"caption"}) each given a
    w and a seed from `rng`; the first `max_trajectories` kept (0: all), drawn after the full set so a
    quick check keeps exactly the full run's first items.

    negatives: {"share", "seed", and "classes" (class models: a negative is another class) or "prompts"
    (text models: a negative is one of them)}. Each item gets a "negative" entry, a label or caption
    with probability share and None otherwise, drawn from its own generator: the w and seeds stay those
    of the same document without negatives, so runs with and without them are paired."""
    ws = rng.uniform(w_min, w_max, len(items))
    seeds = rng.choice(2**31 - 1, size=len(items), replace=False)  # distinct noise per trajectory
    for item, w, seed in zip(items, ws, seeds):
        item.update(w=round(float(w), 6), seed=int(seed))
    doc = {"backend": backend, "condition": condition, "w_range": [w_min, w_max]}
    if negatives is not None and negatives["share"] > 0:
        _draw_negatives(items, negatives)
        doc["negatives"] = {k: v for k, v in negatives.items() if k != "prompts"}
        doc["negatives"]["given"] = sum(i["negative"] is not None for i in items[:max_trajectories or None])
    if max_trajectories:
        items = items[:max_trajectories]
    return {**doc, "items": items}


def _draw_negatives(items: list[dict], negatives: dict) -> None:
    rng = np.random.default_rng([negatives["seed"], 1])  # apart from the w and seed draws
    given = rng.random(len(items)) < negatives["share"]
    if "classes" in negatives:
        classes = negatives["classes"]
        if classes < 2:
            raise AGDError("params.yaml: conditions.negative_share", "a class model needs two classes for a "
                           "negative class", "set conditions.negative_share: 0")
        other = rng.integers(0, classes - 1, len(items))  # any class but the item's own
        for item, g, o in zip(items, given, other):
            item["negative"] = int(o + (o >= item["label"])) if g else None
    else:
        prompts = negatives["prompts"]
        picks = rng.integers(0, len(prompts), len(items))
        for item, g, k in zip(items, given, picks):
            item["negative"] = prompts[k] if g else None


def read_negatives(path: Path) -> list[str]:
    """A negatives file: one negative prompt per line; blank lines and lines from '#' on are skipped."""
    if not path.is_file():
        raise AGDError(f"params.yaml: conditions.negatives_file {path}", "no such file",
                       "point it at a text file of negative prompts, one per line (conf/negatives.txt is one)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise AGDError(str(path), "not UTF-8 text", "save the negatives file as UTF-8 text, one prompt per line") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise AGDError(str(path), "holds no negative prompt", "write one negative prompt per line")
    return prompts


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
        kind = int if doc.get("condition") == "class" else str
        for k, item in enumerate(items):
            n = item.get("negative")
            if n is not None and (isinstance(n, bool) or not isinstance(n, kind)):
                raise AGDError(f"{path}: items[{k}].negative", f"{n!r}: a negative must be a "
                               f"{'class label' if kind is int else 'caption'} or null", "re-run `agd conditions`")
    except (json.JSONDecodeError, KeyError, TypeError):
        raise AGDError(str(path), "not a conditions file (needs items with w and seed)",
                       "re-run `agd conditions`") from None
    return doc
