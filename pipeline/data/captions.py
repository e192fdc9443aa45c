"""Captions for text-to-image backends: a seeded random sample from a COCO-format captions file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.run.errors import AGDError

WHERE = ("download COCO-2017 annotations (annotations_trainval2017.zip from cocodataset.org) and point "
         "the key at captions_train2017.json (captions_val2017.json for evaluation)")


def read_captions(path: Path) -> list[str]:
    """All captions of a COCO-format file: {"annotations": [{"caption": "..."}, ...]}."""
    path = Path(path)
    if not str(path) or not path.is_file():
        raise AGDError(f"captions file {str(path) or '(not set)'}", "not found", WHERE)
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise AGDError(str(path), "not JSON", WHERE) from None
    annotations = doc.get("annotations") if isinstance(doc, dict) else None
    if not isinstance(annotations, list):
        raise AGDError(str(path), "not COCO captions format (no 'annotations' list)", WHERE)
    captions = [a["caption"].strip() for a in annotations if isinstance(a, dict) and isinstance(a.get("caption"), str)]
    captions = [c for c in captions if c]
    if not captions:
        raise AGDError(str(path), "holds no captions", WHERE)
    return captions


def sample_captions(path: Path, n: int, rng: np.random.Generator) -> list[str]:
    captions = read_captions(path)
    if n > len(captions):
        raise AGDError(str(path), f"has {len(captions)} captions, {n} requested", "lower the count or use a larger file")
    return [captions[i] for i in rng.choice(len(captions), n, replace=False)]
