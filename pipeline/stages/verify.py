"""`agd verify`: check a trajectory store before hours of training depend on it.

Completeness, shapes and dtypes against its attributes, every finished trajectory's chunk
files present, readable (CRC32C) and finite, and attributes matching the base model and params
in use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.backends.loading import load_base
from pipeline.config import Params
from pipeline.data import conditions
from pipeline.data.provenance import expected_attrs, mismatches
from pipeline.data.store import TrajectoryStore
from pipeline.guidance import rules
from pipeline.run.errors import AGDError
from pipeline.run.progress import Tracker, log

DTYPES = {"x": np.float32, "target": np.float32, "t": np.int64, "w": np.float32, "seed": np.int64, "done": np.bool_}


def problems_in(store: TrajectoryStore) -> list[str]:
    """Structural problems of a store, without reference to params."""
    g, a = store.group, store.attrs
    n, s = a.get("num_trajectories"), a.get("num_steps")
    found = []
    for name, dtype in DTYPES.items():
        if g[name].dtype != dtype:
            found.append(f"{name} has dtype {g[name].dtype}, expected {np.dtype(dtype)}")
    for name in ("x", "target"):
        if g[name].shape[:2] != (n, s):
            found.append(f"{name} has shape {g[name].shape}, attributes say {n} trajectories x {s} steps")
    for name in ["w", "seed", "done"] + [f"cond/{c}" for c in store.cond_names]:
        if g[name].shape[0] != n:
            found.append(f"{name} has {g[name].shape[0]} rows, attributes say {n}")
    if g["t"].shape != (s,):
        found.append(f"t has shape {g['t'].shape}, expected ({s},)")
    if found:
        return found
    done = store.done()
    if not done.all():
        found.append(f"{int((~done).sum())} of {n} trajectories unfinished")
    with Tracker("verify", int(done.sum())) as tracker:
        damaged = store.damaged(progress=tracker.advance)
    found += [f"trajectory {i}: {why}" for i, why in damaged.items()]
    for name, values in store.meta().items():
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            found.append(f"{name} has non-finite values")
    return found


def run(params: Params, path: str | None = None, against_params: bool = True) -> None:
    traj = params.trajectories
    path = Path(path or traj.output)
    store = TrajectoryStore.open(path)
    found = problems_in(store)
    if against_params:
        family = load_base(**{**params.base.model_dump(), "device": "cpu"})  # its fingerprint and scheduler
        expected = expected_attrs(family, traj.scheduler, traj.num_steps, traj.data, conditions.read(),
                                  rules.recorded(rules.from_params(params.guidance)))
        found += [f"attribute {k} differs from the base model / params in use" for k in mismatches(store.attrs, expected)]
    if found:
        raise AGDError(str(path), "; ".join(found[:5]) + (f" (+{len(found) - 5} more)" if len(found) > 5 else ""),
                       "re-run `agd trajectories` (dvc repro): it finishes the store and writes damaged trajectories "
                       "again, alone; a store made with other settings is set aside, not deleted")
    log(f"verify: {path} is complete and consistent: {len(store)} trajectories x {store.attrs['num_steps']} steps")
