"""A trajectory store's provenance: what it records about its making, and the checks that hold a store
to the base and the params in use (collection resumes it, training trains on it, verify checks it).

Only what decides a store's content is recorded and compared: the base's weights (fingerprint) and
backend, the sampler and its config, the step count, the conditions (their hash) and the kind of
data. The collection batch size, the base folder's path and the output path are not, so changing
them keeps a finished store.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.backends.schedulers import family_scheduler
from pipeline.data.store import TrajectoryStore
from pipeline.run.errors import AGDError
from pipeline.run.progress import Tracker

if TYPE_CHECKING:
    from pipeline.backends.family import Family

# Attributes that must match for a store to be resumed, trained on or verified against params.
PROVENANCE_KEYS = ("base", "scheduler", "scheduler_config", "num_steps", "conditions_sha256", "data", "guidance")


def jsonable(config) -> dict:
    """A scheduler config as stable JSON: diffusers' private keys ("_use_default_values" is a list in
    set order, which changes between processes; "_diffusers_version" between installs) are left out."""
    public = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    return json.loads(json.dumps(public, default=str, sort_keys=True))


def conditions_sha256(cond_doc: dict) -> str:
    return hashlib.sha256(json.dumps(cond_doc, sort_keys=True).encode()).hexdigest()[:32]


def expected_attrs(family: Family, scheduler: str, num_steps: int, data: str, cond_doc: dict,
                   guidance: dict | None = None) -> dict:
    """What a store made now, with these inputs, records about its making. guidance: the teacher
    rule's identity (pipeline.guidance.rules.recorded; None, plain CFG, is not recorded, so a store
    made before the rule was a choice keeps its identity)."""
    config = family_scheduler(family, scheduler, num_steps, key="params.yaml: trajectories.num_steps").config
    attrs = {
        "base": family.content_identity(),
        "scheduler": scheduler,
        "scheduler_config": jsonable(config),
        "num_steps": num_steps,
        "w_range": cond_doc["w_range"],
        "condition": cond_doc["condition"],
        "conditions_sha256": conditions_sha256(cond_doc),
        "prediction_type": family.scheduler_config.get("prediction_type", "epsilon"),
    }
    if data != "trajectories":  # stores of sampling trajectories keep the attributes they had
        attrs["data"] = data
    if guidance is not None:
        attrs["guidance"] = guidance
    return attrs


def _comparable(key: str, value):
    if key == "base" and isinstance(value, dict):  # stores of earlier versions also recorded the path
        return {k: value.get(k) for k in ("backend", "fingerprint")}
    if key == "data":  # a store without the attribute holds sampling trajectories
        return value or "trajectories"
    return value


def mismatches(attrs: dict, expected: dict, keys=PROVENANCE_KEYS) -> list[str]:
    """The provenance keys on which a store's attributes differ from what is expected."""
    return [k for k in keys if _comparable(k, attrs.get(k)) != _comparable(k, expected.get(k))]


def open_for_training(family: Family, path: str, scheduler: str, num_steps: int,
                      guidance: dict | None = None) -> TrajectoryStore:
    """The store, refused if unfinished, made by another base, sampler configuration or teacher rule
    (guidance: as expected_attrs takes it), or damaged."""
    store = TrajectoryStore.open(Path(path))
    if not store.is_complete():
        missing = int((~store.done()).sum())
        raise AGDError(path, f"{missing} of {len(store)} trajectories unfinished",
                       "run `agd trajectories` (dvc repro) to complete it")
    expected = {"base": family.identity(), "scheduler": scheduler, "num_steps": num_steps, "guidance": guidance}
    stale = mismatches(store.attrs, expected, keys=("scheduler", "num_steps", "guidance"))
    if store.attrs.get("base", {}).get("fingerprint") != family.fingerprint:
        stale.insert(0, "base model")
    if stale:
        raise AGDError(path, f"made with another {', '.join(stale)} than params.yaml names",
                       "re-run `agd trajectories` (dvc repro) for this base, sampler and guidance rule")
    # Read every trajectory once before the first step (a minute for the largest paper store, against
    # hours of training): a missing, unreadable or non-finite chunk is refused now, not at the step
    # that happens to draw it, and never trained on.
    with Tracker("train: checking the store", len(store)) as tracker:
        damaged = store.damaged(progress=tracker.advance)
    if damaged:
        first = min(damaged)
        raise AGDError(f"{path} trajectory {first}",
                       f"{damaged[first]}" + (f" ({len(damaged) - 1} more damaged)" if len(damaged) > 1 else ""),
                       "run `agd trajectories` (or dvc repro): it writes only the damaged trajectories again")
    return store
