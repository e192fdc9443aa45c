"""Training checkpoints (train, pretrain, transfer): written atomically, with every RNG's state, so a
killed run resumes where it stopped and ends as an uninterrupted run would."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from pipeline.run import files


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save(path: Path, state: dict) -> None:
    # through a Python file object: a full disk is then an OSError naming the cause (ENOSPC), not
    # torch's own "iostream error"
    with files.atomic(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)


def load(path: Path) -> dict | None:
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)
